"""An App of tasks that wait for signals, for worker subprocesses (tests/faults)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from segue import App, Context

app = App("signals")


@app.task(name="signals.collect")
async def collect(ctx: Context, n: int, gap: float) -> list[Any]:
    """Wait for `n` signals `item`, one after another, `gap` seconds apart (a window in
    which a test kills the worker); returns what each wait got, in order."""
    got = []
    for _ in range(n):
        got.append(await ctx.wait_signal("item"))
        await asyncio.sleep(gap)
    return got


@app.task(name="signals.deadline")
async def deadline(ctx: Context, timeout: float, gap: float) -> float:
    """Wait for a signal that never comes, `gap` seconds into each run; returns when the
    timeout came (wall clock)."""
    await asyncio.sleep(gap)
    await ctx.wait_signal("never", timeout=timeout, default=None)
    return time.time()
