"""An App of flow-controlled tasks for worker subprocesses, configured from SEGUE_* variables.

The tasks write what the test measures to keys of their own on the server (not segue
keys, so through LEDGER_URL, an admin URL), all under `limits:{<queue>}:` (the queue's
hash tag):

- `starts`: a list of `<task id> <worker id> <try> <unix time>`, one row per run started;
- `running` / `most`: how many `limits.bounded` runs are going at once, and the most seen;
- `release`: `limits.exclusive` and a held `limits.bounded` run until it is set;
- `fixed`: while it is missing, `limits.flaky` fails.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis

from segue import App, Context, Limit

app = App("limits")
_ledger: Any = None

# INCR the running count and keep the highest value seen, in one atomic step
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def _client() -> Any:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["LEDGER_URL"])
    return _ledger


def key(queue: str, name: str) -> str:
    """The test's own keys for one queue (the tests use this too)."""
    return f"limits:{{{queue}}}:{name}"


def _started(ctx: Context) -> None:
    row = f"{ctx.task_id} {ctx.worker_id} {ctx.tries} {time.time():.6f}"
    _client().rpush(key(ctx.queue, "starts"), row)


@app.task(name="limits.rated", rate_limit="20/s")
async def rated(ctx: Context, i: int) -> int:
    """At most 20 starts a second across all workers (burst 1)."""
    _started(ctx)
    return i


@app.task(name="limits.bounded", concurrency=3)
async def bounded(ctx: Context, i: int, seconds: float, hold: bool = False) -> int:
    """At most 3 runs at once across all workers. Sleeps `seconds`, and with `hold` runs
    until the test sets `release`."""
    client = _client()
    running, most = key(ctx.queue, "running"), key(ctx.queue, "most")
    client.eval(_ENTER, 2, running, most)
    _started(ctx)
    try:
        await asyncio.sleep(seconds)
        while hold and not client.exists(key(ctx.queue, "release")):
            await asyncio.sleep(0.05)
    finally:
        client.decr(running)  # before the run ends, so before its slot is given back
    return i


@app.task(name="limits.exclusive", unique=True)
async def exclusive(ctx: Context) -> str:
    """Unique: one live task at a time. Runs until the test sets `release`."""
    _started(ctx)
    release = key(ctx.queue, "release")
    while not _client().exists(release):
        await asyncio.sleep(0.05)
    return f"released in try {ctx.tries}"


@app.task(name="limits.flaky", max_tries=1)
async def flaky(ctx: Context, path: str) -> str:
    """Fails for good (one try) until the test sets `fixed`."""
    _started(ctx)
    if not _client().exists(key(ctx.queue, "fixed")):
        raise OSError(f"cannot read {path}")
    return f"imported {path}"


@app.task(name="limits.tenant_bounded", concurrency=Limit(2, key="tenant"))
async def tenant_bounded(ctx: Context, tenant: str, seconds: float) -> str:
    """At most 2 runs at once per tenant across all workers: `running:<tenant>` counts the
    runs going, `most:<tenant>` the most seen, `overlap` the starts that saw another
    tenant running."""
    client = _client()
    running, most = key(ctx.queue, f"running:{tenant}"), key(ctx.queue, f"most:{tenant}")
    client.eval(_ENTER, 2, running, most)
    client.sadd(key(ctx.queue, "tenants"), tenant)
    _started(ctx)
    try:
        await asyncio.sleep(seconds)
    finally:
        client.decr(running)
    return tenant


@app.task(name="limits.flood", concurrency=Limit(10_000, key="tenant"))
async def flood(ctx: Context, tenant: str, i: int) -> None:
    """Records the order runs start in: `order`, one `<tenant> <i>` per run."""
    _client().rpush(key(ctx.queue, "order"), f"{tenant} {i}")
