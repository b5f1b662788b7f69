"""The reconciler (RELIABILITY §5.9): disagreements between task records and a queue's
structures, made by hand as a restore or an eviction would leave them, are repaired by a
serving worker within two reconcile intervals, and a second pass changes nothing. Runs on
valkey, the cluster and redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

from segue import App, Hook, TaskStatus
from segue._broker import make_async_client
from segue._keys import Keyspace
from segue._reconcile import Reconciler
from segue.metrics import PrometheusHook
from tests._support import Engine
from tests.integration.conftest import eventually, serving

INTERVAL = 0.5  # reconcile_seconds of these tests
LEASE = 1.0
# the bound the reconciler promises is two intervals; a loaded machine may delay a cycle
# by the time one step of its loop takes, so the test allows a little on top of it
BOUND = 2 * INTERVAL + 0.5


class Recorder(Hook):
    def __init__(self) -> None:
        self.repairs: list[tuple[str, str, str]] = []
        self.rollbacks: list[str] = []

    async def on_repair(self, queue: str, kind: str, task_id: str) -> None:
        self.repairs.append((queue, kind, task_id))

    async def on_rollback(self, queue: str) -> None:
        self.rollbacks.append(queue)


async def admin(engine: Engine) -> AsyncGenerator[Any, None]:
    client: Any = make_async_client(engine.admin_url, cluster=engine.kind == "cluster")
    try:
        yield client
    finally:
        await client.aclose()


def build(make_app: Callable[..., App]) -> tuple[App, Recorder]:
    app = make_app(reconcile_seconds=INTERVAL, lease_seconds=LEASE)
    recorder = Recorder()
    app.add_hook(recorder)
    return app, recorder


async def structures(client: Any, ks: Keyspace) -> dict[str, Any]:
    """What a pass could change: every structure of the queue, read whole."""
    out: dict[str, Any] = {}
    for key in ks.pending:
        out[key] = await client.lrange(key, 0, -1)
    for key in (ks.scheduled, ks.leases, ks.paused, ks.waiting):
        out[key] = await client.zrange(key, 0, -1, withscores=True)
    return out


async def test_each_disagreement_is_repaired_within_two_intervals(
    segue_engine: Engine, make_app: Callable[..., App], queue_name: str
) -> None:
    app, recorder = build(make_app)
    ks = Keyspace("segue", queue_name)
    ran: list[str] = []

    @app.task(name="job")
    async def job(tag: str) -> str:
        ran.append(tag)
        return tag

    @app.task(name="limited", concurrency=1)
    async def limited() -> str:
        return "ran"

    agen = admin(segue_engine)
    client = await agen.__anext__()
    try:
        async with app:
            # records first, parked in the schedule an hour out so no worker takes them yet
            later = job.options(delay=3600)
            tags = ("orphan_run", "unlisted", "unscheduled", "paused", "waiting", "ended", "ended2")
            orphan_run, unlisted, unscheduled, paused, waiting, ended, ended2 = [
                await later.call(tag).enqueue() for tag in tags
            ]
            async with serving(app, concurrency=4) as worker:
                await asyncio.wait_for(worker.ready.wait(), timeout=10)
                assert worker.reconciler is not None
                reconciler = worker.reconciler

                async def cycled() -> bool:
                    return reconciler.cycles >= 1

                # the disagreements appear while the worker serves, between its cycles
                await eventually(cycled, timeout=10)
                started = time.monotonic()
                await client.zrem(
                    ks.scheduled, orphan_run.id, unlisted.id, unscheduled.id, paused.id, waiting.id
                )
                await client.hdel(ks.task(unlisted.id), "due")
                # RUNNING by a worker long gone, with no lease: no claim would ever reap it
                await client.hset(ks.task(orphan_run.id), mapping={"s": "running", "w": "gone"})
                # QUEUED (and SCHEDULED, due now) but in no structure: it would never run
                await client.hset(ks.task(unlisted.id), "s", "queued")
                await client.hset(ks.task(unscheduled.id), mapping={"s": "retrying", "due": 0})
                await client.hset(ks.task(paused.id), "s", "paused")
                await client.hset(ks.task(waiting.id), "s", "waiting")
                await client.hset(ks.task(ended.id), "s", "succeeded")
                await client.hset(ks.task(ended2.id), "s", "succeeded")
                # entries whose record ended or is gone: the stale lease would be run again
                # when it expired, the stale concurrency slot would block `limited` for ever
                await client.zadd(ks.leases, {ended.id: time.time() * 1000 + 60_000})
                await client.zadd(ks.leases, {f"{queue_name}:gone-expired": 0, ended2.id: 0})
                await client.zadd(ks.paused, {f"{queue_name}:gone-p": 1})
                await client.zadd(ks.waiting, {f"{queue_name}:gone-w": 1})
                await client.lpush(ks.pending[1], f"{queue_name}:gone-q")
                await client.sadd(ks.base + "running:limited", ended.id)
                await client.hset(ks.base + "state:" + f"{queue_name}:gone-s", "k", "1")
                await client.set(ks.base + "uniq:job:k", f"{queue_name}:gone-u")
                # an output stream whose task is gone and that has no end marker: its
                # readers would wait for ever, and it would never expire
                await client.xadd(ks.base + f"out:{queue_name}:gone-o", {"n": 1, "c": '["x"]'})

                wanted = {
                    ("running_without_lease", orphan_run.id),
                    ("queued_not_listed", unlisted.id),
                    ("scheduled_not_indexed", unscheduled.id),
                    ("paused_not_indexed", paused.id),
                    ("waiting_not_indexed", waiting.id),
                    ("stale_lease", ended.id),
                    ("stale_paused", f"{queue_name}:gone-p"),
                    ("stale_waiting", f"{queue_name}:gone-w"),
                    ("stale_concurrency", ended.id),
                    ("orphan_state", f"{queue_name}:gone-s"),
                    ("stale_unique", f"{queue_name}:gone-u"),
                    ("stream_without_end", f"{queue_name}:gone-o"),
                }

                async def all_found() -> bool:
                    return wanted <= {(k, i) for _, k, i in recorder.repairs}

                await eventually(all_found, timeout=BOUND + 5)
                found_s = time.monotonic() - started
                # the expired stale lease and the list entry of no record are dropped by
                # whichever comes first, a claim or the reconciler
                assert await client.zscore(ks.leases, f"{queue_name}:gone-expired") is None
                assert f"{queue_name}:gone-q".encode() not in await client.lrange(
                    ks.pending[1], 0, -1
                )
                # what the repairs are for: the lost tasks run, the orphaned run is taken back
                # once the lease the repair gave it expires, and `limited` gets its slot
                assert await unlisted.result(timeout=10) == "unlisted"
                assert await unscheduled.result(timeout=10) == "unscheduled"
                assert await orphan_run.result(timeout=10) == "orphan_run"
                assert await (await limited.call().enqueue()).result(timeout=10) == "ran"
                assert await client.zscore(ks.paused, paused.id) is not None
                assert await client.zscore(ks.waiting, waiting.id) is not None
                assert await ended.status() is TaskStatus.SUCCEEDED
                gone_o = ks.base + f"out:{queue_name}:gone-o"
                assert (await client.xrevrange(gone_o, count=1))[0][1][b"end"] == b"gone"
                assert await client.pttl(gone_o) > 0
                # a claim that reaps the expired lease of an ended task must not run it again
                assert await client.zscore(ks.leases, ended2.id) is None
                assert await ended2.status() is TaskStatus.SUCCEEDED
                assert sorted(ran) == ["orphan_run", "unlisted", "unscheduled"]
                assert {q for q, _, _ in recorder.repairs} == {queue_name}
    finally:
        await agen.aclose()
    assert found_s <= BOUND, f"disagreements found after {found_s:.2f} s (bound {BOUND} s)"


async def test_a_second_pass_changes_nothing(
    segue_engine: Engine, make_app: Callable[..., App], queue_name: str
) -> None:
    app, _ = build(make_app)
    ks = Keyspace("segue", queue_name)

    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    agen = admin(segue_engine)
    client = await agen.__anext__()
    try:
        async with app:
            handles = [await job.options(delay=3600).call(i).enqueue() for i in range(30)]
            await (await app.task_handle(handles[0].id)).pause()
            for h in handles[1:10]:
                await client.zrem(ks.scheduled, h.id)
                await client.hset(ks.task(h.id), "s", "queued")
            await client.zadd(ks.leases, {f"{queue_name}:gone": 1})
            await client.lpush(ks.pending[1], f"{queue_name}:gone", handles[11].id)
            broker = await app._client.broker()
            prometheus = PrometheusHook()
            reconciler = Reconciler(broker, "test", [ks], [prometheus])
            first = await reconciler.run_pass(ks, steps=None)
            assert (
                prometheus.registry.get_sample_value(
                    "segue_reconcile_repairs_total", {"queue": queue_name, "kind": "stale_queued"}
                )
                == 2.0
            )
            kinds = sorted(r.kind for r in first)
            # handles[11] is scheduled, not queued: its list entry is stale as well
            assert kinds == ["queued_not_listed"] * 9 + ["stale_lease"] + ["stale_queued"] * 2
            before = await structures(client, ks)
            again = await reconciler.run_pass(ks, steps=None)
            assert again == []
            assert await structures(client, ks) == before
            assert len(before[ks.pending[1]]) == 9
    finally:
        await agen.aclose()


async def test_rollback_is_detected_once_and_reconciled(
    segue_engine: Engine,
    make_app: Callable[..., App],
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, recorder = build(make_app)
    prometheus = PrometheusHook()
    ks = Keyspace("segue", queue_name)
    agen = admin(segue_engine)
    client = await agen.__anext__()
    try:
        async with app:
            broker = await app._client.broker()
            reconciler = Reconciler(broker, "w1", [ks], [recorder, prometheus])
            other = Reconciler(broker, "w2", [ks], [recorder])
            for _ in range(3):
                assert not await reconciler.check_generation(ks)
                assert not await other.check_generation(ks)
            # the copy restored was taken one cycle back: w1's mark is lower than it wrote
            await client.hset(ks.generation, "w1", f"2 {int(time.time() * 1000)}")
            with caplog.at_level(logging.WARNING, logger="segue.reconcile"):
                assert await reconciler.check_generation(ks)
            assert recorder.rollbacks == [queue_name]
            assert queue_name in caplog.text and "went back in time" in caplog.text
            counted = prometheus.registry.get_sample_value(
                "segue_rollbacks_detected_total", {"queue": queue_name}
            )
            assert counted == 1.0
            # w2's mark came back whole: for it, nothing went back
            assert not await other.check_generation(ks)
            assert not await reconciler.check_generation(ks)
            # the marker gone altogether (an empty server, FLUSHALL): both see it
            await client.delete(ks.generation)
            assert await reconciler.check_generation(ks)
            assert await other.check_generation(ks)
            assert recorder.rollbacks == [queue_name] * 3
            # each detection is an event of the queue, for whoever follows its events
            events = await client.xrange(ks.events)
            assert [f[b"e"] for _, f in events].count(b"queue.rollback") == 3
            # a worker new since the loss remembers nothing, and reports nothing
            assert not await Reconciler(broker, "w3", [ks]).check_generation(ks)
            assert await client.pttl(ks.generation) > 0
    finally:
        await agen.aclose()


async def test_a_rolled_back_queue_is_reconciled_at_once(
    segue_engine: Engine, make_app: Callable[..., App], queue_name: str
) -> None:
    """After a detected rollback the whole queue is checked in the same cycle, however
    small the cycle's budget."""
    app, recorder = build(make_app)
    ks = Keyspace("segue", queue_name)

    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    agen = admin(segue_engine)
    client = await agen.__anext__()
    try:
        async with app:
            broker = await app._client.broker()
            reconciler = Reconciler(broker, "w1", [ks], [recorder])
            await reconciler.cycle()
            h = await job.options(delay=3600).call(1).enqueue()
            await client.zrem(ks.scheduled, h.id)
            await client.hset(ks.task(h.id), "s", "queued")
            await client.delete(ks.generation)
            await asyncio.wait_for(reconciler.cycle(), timeout=10)
            assert recorder.rollbacks == [queue_name]
            assert (queue_name, "queued_not_listed", h.id) in recorder.repairs
    finally:
        await agen.aclose()
