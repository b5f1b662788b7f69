"""An App with declared cron schedules, for worker subprocesses configured by the test.

CRON_NAME prefixes the schedules' names (the test's queue: schedules are server-wide under
the prefix, so each test has its own); CRON_EXPR is their expression.
"""

from __future__ import annotations

import os
import time

import redis

from segue import App, Context

app = App("cronprocs")
_name = os.environ.get("CRON_NAME", "cron")
_expr = os.environ.get("CRON_EXPR", "*/1 * * * * *")
_ledger_url = os.environ.get("LEDGER_URL", "")
_ledger = redis.Redis.from_url(_ledger_url) if _ledger_url else None


def _record(ctx: Context) -> None:
    """Every run appends `<task id> <worker> <started at, ms>` to a ledger the test reads."""
    assert _ledger is not None
    row = f"{ctx.task_id} {ctx.worker_id} {int(time.time() * 1000)}"
    _ledger.rpush(f"segue:ledger:{ctx.queue}", row)


@app.cron(_expr, name=f"{_name}.coalesce")
def coalesce(ctx: Context) -> None:
    _record(ctx)


@app.cron(_expr, name=f"{_name}.catchup", catch_up=True)
def catchup(ctx: Context) -> None:
    _record(ctx)
