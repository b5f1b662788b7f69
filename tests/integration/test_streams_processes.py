"""Output streams across real worker processes: a worker SIGKILLed mid-stream, and the
retry that streams again; the reader sees where the new run starts, and ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from segue import StreamRestarted
from tests._workers import Fleet
from tests.apps import streams

pytestmark = pytest.mark.slow


async def test_a_killed_worker_s_retry_streams_again_after_a_restart_marker(
    segue_engine: Any, queue_name: str
) -> None:
    app = streams.app  # the test's App knows the worker module's task
    app.settings = app.settings.replace(redis_url=segue_engine.url, queue=queue_name)
    with Fleet("tests.apps.streams:app", segue_engine.url, queue_name, lease=1.0) as fleet:
        first = fleet.start(concurrency=1)
        async with app:
            h = await streams.talk.enqueue(60, 0.01)
            got: list[Any] = []
            stream = h.stream()

            async def read_until(count: int) -> None:
                async for item in stream:
                    got.append(item)
                    if len(got) >= count:
                        return

            await asyncio.wait_for(read_until(10), 30)
            fleet.kill(first)  # mid-stream: its lease lapses, another worker takes over
            fleet.start(concurrency=1)

            async def rest() -> None:
                got.extend([item async for item in stream])

            await asyncio.wait_for(rest(), 30)
            assert await h.result(timeout=10) == 60
    marks = [i for i, item in enumerate(got) if isinstance(item, StreamRestarted)]
    assert len(marks) == 1, got
    before, after = got[: marks[0]], got[marks[0] + 1 :]
    assert before == list(range(len(before))) and len(before) >= 10
    assert after == list(range(60))
    assert got[marks[0]].tries >= 1
