"""Real worker processes: SIGKILL recovery, SIGTERM requeue, two workers sharing a queue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._support import ledger
from tests._workers import Fleet, Slot
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


async def _until_ended(workers: Fleet, handle: Any, most_workers: int) -> None:
    """Starts one worker after another (each may die under the task) until the task ends."""
    for _ in range(most_workers):
        slot = workers.start()

        async def over(slot: Slot = slot) -> bool:
            return not slot.alive() or (await handle.status()).is_final

        await eventually(over, timeout=20)
        if (await handle.status()).is_final:
            return
    raise AssertionError(f"task {handle.id} did not end under {most_workers} workers")


async def test_a_run_lost_with_its_worker_spends_the_last_try(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    workers.env["SEGUE_LEASE_SECONDS"] = "1.0"
    async with client_app:
        h = await procs.die.options(max_tries=1).enqueue()
        await _until_ended(workers, h, most_workers=3)
        with pytest.raises(TaskFailed) as caught:
            await h.result(timeout=1)
        assert caught.value.reason == "worker_lost"
        assert "last try (1 of 1)" in caught.value.message
        rows = await ledger(segue_valkey.admin_url, queue_name)
        assert [r[2] for r in rows] == ["1"]  # one run, never a second
        assert (await h.info()).tries == 1
        assert h.id in [d.id for d in await client_app.dead_letters(queue_name)]


async def test_tries_to_spare_end_at_max_deliveries_lost_runs(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    workers.env["SEGUE_LEASE_SECONDS"] = "1.0"
    async with client_app:
        h = await procs.die.options(max_tries=5).enqueue()  # max_deliveries is 3
        await _until_ended(workers, h, most_workers=5)
        with pytest.raises(TaskFailed) as caught:
            await h.result(timeout=1)
        assert caught.value.reason == "worker_lost"
        assert "3 times in a row" in caught.value.message
        rows = await ledger(segue_valkey.admin_url, queue_name)
        assert [r[2] for r in rows] == ["1", "2", "3"]
