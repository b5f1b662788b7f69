"""The oracle of the fault suite (RELIABILITY §7): what the tasks did, and what producers
were told.

- `fault_ledger`: a Valkey server of the session's own with `appendfsync always`, which no
  test ever faults. The tasks of tests/apps/faults.py write their executions and effects
  there; `Ledger` reads them back for one queue.
- `History`: every enqueue a producer makes, logged as invoked, then `ok`, `fail` (the
  server or segue refused it: the task does not exist) or `ambiguous` (the connection
  broke or timed out: the task may or may not exist). Enqueues carry an idempotency key,
  so every task id is known before the call, whatever its outcome.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import pytest
import redis
import redis.asyncio

from segue import BrokerError, ScriptError, ServerOutOfMemory
from segue._shards import Router, ShardCount, routing_key
from tests._support import free_port, server_binary, start_process, stop, wait_for_ping
from tests.apps import faults

if TYPE_CHECKING:
    from segue import App, Signature

Outcome = Literal["ok", "fail", "ambiguous"]


@dataclasses.dataclass(frozen=True)
class LedgerServer:
    """The ledger's server: `url` is its admin URL (ledger keys are not segue keys)."""

    url: str
    pid: int

    def env(self) -> dict[str, str]:
        """What a worker subprocess needs to write to this ledger."""
        return {"FAULT_LEDGER_URL": self.url}


@pytest.fixture(scope="session")
def fault_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerServer]:
    """The session's ledger server: every write fsynced before the reply."""
    binary = server_binary("valkey")
    assert binary is not None
    port = free_port()
    proc = start_process(
        binary,
        port,
        tmp_path_factory.mktemp("ledger"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    )
    wait_for_ping(port)
    yield LedgerServer(f"redis://127.0.0.1:{port}/0", proc.pid)
    stop(proc)


@dataclasses.dataclass(frozen=True)
class Execution:
    """One execution of one task, as the task recorded it."""

    worker: str
    gen: int
    tries: int
    started_ms: int
    ended_ms: int | None  # None: the run never reached its end (killed, stopped, fenced)
    repeated: bool  # it reached its end but found the effect applied by an earlier run

    @classmethod
    def parse(cls, row: str) -> Execution:
        worker, gen, tries, start, end = row.split(" ")
        repeated = end.endswith("!")
        end = end.rstrip("!")
        return cls(
            worker, int(gen), int(tries), int(start), None if end == "-" else int(end), repeated
        )

    def by(self, pid: int) -> bool:
        """Whether the worker process `pid` ran it (worker ids are `<host>-<pid>-<x>`)."""
        return f"-{pid}-" in self.worker


@dataclasses.dataclass(frozen=True)
class Effects:
    """What the ledger holds for one queue."""

    executions: dict[str, list[Execution]]  # task id → its executions, in start order
    effects: dict[str, str]  # task id → the row of the execution that applied its effect
    steps: dict[str, dict[int, int]]  # task id → step → times the step ran


class Ledger:
    """Reads what the tasks of one queue recorded on the ledger server."""

    def __init__(self, server: LedgerServer, queue: str) -> None:
        self.server = server
        self.queue = queue

    async def read(self) -> Effects:
        client: Any = redis.asyncio.Redis.from_url(self.server.url, decode_responses=True)
        try:
            ids = sorted(await client.smembers(faults.RAN + self.queue))
            executions: dict[str, list[Execution]] = {}
            effects: dict[str, str] = {}
            steps: dict[str, dict[int, int]] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                pipe = client.pipeline(transaction=False)
                for task_id in chunk:
                    pipe.lrange(faults.EXEC + task_id, 0, -1)
                    pipe.get(faults.EFFECT + task_id)
                replies = await pipe.execute()
                for n, task_id in enumerate(chunk):
                    rows, effect = replies[2 * n], replies[2 * n + 1]
                    executions[task_id] = [Execution.parse(r) for r in rows]
                    if effect is not None:
                        effects[task_id] = effect
            async for key in client.scan_iter(match=f"{faults.STEP}{self.queue}:*", count=1000):
                task_id, _, step = key[len(faults.STEP) :].rpartition(":")
                steps.setdefault(task_id, {})[int(step)] = int(await client.get(key) or 0)
        finally:
            await client.aclose()
        return Effects(executions, effects, steps)

    async def count_started(self) -> int:
        """How many distinct tasks of the queue have started at least once."""
        client: Any = redis.asyncio.Redis.from_url(self.server.url)
        try:
            return int(await client.scard(faults.RAN + self.queue))
        finally:
            await client.aclose()


@dataclasses.dataclass
class Op:
    """One enqueue as a producer saw it (Jepsen-style: invoked, then its outcome)."""

    task_id: str
    name: str
    invoked: float  # time.time() when the call was made
    outcome: Outcome | None = None  # None while the call is in flight
    completed: float | None = None
    error: str | None = None
    effect: bool = True  # whether a run of it applies an effect (a poison task does not)


def _classify(exc: BaseException) -> Outcome:
    """A broken or timed-out connection, or a durability wait that fell short, leaves the
    write's fate unknown; an error reply, or a refusal before any write, means no task."""
    if isinstance(exc, ScriptError | ServerOutOfMemory):
        return "fail"
    if type(exc).__name__ == "DurabilityError":  # written, but not confirmed as asked
        return "ambiguous"
    ambiguous = (BrokerError, redis.ConnectionError, redis.TimeoutError, OSError, TimeoutError)
    return "ambiguous" if isinstance(exc, ambiguous) else "fail"


class History:
    """The producer side of a fault test: enqueues through it are logged with their fate.

    Every call needs an idempotency `key`, so the task id (`<queue>:k:<key>`) is known
    before the call is made and a retry of an ambiguous enqueue cannot create a second task.
    """

    def __init__(self, app: App, queue: str, shards: int = 1) -> None:
        self.app = app
        self.queue = queue
        self.ops: list[Op] = []
        self._shards = ShardCount(shards)  # a sharded queue: a key's shard is known too

    def task_id(self, key: str) -> str:
        shard = Router().pick(self.queue, self._shards, routing_key("", key, "", None))
        return f"{shard}:k:{key}"

    async def enqueue(self, sig: Signature[Any], key: str, *, effect: bool = True) -> Op:
        """Enqueue one call; never raises for a failed enqueue (its op says what happened)."""
        op = Op(self.task_id(key), sig.task.name, time.time(), effect=effect)
        self.ops.append(op)
        try:
            await sig.options(key=key, queue=self.queue).enqueue()
        except Exception as exc:
            op.outcome = _classify(exc)
            op.error = f"{type(exc).__name__}: {exc}"
        else:
            op.outcome = "ok"
        op.completed = time.time()
        return op

    async def enqueue_many(
        self, calls: Sequence[tuple[Signature[Any], str]], *, effect: bool = True
    ) -> list[Op]:
        """Enqueue (signature, key) pairs in one batch: all share the batch's outcome."""
        now = time.time()
        ops = [Op(self.task_id(key), sig.task.name, now, effect=effect) for sig, key in calls]
        self.ops.extend(ops)
        outcome: Outcome = "ok"
        error = None
        try:
            await self.app.enqueue_many(
                [sig.options(key=key, queue=self.queue) for sig, key in calls]
            )
        except Exception as exc:
            outcome = _classify(exc)
            error = f"{type(exc).__name__}: {exc}"
        done = time.time()
        for op in ops:
            op.outcome, op.error, op.completed = outcome, error, done
        return ops

    def ids(self, outcome: Outcome, *, effect: bool | None = None) -> set[str]:
        """Task ids whose enqueue ended with `outcome` (and, if given, that apply an effect)."""
        return {
            op.task_id
            for op in self.ops
            if op.outcome == outcome and (effect is None or op.effect == effect)
        }

    def counts(self) -> dict[str, int]:
        found = {"ok": 0, "fail": 0, "ambiguous": 0}
        for op in self.ops:
            if op.outcome is not None:
                found[op.outcome] += 1
        return found
