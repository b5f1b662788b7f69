"""An App for worker subprocesses serving a sharded queue (tests/integration/test_shards.py).

Every run appends `<task id> <worker id>` to the ledger list `segue:ledger:<queue>` of the
queue the shard belongs to, on LEDGER_URL (a server apart from the cluster under test).
"""

from __future__ import annotations

import os

import redis

from segue import App, Context

app = App("shards")
_ledger_url = os.environ.get("LEDGER_URL", "")
_ledger = redis.Redis.from_url(_ledger_url) if _ledger_url else None


@app.task(name="shards.note")
def note(ctx: Context, n: int) -> int:
    assert _ledger is not None
    queue = ctx.queue.partition("#")[0]
    _ledger.rpush(f"segue:ledger:{queue}", f"{ctx.task_id} {ctx.worker_id}")
    return n
