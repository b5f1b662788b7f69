"""An App for the clock-skew test: worker subprocesses run it under libfaketime, and each task
records when it started by the clock of a server (not by the worker's own skewed clock).

LEDGER_URL names the ledger server (admin URL), LEDGER_KEY the list; CRON_NAME prefixes the
schedule's name. Rows are `<kind> <task id> <worker id> <server ms at start> <extra>`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis

from segue import App, Context

app = App("skew")
_ledger: Any = None


def _client() -> Any:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["LEDGER_URL"])
    return _ledger


def _record(kind: str, ctx: Context, extra: str = "") -> None:
    client = _client()
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    client.rpush(os.environ["LEDGER_KEY"], f"{kind} {ctx.task_id} {ctx.worker_id} {now_ms} {extra}")


@app.task(name="skew.due")
def due(ctx: Context, due_ms: int) -> None:
    """A delayed task: records its start next to the server time it was due at."""
    _record("due", ctx, str(due_ms))


@app.task(name="skew.long")
async def long(ctx: Context, seconds: float) -> None:
    """Outlives its lease several times over: only renewal keeps it, so a skewed clock that
    made the lease look expired would show as a second execution."""
    _record("long", ctx)
    await asyncio.sleep(seconds)


@app.cron("*/1 * * * * *", name=f"{os.environ.get('CRON_NAME', 'skew')}.tick")
def tick(ctx: Context) -> None:
    _record("tick", ctx)
