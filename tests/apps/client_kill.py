"""An App for the CLIENT KILL fault test's worker subprocesses (configured by SEGUE_*).

Each run records itself in a ledger on a separate server that the test never faults
(LEDGER_URL): `SET NX effect:<id>` and `RPUSH exec:<id>` with the worker and start time.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis

from segue import App, Context

app = App("r3")
_ledger_url = os.environ.get("LEDGER_URL", "")
_ledger = redis.Redis.from_url(_ledger_url) if _ledger_url else None


@app.task(name="r3.work")
async def work(ctx: Context, seconds: float) -> int:
    assert _ledger is not None
    started = time.time()
    _ledger.set(f"segue:ledger:effect:{ctx.task_id}", ctx.worker_id, nx=True)
    _ledger.rpush(f"segue:ledger:exec:{ctx.task_id}", f"{ctx.worker_id} {started!r}")
    await asyncio.sleep(seconds)
    return ctx.tries
