"""An App for worker subprocesses: configured from SEGUE_* variables by the test."""

from __future__ import annotations

import asyncio
import os
import signal

import redis

from segue import App, Context

app = App("procs")
_ledger_url = os.environ.get("LEDGER_URL", "")
_ledger = redis.Redis.from_url(_ledger_url) if _ledger_url else None


def _record(ctx: Context) -> None:
    """Every execution appends to a ledger the test reads: `<id> <worker> <try>`."""
    assert _ledger is not None
    _ledger.rpush(f"segue:ledger:{ctx.queue}", f"{ctx.task_id} {ctx.worker_id} {ctx.tries}")


@app.task(name="procs.nap")
async def nap(ctx: Context, seconds: float) -> str:
    _record(ctx)
    await asyncio.sleep(seconds)
    return f"napped {seconds}"


@app.task(name="procs.count")
def count(ctx: Context, n: int) -> int:
    _record(ctx)
    return n


@app.task(name="procs.die")
async def die(ctx: Context) -> None:
    """Kills the worker running it, as a crash in native code or the OOM killer would."""
    _record(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.sleep(10)
