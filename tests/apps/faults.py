"""The App of the fault suite: every task records each of its executions in an effect ledger.

Worker subprocesses (`python -m segue worker tests.apps.faults:app`) configure it from
SEGUE_* variables; FAULT_LEDGER_URL names the ledger server, a separate Valkey the faults
never touch (tests/faults/ledger.py), reached as its admin user because ledger keys are
not segue keys.

Per execution the task writes, synchronously (a write is on the ledger when the call
returns, so a SIGKILL right after it cannot lose it):

- at its start, a row `<worker> <gen> <try> <t_start_ms> -` appended to `exec:<task id>`
  (the id also joins the set `ran:<queue>`);
- at its end, the row's last field becomes `<t_end_ms>` and `SET effect:<task id> NX`
  applies the task's effect at most once, whatever the number of executions. A row ending
  in `<t_end_ms>!` is an execution that found the effect already applied.

`<gen>` is the lease generation (the fencing token of the claim that started the run), so
two executions of one task are told apart even when their try counts are equal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import redis

from segue import App, Context, LeaseLost

app = App("faults")

EXEC = "exec:"
EFFECT = "effect:"
RAN = "ran:"
STEP = "step:"
FENCED = "fenced:"

_ledger: Any = None


def ledger() -> Any:
    """The ledger client of this process (opened on first use)."""
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["FAULT_LEDGER_URL"])
    return _ledger


def _gen(ctx: Context) -> str:
    # the lease generation is not public API; the ledger needs it to tell runs apart
    run = ctx._run
    return run.gen if run is not None else "0"


def _ms() -> int:
    return int(time.time() * 1000)


class Execution:
    """The ledger row of the current execution: opened at the start, closed at the end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.row = f"{ctx.worker_id} {_gen(ctx)} {ctx.tries} {_ms()}"
        pipe = ledger().pipeline(transaction=True)
        pipe.rpush(EXEC + ctx.task_id, self.row + " -")
        # by queue, not shard: a sharded queue's runs are read as the queue's (its shards
        # are named `<queue>#<count>.<j>`, docs/sharding.md)
        pipe.sadd(RAN + ctx.queue.partition("#")[0], ctx.task_id)
        length, _ = pipe.execute()
        self.index = int(length) - 1

    def finish(self) -> None:
        """Apply the effect (once per task, by construction) and close the row."""
        client = ledger()
        applied = client.set(EFFECT + self.ctx.task_id, self.row, nx=True)
        end = f"{_ms()}" if applied else f"{_ms()}!"
        client.lset(EXEC + self.ctx.task_id, self.index, f"{self.row} {end}")


@app.task(name="faults.sleep", silent=True)
async def sleep(ctx: Context, ms: int) -> int:
    """Sleep `ms` milliseconds (awaiting: the worker's loop stays free)."""
    run = Execution(ctx)
    await asyncio.sleep(ms / 1000)
    run.finish()
    return ms


@app.task(name="faults.blob", silent=True)
async def blob(ctx: Context, data: str) -> int:
    """Carry `data` (bulk for a test that fills the server's memory); return its length."""
    run = Execution(ctx)
    run.finish()
    return len(data)


@app.task(name="faults.hold", silent=True)
async def hold(ctx: Context, ms: int) -> str:
    """Sleep `ms` milliseconds; the result names the run that produced it
    (`<worker> <gen>`), so a test sees whose outcome segue kept."""
    run = Execution(ctx)
    await asyncio.sleep(ms / 1000)
    run.finish()
    return f"{ctx.worker_id} {_gen(ctx)}"


@app.task(name="faults.fenced", silent=True)
async def fenced(ctx: Context, ms: int) -> str:
    """Sleep `ms` milliseconds, then store a state value (a write fenced by the lease
    generation) before applying the effect, as a task with an outside effect should: a run
    that lost its lease meanwhile is refused there and never applies its effect. A refused
    write is recorded in `fenced:<task id>` (`<worker> <gen>`). The result names the run."""
    run = Execution(ctx)
    await asyncio.sleep(ms / 1000)
    try:
        await ctx.state.set(by=ctx.worker_id)
    except LeaseLost:
        ledger().rpush(FENCED + ctx.task_id, f"{ctx.worker_id} {_gen(ctx)}")
        raise
    run.finish()
    return f"{ctx.worker_id} {_gen(ctx)}"


@app.task(name="faults.steps", silent=True)
async def steps(ctx: Context, n: int, ms: int) -> int:
    """`n` steps of `ms` each, with a checkpoint after every step: a re-run resumes after
    the last checkpointed step. Each step's executions are counted in `step:<id>:<i>`."""
    run = Execution(ctx)
    first: int = await ctx.state.get("step", 0)
    for i in range(first, n):
        await asyncio.sleep(ms / 1000)
        ledger().incr(f"{STEP}{ctx.task_id}:{i}")
        await ctx.state.set(step=i + 1)
        await ctx.checkpoint()
    run.finish()
    return n


@app.task(name="faults.durable", silent=True)
async def durable(ctx: Context, ms: int) -> int:
    """A journaled step, a durable sleep of `ms` milliseconds (a run of its own when the
    worker's sleep_inline_seconds is below it: the task is SUSPENDED meanwhile), another
    step, then the effect. The ledger row opens after the sleep: the run that ended to sleep
    is not an execution of the effect, and the one after it replays the first step."""
    first = await ctx.step("before", lambda: ms)
    await ctx.sleep(ms / 1000)
    run = Execution(ctx)
    after: int = await ctx.step("after", lambda: first + 1)
    run.finish()
    return after


@app.task(name="faults.signalled", silent=True)
async def signalled(ctx: Context, ms: int) -> int:
    """Wait up to `ms` milliseconds for a signal `poke` (a run of its own: the task WAITS
    meanwhile), then the effect; returns the signal's data, 0 when none came in time."""
    got: int = await ctx.wait_signal("poke", timeout=ms / 1000, default=0)
    run = Execution(ctx)
    run.finish()
    return got


@app.task(name="faults.streamed", silent=True)
async def streamed(ctx: Context, ms: int) -> int:
    """Stream three chunks over `ms` milliseconds, then the effect: its output stream, and
    the end marker the server adds, must go once the record and the stream's linger are over."""
    run = Execution(ctx)
    for i in range(3):
        await ctx.stream({"chunk": i})
        await asyncio.sleep(ms / 3000)
    run.finish()
    return ms


@app.task(name="faults.poison", silent=True)
async def poison(ctx: Context) -> None:
    """Kill the worker running it, on every attempt (a crash-looping task)."""
    Execution(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="faults.spin", silent=True)
async def spin(ctx: Context, ms: int) -> int:
    """Hold the CPU and the worker's event loop for `ms` milliseconds (no await)."""
    run = Execution(ctx)
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        pass
    run.finish()
    return ms


@app.task(name="faults.block", silent=True)
async def block(ctx: Context, ms: int) -> str:
    """Block the worker's event loop with `time.sleep` for `ms` milliseconds (a sync call
    made by mistake in an async task); the result names the run, as `hold`'s does."""
    run = Execution(ctx)
    time.sleep(ms / 1000)  # noqa: ASYNC251 -- the fault under test: a blocked loop
    run.finish()
    return f"{ctx.worker_id} {_gen(ctx)}"


@app.task(name="faults.report", silent=True)
async def report(ctx: Context, ms: int) -> int:
    """Report progress every 50 ms for `ms` milliseconds (a round trip each, so a server
    outage meets it inside a ctx call); returns how many reports it made."""
    run = Execution(ctx)
    end = time.monotonic() + ms / 1000
    n = 0
    while time.monotonic() < end:
        n += 1
        await ctx.progress(n)
        await asyncio.sleep(0.05)
    run.finish()
    return n


@app.task(name="faults.idle", silent=True)
async def idle(ctx: Context, ms: int) -> int:
    """Sleep `ms` milliseconds; a sub-task of `faults.tree` (no ledger row: the checker
    counts the producer's tasks, and these are not)."""
    await asyncio.sleep(ms / 1000)
    return ms


@app.task(name="faults.tree", silent=True)
async def tree(
    ctx: Context, delayed: int, running: int = 0, ttl: float | None = None, wait: bool = True
) -> int:
    """The parent of a cascade: starts `running` sub-tasks that sleep a minute (ids
    `<id>.1`...), then `delayed` ones due in an hour, their records kept `ttl` seconds
    (the app's default when None); then waits for them (WAITING, no run holds it) or, with
    `wait=False`, sleeps a minute (RUNNING). Meant to be cancelled; no ledger row (the
    checker would count it as a phantom)."""

    def sub(ms: int, delay: float) -> Any:
        sig = idle.call(ms) if not delay else idle.call(ms).options(delay=delay)
        return sig if ttl is None else sig.options(ttl=ttl)

    subs = [sub(60_000, 0) for _ in range(running)] + [sub(0, 3600) for _ in range(delayed)]
    handles = await ctx.enqueue(subs)
    if wait:
        await ctx.wait_for(handles)
    else:
        await asyncio.sleep(60)
    return len(handles)
