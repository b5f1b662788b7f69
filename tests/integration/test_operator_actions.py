"""The operator's actions from code and the command line: delete an ended task, retry or
delete dead letters in bulk, pause and resume a cron schedule (its ticks are skipped)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from segue import App, Context, Fail, InvalidTransition, TaskNotFound, TaskStatus
from tests.integration.conftest import serving
from tests.integration.test_cli_workflow import _segue


async def test_an_ended_task_is_deleted_and_a_live_one_is_refused(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="ops.job", max_tries=1)
    async def job(n: int) -> int:
        if n < 0:
            raise Fail("negative")
        return n

    async with app:
        done, dead = await job.enqueue(1), await job.enqueue(-1)
        await app.drain()
        waiting = await job.enqueue(2)
        assert await app.dead_letters() != []
        assert await done.delete() is True
        with pytest.raises(TaskNotFound):
            await done.status()
        assert await done.delete() is False  # a repeat is harmless
        assert (await app.queue_counts())["succeeded"] == 0
        assert await (await app.task_handle(dead.id)).delete() is True
        assert await app.dead_letters() == []
        with pytest.raises(InvalidTransition, match="cancel it first"):
            await waiting.delete()
        assert await waiting.status() is TaskStatus.QUEUED


async def test_dead_letters_are_retried_or_deleted_all_at_once_or_by_selection(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    fail = {"on": True}

    @app.task(name="ops.flaky", max_tries=1)
    async def flaky(n: int) -> int:
        if fail["on"]:
            raise Fail(f"no {n}")
        return n

    async with app:
        handles = [await flaky.enqueue(n) for n in range(6)]
        await app.drain()
        queue = app.queue()
        assert len(await app.dead_letters()) == 6
        # a selection: two of them, one named twice, and an id that is not there
        picked = [handles[0].id, handles[1].id, handles[1].id, f"{queue.name}:nope"]
        fail["on"] = False
        assert await queue.retry_dead(picked) == 2
        assert await queue.delete_dead([handles[2].id]) == 1
        await app.drain()
        assert [await h.result() for h in handles[:2]] == [0, 1]
        with pytest.raises(TaskNotFound):
            await handles[2].status()
        left = {i.id for i in await app.dead_letters()}
        assert left == {h.id for h in handles[3:]}
        assert await queue.delete_dead() == 3
        assert await app.dead_letters() == []
        # all of them at once, the other way
        fail["on"] = True
        again = [await flaky.enqueue(n) for n in range(10, 13)]
        await app.drain()
        fail["on"] = False
        assert await queue.retry_dead() == 3
        await app.drain()
        assert [await h.result() for h in again] == [10, 11, 12]


async def test_a_paused_schedule_skips_its_ticks_until_resumed(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    runs: list[str] = []

    @app.task(name="ops.tick")
    async def tick(ctx: Context) -> None:
        runs.append(ctx.task_id)

    async with app, serving(app):
        sid = await app.schedule(tick.call(), cron="* * * * * *", id=f"{queue_name}-every-s")
        handle = app.schedule(sid)
        try:
            deadline = time.monotonic() + 10
            while not runs:
                assert time.monotonic() < deadline, "the schedule did not fire"
                await asyncio.sleep(0.05)
            await handle.pause()
            await handle.pause()  # a repeat changes nothing
            await asyncio.sleep(1.2)  # a tick fired before the pause may still be running
            fired = len(runs)
            await asyncio.sleep(2.2)  # at least two ticks come due
            assert len(runs) == fired, "a paused schedule fired"
            info = await handle.info()
            assert info.paused and info.last_skipped is not None
            assert info.next_run is not None
            assert info.last_task_id is not None and info.last_task_id in runs
            await handle.resume()
            deadline = time.monotonic() + 10
            while len(runs) == fired:
                assert time.monotonic() < deadline, "a resumed schedule did not fire"
                await asyncio.sleep(0.05)
            assert not (await handle.info()).paused
            # a removed schedule stored again under its id starts active
            await handle.pause()
            assert await app.unschedule(sid)
            await app.schedule(tick.call(), cron="0 3 * * *", id=sid)
            assert not (await handle.info()).paused
        finally:
            await app.unschedule(sid)
        with pytest.raises(TaskNotFound, match="no schedule"):
            await app.schedule("no-such-schedule").pause()


async def test_delete_and_schedule_commands(segue_valkey: Any, queue_name: str) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="ops.cli")
    async def job() -> int:
        return 1

    url = segue_valkey.url
    async with app:
        done = await job.enqueue()
        await app.drain()
        waiting = await job.enqueue()
        sid = await app.schedule(job.call(), cron="0 3 * * *", id=f"{queue_name}-nightly")
        try:
            deleted = _segue("delete", done.id, "--url", url)
            assert deleted.returncode == 0, deleted.stderr
            assert deleted.stdout.strip() == f"task {done.id}: deleted"
            again = _segue("delete", done.id, "--url", url)
            assert again.returncode == 1 and f"no task {done.id}" in again.stderr
            refused = _segue("delete", waiting.id, "--url", url)
            assert refused.returncode == 1 and "it is queued" in refused.stderr

            paused = _segue("schedule", "pause", sid, "--url", url)
            assert paused.returncode == 0, paused.stderr
            assert (await app.schedule(sid).info()).paused
            listed = _segue("schedules", "--url", url)
            assert "paused" in next(r for r in listed.stdout.splitlines() if r.startswith(sid))
            resumed = _segue("schedule", "resume", sid, "--url", url)
            assert resumed.returncode == 0, resumed.stderr
            assert not (await app.schedule(sid).info()).paused
            missing = _segue("schedule", "pause", "nope", "--url", url)
            assert missing.returncode == 1 and "no schedule 'nope'" in missing.stderr

            # when a scheduled task will run, in the list and in its record
            later = await job.options(delay=3600).enqueue()
            due = (await later.info()).due_at
            assert due is not None
            when = f"{due:%Y-%m-%d %H:%M:%S}"
            listed = _segue("tasks", "-s", "scheduled", "-q", queue_name, "--url", url)
            header, row = listed.stdout.splitlines()[1:3]
            assert header.split("\t")[-1] == "due (UTC)"
            assert row.split("\t")[0] == later.id and row.split("\t")[-1] == when
            assert f"due {when} UTC" in _segue("info", later.id, "--url", url).stdout
        finally:
            await app.unschedule(sid)
