"""Tasks with limits in two releases' code, for worker subprocesses: ROLLING_CODE=old or new.

The new code gives `lanes.call` a limit key (`Limit(1, key="tenant")`, beside its task-wide
`concurrency=2`); the previous release (a9921ef) has no `Limit`, so its code of the same
name declares the task-wide limit only. `lanes.one` (one at a time) and `lanes.plain` are the
same in both. Each run writes "start|end <task> <tenant> <time> <pid>" lines to
`<directory>/runs`, so a test reads what ran where and when, outside segue.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from segue import App

app = App("rolling-lanes")


async def run(directory: str, task: str, tenant: str, nap: float) -> str:
    with (Path(directory) / "runs").open("a") as f:
        f.write(f"start {task} {tenant} {time.time()!r} {os.getpid()}\n")
    await asyncio.sleep(nap)
    with (Path(directory) / "runs").open("a") as f:
        f.write(f"end {task} {tenant} {time.time()!r} {os.getpid()}\n")
    return tenant


if os.environ.get("ROLLING_CODE", "new") == "new":
    from segue import Limit

    @app.task(name="lanes.call", concurrency=(2, Limit(1, key="tenant")))
    async def call(directory: str, tenant: str, nap: float) -> str:
        return await run(directory, "call", tenant, nap)

else:

    @app.task(name="lanes.call", concurrency=2)
    async def call(directory: str, tenant: str, nap: float) -> str:
        return await run(directory, "call", tenant, nap)


@app.task(name="lanes.one", concurrency=1)
async def one(directory: str, tenant: str, nap: float) -> str:
    return await run(directory, "one", tenant, nap)


@app.task(name="lanes.plain")
async def plain(directory: str, tenant: str, nap: float) -> str:
    return await run(directory, "plain", tenant, nap)
