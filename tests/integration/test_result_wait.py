"""`result()` returns as soon as the task's end is announced, whatever the timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from segue import App, TaskStatus

from .conftest import serving


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
        return "done"

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
            assert await h.result(timeout=10) == "done"
            elapsed = time.monotonic() - started
        assert calls >= 2
        assert elapsed < 0.5, f"result() took {elapsed:.2f} s after the end was announced"
