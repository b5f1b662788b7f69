"""An App of durable functions (ctx.step, ctx.sleep) for worker subprocesses.

Each step's side effect is a line appended to a file of its own (`<dir>/step-<i>`), written
and flushed before the step returns, so a test counts how many times each step's effect
happened across worker kills, outside segue.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from segue import App, Context, Pause, Retry, StepFailed

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


@app.task(name="journal.slow_steps")
async def slow_steps(ctx: Context, directory: str, n: int, gap: float) -> int:
    """Steps `gap` seconds apart, so a test can act while some are journaled and some not."""
    total = 0
    for i in range(n):
        total += await ctx.step(f"step-{i}", effect, directory, i)
        await asyncio.sleep(gap)
    return total


@app.task(name="journal.napper")
async def napper(ctx: Context, directory: str, seconds: float) -> float:
    """Sleeps first, so the sleep's entry is the run's first journal write."""
    await ctx.sleep(seconds)
    woke = time.time()
    await ctx.step("after", effect, directory, 1)
    return woke


@app.task(name="journal.other")
async def other() -> float:
    return time.time()


def pay(directory: str) -> str:
    """Fails on its first call (its effect, a line, is written either way)."""
    f = Path(directory) / "step-0"
    first = not f.exists()
    effect(directory, 0)
    if first:
        raise ValueError("card declined")
    return "paid"


@app.task(name="journal.payer", max_tries=2, retry_backoff=0.1)
async def payer(ctx: Context, directory: str) -> str:
    try:
        return str(await ctx.step("pay", pay, directory))
    except StepFailed as exc:
        with (Path(directory) / "caught").open("a") as f:
            f.write(f"{ctx.tries} {exc.type} {exc.message}\n")
        if await ctx.state.get("paused") is None:
            await ctx.state.set(paused=True)
            raise Pause() from None  # the same try: the failure is replayed, not re-run
        raise Retry() from None
