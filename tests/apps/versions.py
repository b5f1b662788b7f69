"""Two deploys of one App's code, for worker subprocesses: VERSIONS_CODE=old or new.

The old code has every task at version 1; its runs write state, then wait (until the worker
stops and requeues them with their state). The new code is a later deploy: `versions.counter`
at version 2 with a migration from 1, `versions.chain` at version 3 with migrations 1->2->3,
and `versions.gap` at version 3 with only 2->3 (a missing link). Each new run returns the
version it started under and the state it found.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from segue import App, Context


def register(app: App, code: str) -> dict[str, Any]:
    """Register the tasks of `code` ('old' or 'new') on `app`; the tasks by short name."""
    if code == "old":

        @app.task(name="versions.counter")
        async def counter(ctx: Context) -> dict[str, Any]:
            await ctx.state.set(n=4)
            await asyncio.sleep(3600)  # until the worker stops: requeued, state kept
            return {}

        @app.task(name="versions.chain")
        async def chain(ctx: Context) -> dict[str, Any]:
            await ctx.state.set(a=1, gone="old")
            await asyncio.sleep(3600)
            return {}

        @app.task(name="versions.gap")
        async def gap(ctx: Context) -> dict[str, Any]:
            await ctx.state.set(a=1)
            await asyncio.sleep(3600)
            return {}

        return {"counter": counter, "chain": chain, "gap": gap}

    async def found(ctx: Context) -> dict[str, Any]:
        return {"version": ctx.version, "state": await ctx.state.all()}

    @app.task(name="versions.counter", version=2, migrate={1: lambda s: {"count": s["n"] * 10}})
    async def counter2(ctx: Context) -> dict[str, Any]:
        return await found(ctx)

    @app.task(
        name="versions.chain",
        version=3,
        migrate={1: lambda s: {**s, "b": s["a"] + 1}, 2: lambda s: {"c": s["b"] * 10}},
    )
    async def chain3(ctx: Context) -> dict[str, Any]:
        return await found(ctx)

    @app.task(name="versions.gap", version=3, migrate={2: lambda s: s})
    async def gap3(ctx: Context) -> dict[str, Any]:
        return await found(ctx)

    return {"counter": counter2, "chain": chain3, "gap": gap3}


app = App("versions")
tasks = register(app, os.environ.get("VERSIONS_CODE", "old"))
