"""R6(a) (RELIABILITY §8 B): failover to a replica that a partition left behind.

A valkey primary and its replica, replication through the fault proxy. The replication link
is blackholed; enqueues go on with durability="replicated" and "memory"; the primary is
SIGKILLed and the replica promoted (REPLICAOF NO ONE). Every replicated enqueue that
returned must be on the new primary: those made during the partition raise DurabilityError
instead of returning. What "memory" lost is counted and reported.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from segue import App, DurabilityError
from tests._support import ACL_PASSWORD, ACL_USER, free_port, stop
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History
from tests.faults.proxy import FaultProxy
from tests.faults.sentinel import SentinelSet, launch_node, sentinel_set

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

__all__ = ["sentinel_set"]  # a fixture, used by name
TIMEOUT = 0.25  # durability_timeout_seconds: how long a replicated enqueue waits for a replica
WAVE = 50  # enqueues in flight at once (the replicated ones of a wave share one WAIT)


@dataclass
class Pair:
    primary: Any
    replica: Any
    primary_port: int
    replica_port: int
    proxy: FaultProxy

    def url(self, port: int) -> str:
        return f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0"


def _in_sync(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=2) as r:
        return bool(r.info("replication").get("master_link_status") == "up")


@pytest.fixture
def pair(tmp_path: Path, fault_seed: int) -> Iterator[Pair]:
    """A primary, and a replica that copies it through a fault proxy."""
    primary_port, replica_port = free_port(), free_port()
    while replica_port == primary_port:
        replica_port = free_port()
    primary = launch_node(tmp_path / "primary", primary_port)
    proxy = FaultProxy("127.0.0.1", primary_port, seed=fault_seed).start()
    replica = launch_node(tmp_path / "replica", replica_port, replica_of=proxy.port)
    p = Pair(primary, replica, primary_port, replica_port, proxy)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _in_sync(replica_port):
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the replica did not sync through the proxy"
            time.sleep(0.05)
        yield p
    finally:
        proxy.stop()
        stop(replica)
        stop(primary)


def _app(url: str, queue: str) -> App:
    app = App("r6", redis_url=url, queue=queue, durability_timeout_seconds=TIMEOUT)

    @app.task(name="r6.noop")
    async def noop(i: int) -> int:
        return i

    return app


def _plan(rng: random.Random, prefix: str, n: int) -> list[tuple[str, str]]:
    """(key, level) of n enqueues; every 7th wave is all replicated, sent as one batch."""
    return [
        (f"{prefix}{i}", "replicated" if _batched(i) else rng.choice(("replicated", "memory")))
        for i in range(n)
    ]


def _batched(i: int) -> bool:
    return (i // WAVE) % 7 == 6


async def _waves(history: History, app: App, plan: list[tuple[str, str]]) -> None:
    """Enqueue the plan WAVE at a time, concurrently (or as one enqueue_many batch)."""
    noop = app.registry["r6.noop"]
    for start in range(0, len(plan), WAVE):
        wave = plan[start : start + WAVE]
        if _batched(start):
            batch = [(noop.options(durability="replicated").call(0), k) for k, _ in wave]
            await history.enqueue_many(batch)
            continue
        await asyncio.gather(
            *(
                history.enqueue(noop.options(durability=level).call(n), key)  # type: ignore[arg-type]
                for n, (key, level) in enumerate(wave)
            )
        )


def _existing(port: int, queue: str, ids: set[str]) -> set[str]:
    with redis.Redis(port=port) as r:
        pipe = r.pipeline(transaction=False)
        ordered = sorted(ids)
        for task_id in ordered:
            pipe.exists(f"segue:{{{queue}}}:task:{task_id}")
        found = pipe.execute()
    return {t for t, n in zip(ordered, found, strict=True) if n}


async def test_replicated_enqueues_survive_failover_to_a_partitioned_replica(
    pair: Pair,
    fault_seed: int,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    rng = random.Random(fault_seed)
    queue = f"r6_{fault_seed}"
    before_n = fault_scale.pick(100, 500)
    during_n = fault_scale.pick(300, 1000)
    plan_before = _plan(rng, "b", before_n)
    plan_during = _plan(rng, "d", during_n)

    app = _app(pair.url(pair.primary_port), queue)
    before, during = History(app, queue), History(app, queue)
    async with app:
        await _waves(before, app, plan_before)
        pair.proxy.blackhole("both")  # a silent partition: the link looks up to both ends
        partitioned = time.monotonic()
        await _waves(during, app, plan_during)
        partition_s = time.monotonic() - partitioned
    pair.primary.send_signal(signal.SIGKILL)
    pair.primary.wait(timeout=5)
    with redis.Redis(port=pair.replica_port) as r:
        r.execute_command("REPLICAOF", "NO", "ONE")
    promoted = time.monotonic()

    def ids(plan: list[tuple[str, str]], level: str) -> set[str]:
        return {before.task_id(k) for k, lv in plan if lv == level}

    rep_ok_before = ids(plan_before, "replicated")
    mem_ok_before = ids(plan_before, "memory")
    rep_during = ids(plan_during, "replicated")
    mem_during = ids(plan_during, "memory")

    everything = rep_ok_before | mem_ok_before | rep_during | mem_during
    survivors = _existing(pair.replica_port, queue, everything)
    lost_replicated = rep_ok_before - survivors
    mem_lost_during = mem_during - survivors
    mem_lost_before = mem_ok_before - survivors
    fault_report.add(
        enqueued_before_partition=before_n,
        enqueued_during_partition=during_n,
        replicated_acked=len(rep_ok_before),
        replicated_acked_lost=len(lost_replicated),
        replicated_refused_during_partition=len(during.ids("ambiguous")),
        replicated_acked_during_partition=len(during.ids("ok") & rep_during),
        replicated_refused_that_exist_after_failover=len(rep_during & survivors),
        memory_acked=len(mem_ok_before) + len(during.ids("ok") & mem_during),
        memory_acked_lost_during_partition=len(mem_lost_during),
        memory_acked_lost_before_partition=len(mem_lost_before),
        partition_seconds=round(partition_s, 3),
    )

    # nothing the partitioned replica could not confirm was acknowledged as replicated
    assert before.counts() == {"ok": before_n, "fail": 0, "ambiguous": 0}
    assert during.ids("ok") & rep_during == set()
    assert during.ids("ambiguous") == rep_during
    assert all("DurabilityError" in (op.error or "") for op in during.ops if op.outcome != "ok")
    assert during.ids("ok") == mem_during
    assert lost_replicated == set(), f"acked replicated enqueues lost: {sorted(lost_replicated)}"
    # the partition was total: every memory enqueue acked during it is gone with the primary
    assert mem_lost_during == mem_during

    # the app, pointed at the new primary, works and a worker drains what survived
    new = _app(pair.url(pair.replica_port), queue)
    async with new:
        await new.registry["r6.noop"].enqueue(-1)
        recovered_s = time.monotonic() - promoted
        ran = await new.drain(concurrency=32)
        counts = await new.queue_counts()
    assert ran == len(survivors) + 1
    assert counts["succeeded"] == ran
    assert {k: v for k, v in counts.items() if k != "succeeded"} == dict.fromkeys(
        (k for k in counts if k != "succeeded"), 0
    )

    fault_report.add(
        app_recovery_seconds_after_promotion=round(recovered_s, 3), survivors_drained=ran - 1
    )


async def test_replicated_under_sentinel_follows_the_primary(sentinel_set: SentinelSet) -> None:
    """Under Sentinel the durable connection asks the sentinels for the primary too; its
    replica confirms; fsync is refused there (the set's nodes run without AOF)."""
    queue = f"r6s_{uuid.uuid4().hex[:8]}"
    with pytest.raises(DurabilityError, match="append-only file is off"):
        await App("r6", redis_url=sentinel_set.url, durability="fsync").connect()
    app = _app(sentinel_set.url, queue)
    replica = next(p for p in sentinel_set.nodes if p != sentinel_set.primary_port)
    async with app:
        h = await app.registry["r6.noop"].options(durability="replicated").enqueue(1)
        with sentinel_set.admin(replica) as r:
            assert r.exists(f"segue:{{{queue}}}:task:{h.id}")
