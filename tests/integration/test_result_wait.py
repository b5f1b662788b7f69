"""`result()` returns as soon as the task's end is announced, whatever the timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from segue import App, TaskStatus
from tests._support import admin_client

from .conftest import eventually, serving


async def test_an_end_announced_while_the_record_is_read_is_not_missed(
    make_app: Callable[..., App],
) -> None:
    # the first read of the record is answered with the task still running, and the end's
    # announcement lands during that read: result() must read again at once, not wait for
    # its one-second recheck (sequential enqueue->result latency had a 1 s tail from this)
    app = make_app()
    release = asyncio.Event()

    @app.task(name="gated")
    async def gated() -> str:
        await release.wait()
        return "done" * 2000  # past what an ended message carries: the record is read

    async with app:
        broker = await app._client.broker()
        h = await gated.enqueue()
        read = broker.reads.task_record
        calls = 0

        async def stale_first_read(ks: Any, task_id: str) -> dict[bytes, bytes]:
            nonlocal calls
            calls += 1
            rec = await read(ks, task_id)
            if calls == 1:
                release.set()
                await h.wait_for(timeout=10)  # ended and announced while this read "ran"
                await asyncio.sleep(0.05)  # let the announcement reach the waiter
            return rec

        broker.reads.task_record = stale_first_read  # type: ignore[method-assign]
        async with serving(app):
            await h.wait_for(TaskStatus.RUNNING, timeout=10)
            started = time.monotonic()
            assert await h.result(timeout=10) == "done" * 2000
            elapsed = time.monotonic() - started
        assert calls >= 2
        assert elapsed < 0.5, f"result() took {elapsed:.2f} s after the end was announced"


class _Reads:
    """Counts the task-record reads of an App's result() calls (the real reads, counted)."""

    def __init__(self, app: App) -> None:
        self.count = 0
        self._app = app

    async def install(self) -> None:
        reads = (await self._app._client.broker()).reads
        read = reads.task_record

        async def counted(ks: Any, task_id: str) -> dict[bytes, bytes]:
            self.count += 1
            return await read(ks, task_id)

        reads.task_record = counted  # type: ignore[method-assign]


async def test_a_small_result_comes_with_the_end_and_no_record_is_read(
    make_app: Callable[..., App],
) -> None:
    # result() right after an enqueue, once this process listens to the queue's ended
    # messages: the message carries the result, decoded to the declared type
    app = make_app()

    @app.task(name="pair")
    async def pair(x: int) -> tuple[int, str]:
        return x, "x" * 100

    async with app, serving(app):
        assert await (await pair.enqueue(0)).result(timeout=10) == (0, "x" * 100)  # listens
        reads = _Reads(app)
        await reads.install()
        for i in range(1, 20):
            assert await (await pair.enqueue(i)).result(timeout=10) == (i, "x" * 100)
        assert reads.count == 0


async def test_an_end_announced_before_result_is_called_is_not_waited_for(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="echo")
    async def echo(x: str) -> str:
        return x

    async with app, serving(app):
        await (await echo.enqueue("warm")).result(timeout=10)
        h = await echo.enqueue("early")
        await h.wait_for(TaskStatus.SUCCEEDED, timeout=10)
        reads = _Reads(app)
        await reads.install()
        started = time.monotonic()
        assert await h.result(timeout=10) == "early"
        assert time.monotonic() - started < 0.5
        assert reads.count == 0


async def test_large_results_and_failures_are_read_from_the_record(
    make_app: Callable[..., App],
) -> None:
    from segue import Fail, TaskFailed

    app = make_app()

    @app.task(name="big")
    async def big(n: int) -> str:
        if n < 0:
            raise Fail("negative")
        return "y" * n

    async with app, serving(app):
        await (await big.enqueue(1)).result(timeout=10)
        reads = _Reads(app)
        await reads.install()
        # a result of 4,096 bytes (its JSON text) comes with the end, one byte more is read
        assert await (await big.enqueue(4094)).result(timeout=10) == "y" * 4094
        assert reads.count == 0
        assert await (await big.enqueue(4095)).result(timeout=10) == "y" * 4095
        assert reads.count >= 1
        failing = await big.enqueue(-1)
        try:
            await failing.result(timeout=10)
        except TaskFailed as exc:
            assert "negative" in str(exc)
        else:
            raise AssertionError("a failed task's result() must raise TaskFailed")


async def test_the_previous_release_channel_still_announces_each_end(
    make_app: Callable[..., App],
) -> None:
    # waiters of the previous release listen on the ended channel for bare ids
    app = make_app()

    @app.task(name="one")
    async def one() -> int:
        return 1

    async with app, serving(app):
        broker = await app._client.broker()
        ks = broker.keyspace(app.settings.queue)
        heard: list[bytes] = []
        old = broker.subscriber()
        await old.subscribe(ks.done_channel, heard.append)
        try:
            h = await one.enqueue()
            assert await h.result(timeout=10) == 1

            async def announced() -> bool:
                return h.id.encode() in heard

            await eventually(announced)
            assert heard == [h.id.encode()]
        finally:
            await old.close()


async def test_a_lost_connection_makes_waiters_read_the_record(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    # an end announced while the listening connection was down never arrives: result() of
    # a task enqueued before the loss must read the record, not wait for its 1 s recheck
    app = make_app()
    release = asyncio.Event()

    @app.task(name="gated")
    async def gated() -> str:
        await release.wait()
        return "done"

    async with app, serving(app):
        release.set()
        await (await gated.enqueue()).result(timeout=10)  # listening from here on
        release.clear()
        h = await gated.enqueue()
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        broker = await app._client.broker()
        waiters = broker._ended
        assert waiters is not None
        generation = waiters._subscriber.generation
        admin = admin_client(segue_engine)
        try:
            if segue_engine.kind == "cluster":
                await admin.execute_command(
                    "CLIENT", "KILL", "TYPE", "pubsub", target_nodes=admin.ALL_NODES
                )
            else:
                await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            await admin.aclose()

        async def noticed() -> bool:
            return waiters._subscriber.generation > generation

        await eventually(noticed)
        release.set()
        await h.wait_for(TaskStatus.SUCCEEDED, timeout=10)
        started = time.monotonic()
        assert await h.result(timeout=10) == "done"
        assert time.monotonic() - started < 0.5
