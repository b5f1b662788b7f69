"""Real worker processes: SIGKILL recovery, SIGTERM requeue, two workers sharing a queue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio

from segue import App, TaskStatus
from tests._workers import Fleet
from tests.apps import procs
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(segue_valkey: Any, queue_name: str) -> Iterator[Fleet]:
    """`segue worker tests.apps.procs:app` subprocesses; stops only its own."""
    with Fleet(
        "tests.apps.procs:app",
        segue_valkey.url,
        queue_name,
        lease=1.5,
        env={"LEDGER_URL": segue_valkey.admin_url},
    ) as fleet:
        yield fleet


@pytest.fixture
def client_app(segue_valkey: Any, queue_name: str) -> App:
    # the test's own App knows the tasks of the worker module (same names and types)
    procs.app.settings = procs.app.settings.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2
    )
    return procs.app


async def ledger(admin_url: str, queue: str) -> list[list[str]]:
    client = redis.asyncio.Redis.from_url(admin_url)
    try:
        rows = await client.lrange(f"segue:ledger:{queue}", 0, -1)
    finally:
        await client.aclose()
    return [(r.decode() if isinstance(r, bytes) else r).split() for r in rows]


async def test_sigkilled_worker_task_is_finished_by_another(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    first = workers.start()
    async with client_app:
        h = await procs.nap.enqueue(1.0)

        async def started() -> bool:
            return len(await ledger(segue_valkey.admin_url, queue_name)) == 1

        await eventually(started, timeout=10)
        workers.kill(first)
        assert await h.status() is TaskStatus.RUNNING  # nobody knows yet: the lease runs on
        workers.start()
        assert await h.result(timeout=20) == "napped 1.0"
        rows = await ledger(segue_valkey.admin_url, queue_name)
        assert [r[0] for r in rows] == [h.id, h.id]
        assert rows[0][1] != rows[1][1]  # run again by the second worker
        assert [r[2] for r in rows] == ["1", "2"]  # the lost run counted as a try
        assert [t.reason for t in (await h.info()).history if t.status is TaskStatus.QUEUED][
            -1
        ] == "lease expired"


async def test_sigterm_requeues_unfinished_tasks(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    first = workers.start()
    async with client_app:
        quick = await procs.nap.enqueue(0.01)
        long = await procs.nap.enqueue(30.0)
        assert await quick.result(timeout=10) == "napped 0.01"

        async def both_started() -> bool:
            return len(await ledger(segue_valkey.admin_url, queue_name)) == 2

        await eventually(both_started, timeout=10)
        workers.terminate(first)
        assert workers.wait_exit(first, timeout=10) == 0
        info = await long.info()
        assert info.status is TaskStatus.QUEUED  # requeued at once, not after the lease
        assert info.tries == 0  # the interrupted run does not spend a try
        assert info.history[-1].reason == "worker shutdown"


async def test_two_workers_drain_5000_tasks_each_once(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    async with client_app:
        handles = await client_app.enqueue_many([procs.count.call(i) for i in range(5000)])
        workers.start(concurrency=16)
        workers.start(concurrency=16)

        async def all_done() -> bool:
            counts = await client_app.queue_counts()
            return counts["succeeded"] == 5000

        await eventually(all_done, timeout=60, interval=0.2)
        rows = await ledger(segue_valkey.admin_url, queue_name)
        runs = Counter(r[0] for r in rows)
        assert len(runs) == 5000 and set(runs.values()) == {1}
        assert len({r[1] for r in rows}) == 2  # both workers took part
        assert await handles[4999].result() == 4999
