"""An App whose task streams output, for worker subprocesses (configured from SEGUE_*)."""

from __future__ import annotations

import asyncio

from segue import App, Context

app = App("streams")


@app.task(name="streams.talk", max_tries=3)
async def talk(ctx: Context, n: int, pause: float) -> int:
    """Streams 0..n-1, one chunk every `pause` seconds (each try from the start)."""
    for i in range(n):
        await ctx.stream(i)
        await asyncio.sleep(pause)
    return n
