"""A task's output stream across a worker SIGKILLed at its fault point
(segue._faults.STREAM_POINTS): killed right after a batch of chunks was stored, the task
is taken over by another worker; the reader sees the first run's chunks, the restart
marker, the new run's chunks, and the end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from segue import StreamRestarted
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import streams
from tests.integration.conftest import eventually

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]


async def test_a_kill_after_a_stream_write_restarts_the_stream_and_ends_it(
    segue_valkey: Engine, queue_name: str, tmp_path: Path
) -> None:
    app = streams.app
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    hits = tmp_path / "hits"
    env = {"SEGUE_FAULTPOINT_ONCE": "1", "SEGUE_FAULTPOINT_LOG": str(hits)}
    try:
        with Fleet(
            "tests.apps.streams:app", segue_valkey.url, queue_name, lease=1.0, env=env
        ) as fleet:
            async with app:
                h = await streams.talk.enqueue(30, 0.005)
                fleet.start(concurrency=1, env={"SEGUE_FAULTPOINT": "after_stream_write:kill"})

                async def killed() -> bool:
                    return hits.exists() and "after_stream_write kill" in hits.read_text()

                await eventually(killed, timeout=15)
                fleet.start(concurrency=1)  # the rescuer, once the lease lapses
                got: list[Any] = await asyncio.wait_for(_read(h), 30)
                assert await h.result(timeout=10) == 30
    finally:
        app.settings = saved
    marks = [i for i, item in enumerate(got) if isinstance(item, StreamRestarted)]
    assert len(marks) == 1, got
    first = got[: marks[0]]
    assert first and first == list(range(len(first)))  # what the killed run had stored
    assert got[marks[0] + 1 :] == list(range(30))


async def _read(h: Any) -> list[Any]:
    return [item async for item in h.stream()]
