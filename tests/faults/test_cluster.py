"""Redis Cluster under faults (RELIABILITY §8 B): the primary owning a queue's slot SIGKILLed
mid-drain (★R6 b), and the queue's slot resharded to another primary under load (R7).

Each test starts its own cluster on free loopback ports (tests/_support.start_cluster): the
faults change its topology, so no other test may share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from segue import App
from segue._shards import shard_names
from tests._support import Engine, start_cluster, stop
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import Verdict, check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer, Op
from tests.integration.conftest import eventually

APP = "tests.apps.faults:app"
PRIMARIES = 3
LONG = 4  # tasks of 3 s running across the failover


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[tuple[Engine, list[Any]]]:
    """3 primaries + 3 replicas, cluster-node-timeout 1000 ms, AOF on (RELIABILITY §7)."""
    engine, procs = start_cluster(
        tmp_path / "cluster",
        replicas=1,
        node_timeout_ms=1000,
        extra=("--appendonly", "yes", "--appendfsync", "everysec"),
    )
    yield engine, procs
    for proc in procs:
        stop(proc)


@pytest.fixture
def reshard_cluster(tmp_path: Path) -> Iterator[Engine]:
    """3 primaries, no replicas: a slot migration needs none."""
    engine, procs = start_cluster(tmp_path / "cluster", extra=("--appendonly", "yes"))
    yield engine
    for proc in procs:
        stop(proc)


def listing_all(engine: Engine, first: int = 0) -> Engine:
    """The engine with URLs that list every node, node `first` first, as a production URL
    would: a client made after that node died discovers the cluster through the others."""
    ports = [engine.ports[first], *(p for p in engine.ports if p != engine.ports[first])]
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    one = f"127.0.0.1:{engine.ports[0]}"
    return dataclasses.replace(
        engine, url=engine.url.replace(one, hosts), admin_url=engine.admin_url.replace(one, hosts)
    )


def _slot(queue: str) -> int:
    return int(key_slot(f"segue:{{{queue}}}:q".encode()))


def _queue_on(primary: int, rng: random.Random) -> str:
    """A queue name whose slot the start_cluster split gives to primary `primary`."""
    step = 16384 // PRIMARIES
    while True:
        queue = f"c_{rng.getrandbits(40):010x}"
        if min(_slot(queue) // step, PRIMARIES - 1) == primary:
            return queue


def _admin(port: int) -> Any:
    return redis.Redis(port=port, socket_timeout=10)


def _node_id(port: int) -> str:
    with _admin(port) as c:
        reply = c.execute_command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class Producer:
    """Enqueues `n` tasks one at a time at a steady pace through a History, so that
    enqueues are in flight before, during and after the fault."""

    def __init__(self, history: History, durations: list[int], seconds: float) -> None:
        self.history = history
        self.durations = durations
        self.pause = seconds / len(durations)

    async def run(self) -> None:
        for k, ms in enumerate(self.durations):
            await self.history.enqueue(faults.sleep.call(ms), str(k))
            await asyncio.sleep(self.pause)

    def enqueued(self) -> int:
        return len(self.history.ops)


def unavailability(ops: list[Op], since: float) -> dict[str, float | None]:
    """What the producer saw from `since` (time.time()) on: the longest time without an
    acked enqueue (client-visible unavailability, whether the client retried inside one
    call or calls failed), and the span from the first failed enqueue to the first one
    that succeeded after it."""
    acked = sorted(op.completed for op in ops if op.outcome == "ok" and op.completed)
    after = [t for t in acked if t >= since]
    before = [t for t in acked if t < since]
    points = ([before[-1]] if before else [since]) + after
    gap = max((b - a for a, b in itertools.pairwise(points)), default=None)
    failed = sorted(op.invoked for op in ops if op.outcome != "ok" and op.invoked >= since)
    span = None
    if failed:
        back = [t for t in after if t > failed[0]]
        span = back[0] - failed[0] if back else None
    return {
        "unavailability_ms": None if gap is None else round(gap * 1000, 1),
        "failed_to_first_ok_ms": None if span is None else round(span * 1000, 1),
    }


async def drained(app: App, queue: str, history: History, timeout: float) -> float:
    """Wait until every task whose enqueue was acked or ambiguous ended; returns when
    (time.time()). On a timeout, the error says what was left where."""
    expected = len(history.ids("ok"))
    last: dict[str, int] = {}

    async def ended() -> bool:
        last.update(await app.queue_counts(queue))
        c = last
        final = c["succeeded"] + c["failed"] + c["cancelled"] + c["expired"]
        return final >= expected and c["queued"] + c["running"] + c["scheduled"] == 0

    try:
        await eventually(ended, timeout=timeout, interval=0.1)
    except AssertionError:
        errors = sorted({op.error or "" for op in history.ops if op.error})[:3]
        raise AssertionError(
            f"the queue did not drain in {timeout} s: {last}; producer {history.counts()} {errors}"
        ) from None
    return time.time()


def assert_sound(verdict: Verdict) -> None:
    assert verdict.phantom == [], f"tasks that ran without an enqueue: {verdict.phantom[:10]}"
    assert verdict.dup_effect == [], f"tasks that succeeded twice: {verdict.dup_effect[:10]}"
    assert verdict.stuck == [], f"tasks left neither ended nor dead: {verdict.stuck[:10]}"
    assert verdict.bound_violations == [], (
        f"tasks run more often than their recorded interruptions allow: "
        f"{verdict.bound_violations[:10]}"
    )


def _fleet_errors(fleet: Fleet, *words: str) -> dict[str, int]:
    logs = "".join(fleet.log(s) for s in fleet.slots)
    return {w: logs.count(w) for w in words}


def _wrong(ops: list[Op], word: str) -> int:
    return sum(1 for op in ops if op.error and word in op.error)


# --- ★R6 (b): failover -----------------------------------------------------------------


async def test_a_primary_killed_mid_drain_fails_over_to_its_replica(
    failover_cluster: tuple[Engine, list[Any]],
    fault_ledger: LedgerServer,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★R6(b): SIGKILL the primary owning the queue's slot while 2 workers drain and a
    producer enqueues: its replica takes over, producer and workers follow it, no acked
    enqueue is lost (memory durability, loopback replication), every task drains, tasks
    running across the failover keep their leases (renewed through the new primary), and
    the producer's unavailability stays within 5 s."""
    await failover(
        1, failover_cluster, fault_ledger, fault_rng, fault_scale, fault_report, tmp_path
    )


@pytest.mark.full_only
async def test_a_primary_killed_mid_drain_of_a_sharded_queue_fails_over(
    failover_cluster: tuple[Engine, list[Any]],
    fault_ledger: LedgerServer,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★R6(b) on a queue of 6 shards (docs/sharding.md), 2 on each primary, the queue's base
    (and its shard count) on the killed one: the same bounds, every shard checked."""
    await failover(
        6, failover_cluster, fault_ledger, fault_rng, fault_scale, fault_report, tmp_path
    )


async def failover(
    shards: int,
    failover_cluster: tuple[Engine, list[Any]],
    fault_ledger: LedgerServer,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    engine, procs = failover_cluster
    victim = fault_rng.randrange(PRIMARIES)
    # the victim first: the checker's client, made after the kill, must get past it
    engine = listing_all(engine, first=victim)
    queue = _queue_on(victim, fault_rng)
    n = fault_scale.pick(1_000, 10_000)
    seconds = fault_scale.seconds(4.0, 30.0)
    durations = [fault_rng.randrange(0, 21) for _ in range(n)]
    kill_share = fault_rng.uniform(0.2, 0.4)
    # longer than the failover and a renewal interval: a lease must survive it
    lease = 5.0
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue, poll_seconds=0.2)
    history = History(app, queue, shards)
    fleet = Fleet(APP, engine.url, queue, lease=lease, env=fault_ledger.env(), log_dir=tmp_path)
    counter = RedirectCounter()
    try:
        async with app, counter.watching():
            if shards > 1:
                await app.queue(queue, shards=shards).create()
            with fleet:
                for _ in range(2):
                    fleet.start(8)
                await fleet.ready()
                # tasks still running when the primary dies: their leases, held on it, are
                # renewed through the promoted replica (or, lapsed, handed out again)
                long = [(faults.sleep.call(3_000), f"long{i}") for i in range(LONG)]
                await history.enqueue_many(long)
                producer = Producer(history, durations, seconds)
                began = time.time()
                producing = asyncio.create_task(producer.run())
                await eventually(
                    lambda: _true(producer.enqueued() >= n * kill_share), timeout=60, interval=0.01
                )
                killed_at = time.time()
                procs[victim].kill()  # SIGKILL, by the pid this test started
                procs[victim].wait(timeout=10)
                replica = engine.ports[PRIMARIES + victim]
                promoted_at = await asyncio.to_thread(_promoted, replica, 30.0)
                await asyncio.wait_for(producing, timeout=120)
                done_at = await drained(app, queue, history, timeout=fault_scale.seconds(60, 300))
                alive = len(fleet.alive())
                effects = await Ledger(fault_ledger, queue).read()
                verdict = await check(
                    history=history,
                    effects=effects,
                    admin_url=engine.admin_url,
                    queue=queue,
                    shards=shard_names(queue, shards) if shards > 1 else (),
                )
                errors = _fleet_errors(fleet, "CROSSSLOT", "Traceback")
                # after the checker: a result awaited through the promoted replica
                late = await faults.hold.call(1).options(queue=queue).enqueue()
                late_result = await late.result(timeout=15)
    finally:
        app.settings = saved
    seen = unavailability(history.ops, killed_at)
    fault_report.add(
        n=n,
        shards=shards,
        workers=2,
        lease_s=lease,
        cluster_node_timeout_ms=1000,
        killed_primary=victim,
        killed_after_enqueues=int(n * kill_share),
        replica_promoted_after_ms=round((promoted_at - killed_at) * 1000, 1),
        producer_redirects=counter.counts,
        producer_connection_errors=counter.connection_errors,
        long_tasks=LONG,
        long_tasks_run_again=sum(
            len(effects.executions.get(history.task_id(f"long{i}"), [])) > 1 for i in range(LONG)
        ),
        drain_s=round(done_at - began, 3),
        drained_after_kill_s=round(done_at - killed_at, 3),
        workers_alive=alive,
        worker_log_errors=errors,
        **seen,
        **verdict.figures(),
    )
    assert alive == 2, "a worker exited during the failover"
    assert late_result.startswith(socket.gethostname())
    assert verdict.lost == [], (
        f"acked enqueues lost in the failover (memory durability): {len(verdict.lost)}"
    )
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
    assert all(history.task_id(f"long{i}") in effects.effects for i in range(LONG))
    # the renewals went on through the promoted replica: no lease lapsed, nothing ran twice
    assert verdict.lease_losses == 0
    assert verdict.dup_exec == 0
    assert seen["unavailability_ms"] is not None
    assert seen["unavailability_ms"] <= 5_000


def _promoted(port: int, timeout: float) -> float:
    """When (time.time()) the replica on `port` reported itself a primary."""
    deadline = time.monotonic() + timeout
    with _admin(port) as c:
        while c.info("replication").get("role") != "master":
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica on port {port} was not promoted")
            time.sleep(0.01)
    return time.time()


async def _true(value: bool) -> bool:
    return value


# --- R7: resharding -------------------------------------------------------------------


class Migration:
    """Moves one slot from one primary to another as an operator does: IMPORTING on the
    target, MIGRATING on the source, MIGRATE its keys in batches of GETKEYSINSLOT, then
    SETSLOT NODE on every primary."""

    def __init__(self, ports: list[int], slot: int, source: int, target: int) -> None:
        self.ports = ports
        self.slot = slot
        self.source = ports[source]
        self.target = ports[target]
        self.batches = 0
        self.keys = 0

    def run(self, batch: int = 10) -> None:
        slot, src, dst = self.slot, self.source, self.target
        src_id, dst_id = _node_id(src), _node_id(dst)
        with _admin(dst) as d, _admin(src) as s:
            d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                s.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
                self.batches += 1
                self.keys += len(keys)
                time.sleep(0.02)  # interleave with the load, as a throttled reshard does
            # the target first, so that the source's MOVED points to a node that agrees
            d.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self.ports:
            if port not in (src, dst):
                with _admin(port) as o:
                    o.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def run_atomic(self, timeout: float = 30.0) -> None:
        dst_id = _node_id(self.target)
        with _admin(self.source) as s:
            s.execute_command(
                "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", self.slot, self.slot, "NODE", dst_id
            )
            deadline = time.monotonic() + timeout
            while True:
                jobs = s.execute_command("CLUSTER", "GETSLOTMIGRATIONS")
                states = {job[b"state"] for job in jobs}
                if states and states <= {b"success"}:
                    break
                if b"failed" in states or b"cancelled" in states or time.monotonic() > deadline:
                    raise AssertionError(f"the atomic slot migration did not succeed: {jobs}")
                time.sleep(0.01)
        with _admin(self.target) as d:
            self.keys = int(d.execute_command("CLUSTER", "COUNTKEYSINSLOT", self.slot))
        self.batches = 1


class RedirectCounter(logging.Handler):
    """Counts the MOVED, ASK and TRYAGAIN replies redis-py's cluster client logs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts = {"MOVED": 0, "ASK": 0, "TRYAGAIN": 0}
        self.connection_errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for word in self.counts:
            if message.startswith(f"{word} error received"):
                self.counts[word] += 1
        if message.startswith(("ConnectionError received", "TimeoutError received")):
            self.connection_errors += 1

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Count what redis-py's cluster client logs within the block."""
        log = logging.getLogger("redis.asyncio.cluster")
        level = log.level
        log.addHandler(self)
        log.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            log.removeHandler(self)
            log.setLevel(level)


# Valkey 9's atomic slot migration runs in full mode: the key-by-key migration, which every
# server has, is the one whose ASK replies segue must follow, and it runs in quick mode
@pytest.mark.pairable  # invariants, not timings: scripts/test runs it beside another one
@pytest.mark.parametrize("how", ["keys", pytest.param("atomic", marks=pytest.mark.full_only)])
async def test_a_queue_slot_resharded_under_load_loses_nothing(
    how: str,
    reshard_cluster: Engine,
    fault_ledger: LedgerServer,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """R7: while 2 workers drain and a producer enqueues, the queue's slot moves to another
    primary: nothing acked is lost, no CROSSSLOT error, every task completes, duplicates
    stay within the recorded lease losses; ASK/MOVED/TRYAGAIN replies are followed. `keys`:
    the classic key-by-key migration; `atomic`: Valkey 9's CLUSTER MIGRATESLOTS."""
    engine = listing_all(reshard_cluster)
    source = fault_rng.randrange(PRIMARIES)
    target = (source + fault_rng.randrange(1, PRIMARIES)) % PRIMARIES
    queue = _queue_on(source, fault_rng)
    n = fault_scale.pick(1_000, 10_000)
    seconds = fault_scale.seconds(4.0, 30.0)
    durations = [fault_rng.randrange(0, 21) for _ in range(n)]
    start_share = fault_rng.uniform(0.2, 0.4)
    lease = 2.0
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue, poll_seconds=0.2)
    history = History(app, queue)
    fleet = Fleet(APP, engine.url, queue, lease=lease, env=fault_ledger.env(), log_dir=tmp_path)
    migration = Migration(list(engine.ports), _slot(queue), source, target)
    counter = RedirectCounter()
    try:
        async with app, counter.watching():
            with fleet:
                for _ in range(2):
                    fleet.start(8)
                await fleet.ready()
                producer = Producer(history, durations, seconds)
                began = time.time()
                producing = asyncio.create_task(producer.run())
                await eventually(
                    lambda: _true(producer.enqueued() >= n * start_share),
                    timeout=60,
                    interval=0.01,
                )
                moving_at = time.time()
                await asyncio.to_thread(migration.run if how == "keys" else migration.run_atomic)
                moved_at = time.time()
                await asyncio.wait_for(producing, timeout=120)
                done_at = await drained(app, queue, history, timeout=fault_scale.seconds(60, 300))
                alive = len(fleet.alive())
                verdict = await check(
                    history=history,
                    effects=await Ledger(fault_ledger, queue).read(),
                    admin_url=engine.admin_url,
                    queue=queue,
                )
                errors = _fleet_errors(fleet, "CROSSSLOT", "TRYAGAIN", "TTL exhausted")
    finally:
        app.settings = saved
    latencies = sorted(
        (op.completed - op.invoked) * 1000
        for op in history.ops
        if op.completed is not None and moving_at <= op.invoked <= moved_at
    )
    others = sorted(
        (op.completed - op.invoked) * 1000
        for op in history.ops
        if op.completed is not None and not moving_at <= op.invoked <= moved_at
    )
    fault_report.add(
        n=n,
        workers=2,
        lease_s=lease,
        migration=how,
        migrated_keys=migration.keys,
        migrate_batches=migration.batches,
        migration_s=round(moved_at - moving_at, 3),
        drain_s=round(done_at - began, 3),
        producer_redirects=counter.counts,
        producer_crossslot=_wrong(history.ops, "CROSSSLOT"),
        producer_errors=sorted({op.error for op in history.ops if op.error})[:5],
        worker_log_errors=errors,
        workers_alive=alive,
        enqueue_ms_max_during=round(latencies[-1], 1) if latencies else None,
        enqueue_ms_p50_during=round(latencies[len(latencies) // 2], 1) if latencies else None,
        enqueue_ms_p50_outside=round(others[len(others) // 2], 1) if others else None,
        **verdict.figures(),
    )
    assert migration.keys > 0, "the slot held no key: the migration moved nothing"
    assert alive == 2, "a worker exited during the migration"
    # a script refused with TRYAGAIN never ran: it is sent again, not failed
    assert history.counts() == {"ok": n, "fail": 0, "ambiguous": 0}, sorted(
        {op.error or "" for op in history.ops}
    )[:3]
    assert errors["CROSSSLOT"] == errors["TTL exhausted"] == 0
    assert sum(counter.counts.values()) > 0, "the producer never met the migration"
    if how == "atomic":
        # the slot moves whole: no ASK, no TRYAGAIN, one MOVED per client and slot
        assert counter.counts["ASK"] == counter.counts["TRYAGAIN"] == 0
    assert verdict.lost == [], f"acked enqueues lost in the migration: {len(verdict.lost)}"
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
