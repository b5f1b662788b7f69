"""An App of workflow steps for worker subprocesses, configured from SEGUE_* variables.

Every execution appends a row to a ledger list the test reads, so it can count the runs
of every step and see which worker ran it. LEDGER_URL names the server of the ledger (an
admin URL: the ledger, the gates and the counters are not segue keys, and they live on a
server the test never restarts), LEDGER_KEY the list. Rows are
`<task id> <worker id> <try> <label>`.

A gate is a key on the ledger server: a task given one waits until the test sets it, so
the test decides when that task may go on, without guessing durations.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from segue import App, Context, Fail

app = App("workflows")
_ledger: Any = None
_async_ledger: Any = None

# The running counter of `unit`: INCR it, and raise the recorded maximum to the new value,
# in one atomic step (KEYS[1] counter, KEYS[2] maximum; both in one hash tag).
_ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def _url() -> str:
    return os.environ["LEDGER_URL"]


def _client() -> Any:
    """A blocking client of the ledger server (a row is stored when `record` returns, so a
    SIGKILL after it cannot lose the row)."""
    global _ledger
    if _ledger is None:
        url = _url()
        if "+cluster://" in url:
            _ledger = redis.cluster.RedisCluster.from_url(url.replace("+cluster", ""))
        else:
            _ledger = redis.Redis.from_url(url)
    return _ledger


def _async_client() -> Any:
    """An asyncio client of the ledger server, for the waits and counters inside tasks
    (they must not block the worker's event loop while other tasks run)."""
    global _async_ledger
    if _async_ledger is None:
        url = _url()
        if "+cluster://" in url:
            _async_ledger = redis.asyncio.cluster.RedisCluster.from_url(url.replace("+cluster", ""))
        else:
            _async_ledger = redis.asyncio.Redis.from_url(url)
    return _async_ledger


def record(ctx: Context, label: str) -> None:
    """Append `<id> <worker> <try> <label>` to the ledger."""
    row = f"{ctx.task_id} {ctx.worker_id} {ctx.tries} {label}"
    _client().rpush(os.environ["LEDGER_KEY"], row)


async def wait_gate(gate: str) -> None:
    """Return once the test has set the key `gate` (polled every 20 ms)."""
    client = _async_client()
    while not await client.exists(gate):
        await asyncio.sleep(0.02)


# --- a chain ------------------------------------------------------------------------------


@app.task(name="wf.step")
async def step(ctx: Context, x: int, gate: str = "") -> int:
    """One short step of a chain: records itself as step `x + 1`, waits for `gate` if it
    was given one, and returns `x + 1` (so step n of a chain started at 0 returns n)."""
    record(ctx, f"step{x + 1}")
    if gate:
        await wait_gate(gate)
    await asyncio.sleep(0.1)
    return x + 1


# --- sub-tasks ----------------------------------------------------------------------------


@app.task(name="wf.child")
async def child(ctx: Context, i: int, gate: str = "") -> int:
    """A sub-task: records `start`, waits for `gate` if given, records `end`, returns 10 i."""
    record(ctx, "start")
    if gate:
        await wait_gate(gate)
    await asyncio.sleep(0.05)
    record(ctx, "end")
    return 10 * i


@app.task(name="wf.parent")
async def parent(ctx: Context, n: int, child_gate: str = "", gate: str = "") -> int:
    """Starts `n` children, records `enqueued`, waits for `gate` (if given, and only in the
    first try: the test holds the parent between its enqueue and its wait_for), then waits
    for the children and returns the sum of their results."""
    record(ctx, "start")
    handles = await ctx.enqueue(child.call(i, child_gate) for i in range(n))
    record(ctx, "enqueued")
    if gate and ctx.tries == 1:
        await wait_gate(gate)
    results = await ctx.wait_for(handles)
    record(ctx, "done")
    return sum(results)


# --- fan-out, fan-in ------------------------------------------------------------------------


@app.task(name="wf.unit")
async def unit(ctx: Context, i: int, counter: str) -> int:
    """A no-op-ish member of a large group: counts itself running in `counter` (keeping
    the maximum in `<counter>:max`) for a few ms, records itself, returns i * i."""
    client = _async_client()
    await client.eval(_ENTER, 2, counter, f"{counter}:max")
    try:
        await asyncio.sleep(0.01)
        record(ctx, "unit")
    finally:
        await client.decr(counter)
    return i * i


@app.task(name="wf.merge")
async def merge(ctx: Context, values: list[int]) -> list[int]:
    """The fan-in step: records itself and returns the list it was given."""
    record(ctx, f"merge{len(values)}")
    return values


# --- dependencies ---------------------------------------------------------------------------


@app.task(name="wf.work", max_tries=1)
async def work(ctx: Context, label: str) -> str:
    """Records itself and returns its label, or fails (without retry) when it is `boom`."""
    record(ctx, label)
    if label == "boom":
        raise Fail("the root of the tree failed")
    return label


@app.task(name="wf.branch")
async def branch(ctx: Context, n: int, child_gate: str = "") -> list[int]:
    """The root of a 3-level tree: starts `n` wf.parent sub-tasks of 2 children each, and
    waits for them."""
    record(ctx, "start")
    return await ctx.wait_for(await ctx.enqueue(parent.call(2, child_gate) for _ in range(n)))
