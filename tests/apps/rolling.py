"""Two releases' code of the same tasks, for worker subprocesses: ROLLING_CODE=old or new.

The new code is a durable function (ctx.step, ctx.sleep, Pause(state=...)) and runs on this
release. The old code is what a worker of the previous release (a9921ef, before the step
journal) runs in a rolling deploy: the same task names, written for that release's API. So
this module imports only names both releases have, and the old code calls no ctx.step.

Each side effect is a line (the pid that did it) in a file of its own under the task's
`directory`, so a test counts effects outside segue; the old code also writes what it found
in `ctx.state` to `<directory>/old-state.json`, and where its segue came from to
`<directory>/old-segue`. `rolling.measure` is the same code in both; `rolling.hop` fails
under the old code and succeeds under the new; `rolling.double` is the same in both.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import segue
from segue import App, Context, Pause

app = App("rolling")


def effect(directory: str, what: str) -> str:
    """One side effect: a line in `<directory>/<what>`."""
    with (Path(directory) / what).open("a") as f:
        f.write(f"{os.getpid()}\n")
    return what


@app.task(name="rolling.measure")
async def measure(data: str) -> int:
    # the same in both releases: an old worker knows this name, but not the name a record
    # whose argument is offloaded carries (it has a mark after it)
    return len(data)


@app.task(name="rolling.double")
async def double(x: int) -> int:
    return 2 * x


@app.task(name="rolling.hop", max_tries=1)
async def hop(x: int) -> int:
    if os.environ.get("ROLLING_CODE", "new") != "new":
        raise RuntimeError("the old code of rolling.hop fails")
    return x


if os.environ.get("ROLLING_CODE", "new") == "new":

    @app.task(name="rolling.order")
    async def order(ctx: Context, directory: str, nap: float) -> str:
        await ctx.step("reserve", effect, directory, "reserve")
        await ctx.step("charge", effect, directory, "charge")
        await ctx.sleep(nap)
        await ctx.step("ship", effect, directory, "ship")
        return "new"

    @app.task(name="rolling.batch")
    async def batch(ctx: Context, directory: str, nap: float) -> str:
        await ctx.step("part-0", effect, directory, "part-0")
        if not await ctx.state.get("checkpoint"):
            raise Pause(delay=nap, state={"checkpoint": 1})
        await ctx.step("part-1", effect, directory, "part-1")
        return "new"

else:

    async def seen(ctx: Context, directory: str) -> dict[str, Any]:
        state = await ctx.state.all()
        (Path(directory) / "old-state.json").write_text(json.dumps(state))
        (Path(directory) / "old-segue").write_text(segue.__file__ or "")
        return state

    @app.task(name="rolling.order")
    async def order(ctx: Context, directory: str, nap: float) -> str:
        # before the journal: every run does every step, and the task never slept
        await seen(ctx, directory)
        for what in ("reserve", "charge", "ship"):
            effect(directory, what)
        return "old"

    @app.task(name="rolling.batch")
    async def batch(ctx: Context, directory: str, nap: float) -> str:
        # checkpoints of its own in ctx.state, beside the journal; then it holds on until
        # the test kills its worker
        await seen(ctx, directory)
        await ctx.state.set(old_run=os.getpid())
        await asyncio.sleep(3600)
        return "old"
