"""An App of durable tasks for worker subprocesses, configured from SEGUE_* variables.

Each processed step is appended to a ledger list the test reads, so it can count the
executions of every step and see which worker ran it. LEDGER_URL names the server of the
ledger (an admin URL: the ledger is not a segue key), LEDGER_KEY the list. Rows are
`<task id> <worker id> <try> <step>`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis
import redis.cluster

from segue import App, Context, Pause

app = App("durable")
_ledger: Any = None


def _client() -> Any:
    global _ledger
    if _ledger is None:
        url = os.environ["LEDGER_URL"]
        if "+cluster://" in url:
            _ledger = redis.cluster.RedisCluster.from_url(url.replace("+cluster", ""))
        else:
            _ledger = redis.Redis.from_url(url)
    return _ledger


def record(ctx: Context, step: str) -> None:
    """Append `<id> <worker> <try> <step>` to the ledger (synchronously: it is done when
    this returns, so a SIGKILL after it cannot lose the row)."""
    row = f"{ctx.task_id} {ctx.worker_id} {ctx.tries} {step}"
    _client().rpush(os.environ["LEDGER_KEY"], row)


@app.task(name="durable.files")
async def process_files(ctx: Context, files: list[str], seconds: float) -> int:
    """DESIGN §2's file-processing example: a checkpoint after each file. Returns the sum
    of the files' name lengths, carried in the state, so a file counted twice or a lost
    state shows in the result."""
    return await _process(ctx, files, seconds)


# The same job for the kill storms of the fault suite: a run lost with its worker spends a
# try, and a storm may kill the same task's worker many times; that is not a crash loop
@app.task(name="durable.files_storm", max_tries=1000)
async def process_files_in_a_storm(ctx: Context, files: list[str], seconds: float) -> int:
    return await _process(ctx, files, seconds)


async def _process(ctx: Context, files: list[str], seconds: float) -> int:
    saved = await ctx.state.all()
    done: int = saved.get("current_index", 0)
    total: int = saved.get("total", 0)
    for i, name in enumerate(files):
        if i < done:
            continue
        await asyncio.sleep(seconds)  # "process" the file
        record(ctx, str(i))
        total += len(name)
        await ctx.state.set(current_index=i + 1, total=total)
        await ctx.checkpoint()
    return total


@app.task(name="durable.suspender")
async def suspender(ctx: Context, delay: float) -> str:
    """Saves a value, suspends itself once with `Pause(delay=...)`, then returns the value."""
    runs: int = await ctx.state.get("runs", 0)
    record(ctx, f"run{runs}")
    if runs == 0:
        await ctx.state.set(runs=1, saved="kept across the pause")
        raise Pause(delay=delay)
    return f"{await ctx.state.get('saved')} (run {runs + 1})"


@app.task(name="durable.flaky", max_tries=3, retry_backoff=1.0)
async def flaky(ctx: Context, n: int) -> int:
    """Fails its first try, so it spends about a second RETRYING before it succeeds."""
    record(ctx, f"try{ctx.tries}")
    if ctx.tries == 1:
        raise RuntimeError("the first try of a flaky task fails")
    return n
