"""Bad inputs (RELIABILITY P1, P2, P4, Sec3): malformed records written straight into a
queue, unknown task names, and poison tasks. Each bad task ends FAILED with a reason and in the
dead letters; no worker stops; the good tasks beside them all succeed; nothing is unpickled."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App, TaskStatus
from tests._support import Engine
from tests.faults.conftest import Report, Scale
from tests.integration.conftest import eventually, serving

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable


class _Sentinel:
    """Unpickling this creates a file: the proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (os.mkdir, (self.path,))


def _bad_payloads(marker: Path) -> dict[str, bytes]:
    return {
        "invalid_json": b"{not json",
        "truncated": b'[[1, 2], {"a": ',
        "wrong_types": b'[["seven"], {}]',
        "wrong_shape": b'{"args": [1]}',
        "non_utf8": b'[["\xff\xfe"], {}]',
        "pickle": pickle.dumps(_Sentinel(str(marker))),
    }


async def _finals(app: App, ids: list[str]) -> dict[str, Any]:
    infos = {}
    for task_id in ids:
        infos[task_id] = await (await app.task_handle(task_id)).info()
    return infos


async def test_malformed_records_are_dead_lettered_and_nothing_is_unpickled(
    segue_valkey: Engine,
    queue_name: str,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    app = App("p1", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)

    @app.task(name="p1.add")
    async def add(a: int, b: int = 0) -> int:
        return a + b

    marker = tmp_path / "unpickled"
    payloads = _bad_payloads(marker)
    per_kind = fault_scale.pick(34, 340)
    good_count = fault_scale.pick(2_000, 20_000)
    async with app:
        good = await app.enqueue_many(add.call(i, 1) for i in range(good_count))
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        bad: dict[str, str] = {}
        for kind, payload in payloads.items():
            for i in range(per_kind):
                # a record as enqueue writes it, with the payload field replaced by raw bytes:
                # what a buggy or hostile producer with write access could put there
                _, spec = app._enqueuer.spec(add.call(i))
                spec.payload = payload
                await broker.run_calls([broker.enqueue_call(ks, [spec])])
                bad[spec.id] = kind
        started = time.monotonic()
        # a burst worker: it raises if a malformed record breaks it, and counts what it ran
        finished = await app.drain(concurrency=16)
        assert finished == good_count + len(bad)
        drain_s = time.monotonic() - started
        results = [await h.result() for h in good]
        assert results == [i + 1 for i in range(good_count)]
        infos = await _finals(app, list(bad))
        reasons = Counter(
            (bad[tid], info.status, info.error.reason if info.error else None)
            for tid, info in infos.items()
        )
        expected = Counter({(k, TaskStatus.FAILED, "undecodable"): per_kind for k in payloads})
        assert reasons == expected
        dead = {info.id for info in await app.dead_letters(limit=10_000)}
        assert set(bad) <= dead
        some = next(info for info in infos.values() if info.error)
        assert some.error is not None and "p1.add" in some.error.message
    assert not marker.exists(), "a pickle payload was unpickled"
    fault_report.add(
        good=good_count,
        bad=len(bad),
        dead_lettered=len(set(bad) & dead),
        by_kind=dict(Counter(bad.values())),
        drain_seconds=round(drain_s, 3),
    )


async def test_a_record_missing_its_fields_fails_alone(
    segue_valkey: Engine, queue_name: str
) -> None:
    """A task id in the queue whose record was half written (or deleted) by hand: the worker
    skips it with a reason instead of crashing or looping on it."""
    app = App("p1m", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)

    @app.task(name="p1m.ok")
    async def ok() -> str:
        return "ok"

    admin = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    try:
        async with app:
            ks = (await app._client.broker()).keyspace(queue_name)
            await admin.hset(ks.task(f"{queue_name}:broken"), mapping={"status": "queued"})
            await admin.lpush(ks.pending[1], f"{queue_name}:broken", f"{queue_name}:gone")
            h = await ok.enqueue()
            async with serving(app, concurrency=4):
                assert await h.result(timeout=10) == "ok"
                # neither id is left in the queue to be claimed again forever
                await eventually(lambda: _queue_empty(admin, ks.pending[1]), timeout=10)
    finally:
        await admin.aclose()


async def _queue_empty(admin: Any, key: str) -> bool:
    return int(await admin.llen(key)) == 0


async def test_unknown_names_are_held_then_dead_lettered_never_dropped(
    segue_valkey: Engine, queue_name: str, fault_scale: Scale, fault_report: Report
) -> None:
    producer = App("p2p", redis_url=segue_valkey.url, queue=queue_name)
    worker_app = App(
        "p2w",
        redis_url=segue_valkey.url,
        queue=queue_name,
        poll_seconds=0.1,
        unknown_task_max_releases=2,
    )

    @producer.task(name="nonexistent.fn")
    async def ghost(n: int) -> None: ...

    @producer.task(name="p2.known")
    async def known(n: int) -> int:
        return n

    @worker_app.task(name="p2.known")
    async def known_w(n: int) -> int:
        return n

    count = fault_scale.pick(100, 1_000)
    async with producer, worker_app:
        ghosts = await producer.enqueue_many(ghost.call(i) for i in range(count))
        fine = await producer.enqueue_many(known.call(i) for i in range(count))
        async with serving(worker_app, concurrency=16):
            assert [await h.result(timeout=30) for h in fine] == list(range(count))

            async def all_failed() -> bool:
                statuses = await asyncio.gather(*(h.status() for h in ghosts))
                return all(s is TaskStatus.FAILED for s in statuses)

            await eventually(all_failed, timeout=30, interval=0.2)
        infos = await _finals(worker_app, [h.id for h in ghosts])
        assert {i.error.reason for i in infos.values() if i.error} == {"unknown_task"}
        assert all(i.tries == 0 for i in infos.values())  # a release spends no try
        dead = {i.id for i in await worker_app.dead_letters(limit=10_000)}
        assert {h.id for h in ghosts} <= dead
    fault_report.add(unknown=count, dead_lettered=len(dead), lost=0)


async def test_poison_tasks_use_exactly_their_tries_and_others_are_unaffected(
    segue_valkey: Engine, queue_name: str, fault_scale: Scale, fault_report: Report
) -> None:
    app = App("p4", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    runs: Counter[str] = Counter()

    @app.task(name="p4.raises", max_tries=3, retry_backoff=0.01)
    async def raises(n: int) -> None:
        runs[f"raises:{n}"] += 1
        raise ValueError(f"always fails ({n})")

    @app.task(name="p4.hangs", max_tries=2, retry_backoff=0.01, timeout=0.3)
    async def hangs(n: int) -> None:
        runs[f"hangs:{n}"] += 1
        await asyncio.sleep(3600)

    @app.task(name="p4.fine")
    async def fine(n: int) -> int:
        return n

    poison = fault_scale.pick(50, 500)
    normal = fault_scale.pick(2_000, 20_000)
    async with app:
        bad = await app.enqueue_many(raises.call(i) for i in range(poison))
        hung = await app.enqueue_many(hangs.call(i) for i in range(poison))
        good = await app.enqueue_many(fine.call(i) for i in range(normal))
        started = time.monotonic()
        async with serving(app, concurrency=32):
            assert [await h.result(timeout=60) for h in good] == list(range(normal))
            normal_s = time.monotonic() - started
            await app.drain()
        infos = await _finals(app, [h.id for h in (*bad, *hung)])
        assert all(i.status is TaskStatus.FAILED for i in infos.values())
        assert {runs[f"raises:{i}"] for i in range(poison)} == {3}
        assert {runs[f"hangs:{i}"] for i in range(poison)} == {2}
        reasons = Counter(i.error.type if i.error else None for i in infos.values())
        dead = {i.id for i in await app.dead_letters(limit=10_000)}
        assert set(infos) <= dead
    fault_report.add(
        poison=2 * poison,
        normal=normal,
        normal_drain_seconds=round(normal_s, 3),
        error_types=dict(reasons),
        dead_lettered=len(set(infos) & dead),
    )
