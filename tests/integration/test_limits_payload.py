"""Size and length limits: results over max_result_bytes, and back-pressure from a queue at
max_queue_length (single enqueue, batches, workflows), on a server and on the cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from segue import App, QueueFull, TaskFailed, TaskStatus
from tests._support import keys_of


async def test_a_result_over_max_result_bytes_fails_once_and_the_worker_goes_on(
    make_app: Callable[..., App],
) -> None:
    # results have their own limit: 2,000 characters pass max_result_bytes though they are
    # over max_payload_bytes; 5,000 do not
    app = make_app(max_payload_bytes=1024, max_result_bytes=4096)

    @app.task(name="text", max_tries=3)
    async def text(n: int) -> str:
        return "x" * n

    async with app:
        big = await text.enqueue(5000)
        fits = await text.enqueue(2000)
        after = await text.enqueue(10)
        await app.drain()
        assert await fits.result() == "x" * 2000
        assert await after.result() == "x" * 10
        with pytest.raises(TaskFailed) as caught:
            await big.result()
        info = await big.info()
        dead = [i.id for i in await app.dead_letters()]
    assert caught.value.reason == "result_too_large"
    assert caught.value.message == (
        f"the result of task {big.id} (text) is 5,002 bytes encoded, over the limit of "
        "4,096 bytes (Settings.max_result_bytes); pass a reference (a path, a URL, an id) "
        "instead"
    )
    # another try would return the same value: no retry
    assert info.status is TaskStatus.FAILED and info.tries == 1
    assert dead == [big.id]


async def _snapshot(engine: Any, queue: str) -> list[str]:
    return await keys_of(engine, f"segue:{{{queue}}}:*")


async def test_a_full_queue_refuses_enqueues_whole_and_takes_them_again_once_drained(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app(max_queue_length=3)

    @app.task(name="job")
    async def job(i: int) -> int:
        return i

    @app.task(name="solo", unique=True)
    async def solo() -> None: ...

    async with app:
        # queued and scheduled tasks both count
        keyed = await job.options(key="k1").enqueue(1)
        solo_h = await solo.enqueue()
        await job.options(delay=3600).enqueue(3)
        keys = await _snapshot(segue_engine, queue_name)

        with pytest.raises(QueueFull) as one:
            await job.enqueue(4)
        with pytest.raises(QueueFull) as batch:
            await app.enqueue_many([job.call(5), job.call(6)])
        with pytest.raises(QueueFull) as flow:
            await (job.call(7) | job.call() | job.call()).enqueue()

        # what would create nothing is no new task: the same key, the live unique task
        assert (await job.options(key="k1").enqueue(1)).id == keyed.id
        assert (await solo.enqueue()).id == solo_h.id
        assert await _snapshot(segue_engine, queue_name) == keys
        counts = await app.queue_counts()
        assert counts["queued"] + counts["scheduled"] == 3

        await app.drain()  # runs the two queued tasks; the scheduled one stays
        handles = await app.enqueue_many([job.call(8), job.call(9)])
        with pytest.raises(QueueFull):
            await job.enqueue(11)
        await app.drain()
        assert [await h.result() for h in handles] == [8, 9]
        chain = await (job.call(12) | job.call()).enqueue()
        await app.drain()
        assert await chain.result(timeout=10) == 12

    assert one.value.queue == queue_name
    assert (one.value.length, one.value.limit) == (3, 3)
    assert str(one.value) == (
        f"queue {queue_name!r} is full: it holds 3 tasks waiting to run and the limit is 3 "
        "(Settings.max_queue_length), so a task could not be added and nothing was written; "
        "enqueue again once workers have taken some"
    )
    assert "so 2 tasks could not be added" in str(batch.value)
    assert "so 3 tasks could not be added" in str(flow.value)
