"""Cron options (issue 21): `unique=True` skips a tick whose previous run is still going and
records it; `expire=` ends a late tick EXPIRED. On a single server and the cluster, for a
dynamic schedule and a declared one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from segue import App, TaskNotFound, TaskStatus
from segue._events import Event, parse_event
from segue._scheduler import tick_id
from tests.e2e.conftest import dashboard
from tests.integration.conftest import eventually, serving


async def skipped_events(app: App, queue: str) -> list[Event]:
    """The queue's cron.skipped events, oldest first (read at once, not followed)."""
    reads = await app._client.reads()
    entries = await reads.recent_events(reads.keyspace(queue), 1000)
    found = [parse_event(queue, eid, fields) for eid, fields in reversed(entries)]
    return [e for e in found if e.kind == "cron.skipped"]


@pytest.mark.serial
async def test_a_unique_schedule_skips_the_ticks_its_long_run_overlaps(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app(shutdown_grace_seconds=0.2)
    starts: list[float] = []
    ends: list[float] = []

    @app.task(name="cron.long")
    async def long() -> None:
        starts.append(time.time())
        await asyncio.sleep(2.5)  # two and a half ticks
        ends.append(time.time())

    async with app:
        sid = await app.schedule(long.call(), cron="* * * * * *", id=f"{queue_name}-u", unique=True)
        try:
            info = {i.id: i for i in await app.schedules()}[sid]
            assert info.unique and info.expire is None and info.last_overlapped is None
            async with serving(app):
                await eventually(lambda: _ran(starts, 2), timeout=10)
            infos = {i.id: i for i in await app.schedules()}
            events = await skipped_events(app, queue_name)
            async with dashboard(app, auth=None) as client:
                page = (await client.get("/schedules")).text
            assert "previous run still going" in page and "unique" in page
            assert len(events) >= 2
            first_run = await (await app.task_handle(events[0].data["running"])).status()
        finally:
            await app.unschedule(sid)
    # never two runs at once, and the ticks between them were skipped, not queued behind
    assert starts[1] >= ends[0] - 0.05, (starts, ends)
    assert 2.5 <= starts[1] - starts[0] < 4.5, starts
    first = events[0].data["running"]
    for event in events[:2]:
        assert event.task_name == "cron.long"
        assert event.data["schedule"] == sid and event.data["running"] == first
        assert event.task_id == tick_id(queue_name, sid, event.data["tick"])
    ticks = [e.data["tick"] for e in events]
    assert ticks == sorted(set(ticks))  # each skipped tick reported once
    assert infos[sid].last_overlapped is not None
    assert first_run is TaskStatus.SUCCEEDED


def _ran(runs: list[Any], n: int) -> Any:
    async def check() -> bool:
        return len(runs) >= n

    return check()


async def test_expire_ends_a_tick_that_could_not_start_in_time_expired(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()

    @app.cron("* * * * * *", name=f"{queue_name}.late", expire=0.3)
    async def late() -> None:
        pass

    async with app:
        # the schedule is registered by a worker; then every worker is away for over a tick
        async with serving(app) as worker:
            await eventually(lambda: _has_schedule(app, late.name), timeout=5)
            worker.stop()
        info = {i.id: i for i in await app.schedules()}[late.name]
        assert info.expire == 0.3 and not info.unique
        due = info.next_run
        assert due is not None
        await asyncio.sleep(max(0.0, due.timestamp() - time.time()) + 0.6)
        try:
            async with serving(app):
                missed = tick_id(queue_name, late.name, round(due.timestamp() * 1000))
                handle = await app.task_handle(missed)
                await eventually(lambda: _final(handle), timeout=5)
                assert await handle.status() is TaskStatus.EXPIRED
                # the ticks after it fire on time and run
                await eventually(lambda: _any_succeeded(app, queue_name), timeout=5)
        finally:
            await app.unschedule(late.name)


async def _has_schedule(app: App, sid: str) -> bool:
    return any(i.id == sid for i in await app.schedules())


async def _final(handle: Any) -> bool:
    try:
        status = await handle.status()
    except TaskNotFound:  # not fired yet
        return False
    return bool(status.is_final)


async def _any_succeeded(app: App, queue: str) -> bool:
    return bool(await app.tasks(TaskStatus.SUCCEEDED, queue=queue))
