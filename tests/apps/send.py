"""The worker side of enqueue by name: tasks a producer calls with `app.send` or `segue
enqueue` without importing this module (tests/integration/test_send.py)."""

from __future__ import annotations

import asyncio

from segue import App, Context

app = App("sendprocs")


@app.task(name="reports.build")
async def build(ctx: Context, year: int, *, title: str = "report") -> dict[str, object]:
    return {"year": year, "title": title, "queue": ctx.queue, "tries": ctx.tries}


@app.task(name="send.flaky", max_tries=2, retry_backoff=0.05)
async def flaky() -> None:
    raise RuntimeError("always")


@app.task(name="send.slow", timeout=0.3, max_tries=1)
async def slow() -> None:
    await asyncio.sleep(30)
