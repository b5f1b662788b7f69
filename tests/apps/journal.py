"""An App of durable functions (ctx.step, ctx.sleep) for worker subprocesses.

Each step's side effect is a line appended to a file of its own (`<dir>/step-<i>`), written
and flushed before the step returns, so a test counts how many times each step's effect
happened across worker kills, outside segue.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from segue import App, Context

app = App("journal")


def effect(directory: str, i: int) -> int:
    """The side effect of step i: one line in its file."""
    with (Path(directory) / f"step-{i}").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return i


@app.task(name="journal.steps")
async def steps(ctx: Context, directory: str, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.step(f"step-{i}", effect, directory, i)
    return total


@app.task(name="journal.sleeper")
async def sleeper(ctx: Context, directory: str, seconds: float) -> float:
    await ctx.step("before", effect, directory, 0)
    await ctx.sleep(seconds)
    woke = time.time()
    await ctx.step("after", effect, directory, 1)
    return woke


@app.task(name="journal.other")
async def other() -> float:
    return time.time()
