"""Tasks of the Sentinel fault tests; worker subprocesses read their settings from SEGUE_*."""

from __future__ import annotations

import asyncio

from segue import App, Context

app = App("sentinel")
# the `done` value each run of `steps` started from (in this process)
starts: list[int] = []


@app.task(name="sentinel.work")
async def work(n: int, ms: int) -> int:
    await asyncio.sleep(ms / 1000)
    return n


@app.task(name="sentinel.long_first")
async def long_first(ctx: Context, ms: int) -> int:
    """Sleeps `ms` on its first try only (a run that straddles a failover), so that a second
    run, if its lease lapsed, is quick."""
    await asyncio.sleep(ms / 1000 if ctx.tries == 1 else 0.01)
    return ctx.tries


@app.task(name="sentinel.steps")
async def steps(ctx: Context, count: int) -> int:
    """Counts to `count` in 50 ms steps, keeping its place in its state, so that a pause
    and resume continues where it stopped."""
    done: int = await ctx.state.get("done", 0)
    starts.append(done)
    while done < count:
        await asyncio.sleep(0.05)
        done += 1
        await ctx.state.set(done=done)
        await ctx.checkpoint()
    return done
