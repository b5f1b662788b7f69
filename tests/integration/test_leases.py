"""Leases and fencing at the script level: what a frozen or dead worker can and cannot do."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from segue import App, TaskFailed, TaskStatus
from segue._broker import Broker
from segue._outcome import Finished, Succeeded
from segue._wire import ClaimedRun
from tests.integration.conftest import eventually, serving


async def claim(
    broker: Broker, queue: str, worker: str, want: int = 1, *, holds_last: bool = False
) -> list[Any]:
    call = broker.claim_call(broker.keyspace(queue), worker, want, holds_last=holds_last)
    reply = await broker.run_calls([call])
    return list(reply[0][3:])


async def poll(
    broker: Broker, queue: str, worker: str, within: float = 5.0, *, holds_last: bool = False
) -> list[Any]:
    """Claim every 50 ms, as an idle worker does, until a task comes (or `within` s pass).
    Polling keeps the queue seen: a lease runs out only while someone could take it over
    (a queue nobody touched for half a lease gives its leases time back, see bridge_gap)."""
    deadline = time.monotonic() + within
    while True:
        got = await claim(broker, queue, worker, holds_last=holds_last)
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def finish(broker: Broker, queue: str, task_id: str, gen: Any, result: bytes) -> int:
    done = Finished(task_id, str(gen), Succeeded(result))
    call = broker.finish_call(broker.keyspace(queue), [done])
    reply = await broker.run_calls([call])
    return int(reply[0][0])


async def test_a_worker_that_lost_its_lease_cannot_complete(
    make_app: Callable[..., App],
) -> None:
    app = make_app(lease_seconds=0.3)

    @app.task(name="job")
    async def job() -> str:
        return "real"

    async with app:
        broker = await app._client.broker()
        q = app.settings.queue
        h = await job.enqueue()
        (first,) = await claim(broker, q, "zombie")
        # the zombie is frozen past its lease while a healthy worker polls the queue
        (second,) = await poll(broker, q, "healthy")
        assert second[0] == first[0] and int(second[4]) == int(first[4]) + 1
        assert await finish(broker, q, h.id, first[4], b'"stale"') == 0  # fenced out
        assert await h.status() is TaskStatus.RUNNING
        assert await finish(broker, q, h.id, second[4], b'"real"') == 1
        assert await h.result() == "real"
        # the same success sent again (its reply lost): a no-op, reported as applied
        assert await finish(broker, q, h.id, second[4], b'"again"') == 3
        assert await finish(broker, q, h.id, first[4], b'"stale"') == 0
        assert await h.result() == "real"


async def test_renewed_leases_are_not_taken_over(make_app: Callable[..., App]) -> None:
    # a 1 s lease renewed every third of it: a loaded machine may stall the renewal thread
    # for a few hundred ms without the lease running out
    app = make_app(lease_seconds=1.0)

    @app.task(name="long")
    async def long() -> str:
        await asyncio.sleep(3.2)  # three leases long: only renewal keeps it
        return "kept"

    async with app:
        h = await long.enqueue()
        thief = make_app(lease_seconds=1.0)
        async with serving(app):
            await eventually(lambda: _is(h, TaskStatus.RUNNING), timeout=5)
            async with thief:
                broker = await thief._client.broker()
                for _ in range(12):
                    assert await claim(broker, app.settings.queue, "thief") == []
                    await asyncio.sleep(0.2)
            assert await h.result(timeout=5) == "kept"
            assert (await h.info()).tries == 1


async def _is(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)


async def test_repeated_lease_expiry_fails_as_worker_lost(make_app: Callable[..., App]) -> None:
    app = make_app(lease_seconds=0.2, max_deliveries=3)

    @app.task(name="poison", max_tries=10)
    async def poison() -> None: ...

    async with app:
        broker = await app._client.broker()
        q = app.settings.queue
        h = await poison.enqueue()
        for n in range(3):
            # each claimer dies (no outcome recorded); the next one polls until it gets it
            assert len(await poll(broker, q, f"crashing-{n}")) == 1
        assert await poll(broker, q, "next", within=0.5) == []
        with pytest.raises(TaskFailed) as caught:
            await h.result(timeout=1)
        assert caught.value.reason == "worker_lost"
        assert "3 times in a row" in caught.value.message


async def test_a_lost_run_spends_a_try_and_the_last_one_runs_alone(
    make_app: Callable[..., App],
) -> None:
    app = make_app(lease_seconds=0.2, max_deliveries=3)

    @app.task(name="fragile", max_tries=2)
    async def fragile() -> None: ...

    async with app:
        broker = await app._client.broker()
        q = app.settings.queue
        h = await fragile.enqueue()
        assert len(await poll(broker, q, "crashing-0")) == 1
        # its lease lapsed once and it has one try left: losing it again ends it, so a worker
        # that already runs such a task does not get it (it may be what kills workers)
        assert await poll(broker, q, "busy", within=0.6, holds_last=True) == []
        (row,) = await poll(broker, q, "crashing-1")
        run = ClaimedRun.parse(row)
        assert (run.tries, run.lost) == (2, 1)
        assert await poll(broker, q, "next", within=0.6) == []
        with pytest.raises(TaskFailed) as caught:
            await h.result(timeout=1)
        assert caught.value.reason == "worker_lost"
        assert "last try (2 of 2)" in caught.value.message
        assert (await h.info()).tries == 2


async def test_lease_keeper_reports_a_stolen_task_and_worker_drops_it(
    make_app: Callable[..., App],
) -> None:
    app = make_app(lease_seconds=0.6)
    gate = asyncio.Event()

    @app.task(name="frozen")
    async def frozen() -> str:
        await gate.wait()
        return "from the old holder"

    async with app:
        h = await frozen.enqueue()
        async with serving(app) as worker:
            await eventually(lambda: _is(h, TaskStatus.RUNNING), timeout=5)
            broker = await app._client.broker()
            # another process takes the task over (as after a partition past the lease)
            await broker.client.hset(broker.keyspace(app.settings.queue).task(h.id), "g", 99)
            await eventually(lambda: _running(worker, 0), timeout=5)
        assert await h.status() is TaskStatus.RUNNING  # the old holder wrote nothing


async def _running(worker: Any, n: int) -> bool:
    return bool(worker.running == n)


async def test_a_task_blocking_the_loop_keeps_its_lease(make_app: Callable[..., App]) -> None:
    app = make_app(lease_seconds=0.6)
    stolen: list[int] = []
    started = threading.Event()

    @app.task(name="hog")
    async def hog() -> str:
        started.set()
        time.sleep(2.0)  # noqa: ASYNC251 -- blocks the loop for three leases: only the thread renews
        return "finished"

    def thief() -> None:
        started.wait(10)

        async def attempts() -> None:
            async with make_app(lease_seconds=0.6) as other:
                broker = await other._client.broker()
                for _ in range(12):
                    stolen.extend(await claim(broker, app.settings.queue, "thief"))
                    await asyncio.sleep(0.15)

        asyncio.run(attempts())

    async with app:
        h = await hog.enqueue()
        other = threading.Thread(target=thief)
        other.start()
        async with serving(app):
            assert await h.result(timeout=10) == "finished"
            await asyncio.to_thread(other.join)
        assert stolen == []
        assert (await h.info()).tries == 1
