"""Contract tests of durable tasks: state, self-pause, operator pause/resume/cancel, queue
pause. Run on a single server, on the cluster, and on Redis when it is on PATH."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from segue import (
    App,
    Context,
    InvalidTransition,
    LeaseLost,
    Pause,
    PayloadError,
    SyncContext,
    TaskCancelled,
    TaskNotFound,
    TaskStatus,
)
from tests._support import keys_of
from tests.integration.conftest import eventually, serving


async def _status_is(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)


def _history(info: Any) -> list[TaskStatus]:
    return [t.status for t in info.history]


# --- ctx.state ---------------------------------------------------------------------------


async def test_state_round_trips_and_is_deleted_when_the_task_ends(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    seen: dict[str, Any] = {}

    @app.task(name="stateful")
    async def stateful(ctx: Context) -> int:
        assert await ctx.state.get("n", 0) == 0
        await ctx.state.set(n=1, name="a", nested={"k": [1, 2]})
        await ctx.state.set(n=2)
        await ctx.state.delete("name", "missing")
        seen.update(await ctx.state.all())
        seen["keys"] = await keys_of(segue_engine, f"*state:{ctx.task_id}")
        return int(await ctx.state.get("n"))

    async with app:
        h = await stateful.enqueue()
        await app.drain()
        assert await h.result() == 2
        assert seen["n"] == 2 and seen["nested"] == {"k": [1, 2]} and "name" not in seen
        assert len(seen["keys"]) == 1
        assert await keys_of(segue_engine, f"*state:{h.id}") == []


async def test_a_value_that_is_not_json_is_refused_naming_the_key(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="bad_state", max_tries=1)
    async def bad_state(ctx: Context) -> str:
        try:
            await ctx.state.set(good=1, sock=object())
        except PayloadError as exc:
            assert await ctx.state.get("good") is None  # nothing of the call was written
            return str(exc)
        return "accepted"

    async with app:
        h = await bad_state.enqueue()
        await app.drain()
        message = await h.result()
        assert "'sock'" in message and "ctx.state.set" in message


async def test_state_survives_a_retry(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="flaky_state", max_tries=3, retry_backoff=0.0)
    async def flaky_state(ctx: Context) -> list[int]:
        done: list[int] = await ctx.state.get("done", [])
        done.append(ctx.tries)
        await ctx.state.set(done=done)
        if ctx.tries < 3:
            raise RuntimeError("not yet")
        return done

    async with app:
        h = await flaky_state.enqueue()
        await app.drain(horizon=1.0)
        assert await h.result(timeout=5) == [1, 2, 3]


async def test_a_run_that_lost_its_task_cannot_write_state(make_app: Callable[..., App]) -> None:
    app = make_app()
    outcome: list[str] = []
    started = asyncio.Event()
    go_on = asyncio.Event()

    @app.task(name="late_writer")
    async def late_writer(ctx: Context) -> None:
        started.set()
        await go_on.wait()
        try:
            await ctx.state.set(x=1)
            outcome.append("written")
        except LeaseLost:
            outcome.append("refused")
            raise

    async with app:
        h = await late_writer.enqueue()
        async with serving(app) as worker:
            await asyncio.wait_for(started.wait(), 5)
            run = worker._running[h.id].run
            assert run is not None
            run.gen = "stale"  # as if another worker had claimed it since
            go_on.set()
            await eventually(lambda: _running_none(worker))
        assert outcome == ["refused"]


async def _running_none(worker: Any) -> bool:
    return bool(worker.running == 0)


# --- Pause raised by the task ------------------------------------------------------------


async def test_pause_raised_by_the_task_suspends_it_without_spending_a_try(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    runs: list[int] = []

    @app.task(name="files", max_tries=1)
    async def files(ctx: Context, n: int) -> int:
        i: int = await ctx.state.get("i", 0)
        runs.append(i)
        while i < n:
            i += 1
            await ctx.state.set(i=i)
            if i % 5 == 0 and i < n:
                raise Pause()
        return i

    async with app:
        h = await files.enqueue(20)
        await app.drain()
        assert await h.result() == 20
        assert runs == [0, 5, 10, 15]
        info = await h.info()
        assert _history(info).count(TaskStatus.SUSPENDED) == 3
        assert info.tries == 1


async def test_pause_with_a_delay_waits_before_running_again(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    starts: list[float] = []

    @app.task(name="later")
    async def later(ctx: Context) -> str:
        starts.append(time.monotonic())
        if not await ctx.state.get("paused"):
            await ctx.state.set(paused=True)
            raise Pause(delay=0.5)
        return "done"

    async with app:
        h = await later.enqueue()
        async with serving(app):
            await eventually(lambda: _status_is(h, TaskStatus.SUSPENDED), timeout=5)
            assert (await h.info()).due_at is not None
            assert [t.id for t in await app.tasks(TaskStatus.SUSPENDED)] == [h.id]
            assert await h.result(timeout=5) == "done"
        assert len(starts) == 2
        assert starts[1] - starts[0] >= 0.45
        assert (await h.info()).tries == 1


# --- operator pause, resume, cancel ------------------------------------------------------


async def test_operator_pause_stops_at_a_checkpoint_and_resume_continues_from_state(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    processed: list[int] = []

    @app.task(name="steps")
    async def steps(ctx: Context, n: int) -> int:
        i: int = await ctx.state.get("i", 0)
        while i < n:
            processed.append(i)
            i += 1
            await ctx.state.set(i=i)
            await asyncio.sleep(0.02)
            await ctx.checkpoint()
        return i

    async with app:
        h = await steps.enqueue(30)
        async with serving(app):
            await eventually(lambda: _has(processed, 3))
            assert await h.pause(reason="ops: maintenance") is TaskStatus.RUNNING
            assert await h.wait_for(TaskStatus.PAUSED, timeout=2) is TaskStatus.PAUSED
            at_pause = len(processed)
            await asyncio.sleep(0.2)
            assert len(processed) == at_pause  # held, not re-run
            assert [i.id for i in await app.tasks(TaskStatus.PAUSED)] == [h.id]
            assert await h.resume() is TaskStatus.QUEUED
            assert await h.result(timeout=5) == 30
        assert processed == list(range(30))  # each step once: pause fell between steps
        info = await h.info()
        paused = [t for t in info.history if t.status is TaskStatus.PAUSED]
        assert [t.reason for t in paused] == ["ops: maintenance"]
        assert info.tries == 1
        assert await app.tasks(TaskStatus.PAUSED) == []


async def _has(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_a_task_without_checkpoints_is_interrupted_after_the_grace_period(
    make_app: Callable[..., App],
) -> None:
    app = make_app(pause_grace_seconds=0.3)
    started = asyncio.Event()
    interrupted: list[float] = []

    @app.task(name="sleepy")
    async def sleepy() -> str:
        started.set()
        t0 = time.monotonic()
        try:
            await asyncio.sleep(30)
        finally:
            interrupted.append(time.monotonic() - t0)
        return "slept"

    async with app:
        h = await sleepy.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            await h.pause()
            assert await h.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
        assert 0.25 <= interrupted[0] < 2.0


async def test_resume_before_the_pause_was_carried_out_withdraws_it(
    make_app: Callable[..., App],
) -> None:
    app = make_app(pause_grace_seconds=5)
    release = asyncio.Event()
    started = asyncio.Event()
    runs: list[int] = []

    @app.task(name="busy")
    async def busy(ctx: Context) -> str:
        runs.append(ctx.tries)
        started.set()
        await release.wait()
        await ctx.checkpoint()
        return "finished"

    async with app:
        h = await busy.enqueue()
        async with serving(app) as worker:
            await asyncio.wait_for(started.wait(), 5)
            assert await h.pause() is TaskStatus.RUNNING
            run = worker._running[h.id].run
            assert run is not None
            await eventually(lambda: _request_is(run, "pause"))
            assert await h.resume() is TaskStatus.RUNNING
            await eventually(lambda: _request_is(run, None))  # the withdrawal reached it
            release.set()
            assert await h.result(timeout=5) == "finished"
        assert runs == [1]  # not stopped and run again
        assert _history(await h.info()).count(TaskStatus.RUNNING) == 1


async def _request_is(run: Any, request: str | None) -> bool:
    return bool(run.request == request)


async def test_cancel_a_running_task_runs_its_finally_and_removes_its_state(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    started = asyncio.Event()
    cleaned: list[str] = []

    @app.task(name="long")
    async def long(ctx: Context) -> str:
        await ctx.state.set(progress=1)
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(ctx.task_id)
        return "never"

    async with app:
        h = await long.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            assert await h.cancel() is TaskStatus.RUNNING
            assert await h.wait_for(TaskStatus.CANCELLED, timeout=2) is TaskStatus.CANCELLED
            with pytest.raises(TaskCancelled):
                await h.result(timeout=1)
        assert cleaned == [h.id]
        assert await keys_of(segue_engine, f"*state:{h.id}") == []
        assert await h.cancel() is TaskStatus.CANCELLED  # a repeat is a harmless no-op


async def test_a_task_that_swallows_cancellation_still_ends_cancelled(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    started = asyncio.Event()

    @app.task(name="stubborn", max_tries=3)
    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("I refuse") from None
        return "never"

    async with app:
        h = await stubborn.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            await h.cancel()
            assert await h.wait_for(TaskStatus.CANCELLED, timeout=2) is TaskStatus.CANCELLED


async def test_cancel_and_pause_of_tasks_that_are_not_running(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()

    @app.task(name="noop")
    async def noop(x: int) -> int:
        return x

    async with app:
        queued = await noop.enqueue(1)
        scheduled = await noop.options(delay=60).enqueue(2)
        paused = await noop.enqueue(3)
        assert await queued.cancel() is TaskStatus.CANCELLED
        assert await scheduled.pause() is TaskStatus.PAUSED
        assert await scheduled.pause() is TaskStatus.PAUSED  # repeat: same answer
        assert await paused.pause() is TaskStatus.PAUSED
        assert await app.drain() == 0  # nothing runnable: cancelled and paused stay put
        assert await paused.cancel() is TaskStatus.CANCELLED
        assert await keys_of(segue_engine, f"*state:{paused.id}") == []
        assert await scheduled.resume() is TaskStatus.QUEUED
        await app.drain()
        assert await scheduled.result() == 2
        counts = await app.queue().counts()
        assert counts["cancelled"] == 2 and counts["paused"] == 0


async def test_commands_that_do_not_apply_raise_invalid_transition(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="quick")
    async def quick() -> int:
        return 1

    async with app:
        h = await quick.enqueue()
        await app.drain()
        with pytest.raises(InvalidTransition, match=r"cannot pause task .*: it is succeeded"):
            await h.pause()
        with pytest.raises(InvalidTransition, match="cannot resume") as exc:
            await h.resume()
        assert exc.value.status == "succeeded" and exc.value.command == "resume"
        assert await h.cancel() is TaskStatus.SUCCEEDED  # cancelling an ended task: no-op
        queued = await quick.enqueue()
        assert await queued.resume() is TaskStatus.QUEUED  # not paused: nothing to resume
        missing = await app.task_handle(f"{app.settings.queue}:nosuchtask")
        with pytest.raises(TaskNotFound):
            await missing.cancel()


async def test_sync_tasks_obey_pause_and_cancel_at_checkpoints(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    steps: list[int] = []

    @app.task(name="sync_steps")
    def sync_steps(ctx: SyncContext, n: int) -> int:
        i: int = ctx.state.get("i", 0)
        while i < n:
            steps.append(i)
            i += 1
            ctx.state.set(i=i)
            time.sleep(0.01)
            ctx.checkpoint()
        return i

    async with app:
        h = await sync_steps.enqueue(100)
        c = await sync_steps.enqueue(100)
        async with serving(app):
            await eventually(lambda: _has(steps, 6))
            await h.pause()
            await c.cancel()
            assert await h.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
            assert await c.wait_for(TaskStatus.CANCELLED, timeout=3) is TaskStatus.CANCELLED
            await h.resume()
            assert await h.result(timeout=10) == 100


# --- queue pause -------------------------------------------------------------------------


async def test_a_paused_queue_starts_nothing_new_and_running_tasks_go_on(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    release = asyncio.Event()
    started = asyncio.Event()

    @app.task(name="hold")
    async def hold() -> str:
        started.set()
        await release.wait()
        return "held"

    @app.task(name="later_work")
    async def later_work() -> str:
        return "ran"

    async with app:
        first = await hold.enqueue()
        queue = app.queue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            await queue.pause()
            assert await queue.is_paused()
            second = await later_work.enqueue()
            release.set()
            assert await first.result(timeout=5) == "held"
            await asyncio.sleep(0.4)  # two poll periods: a worker would have claimed it
            assert await second.status() is TaskStatus.QUEUED
            await queue.resume()
            assert await second.result(timeout=5) == "ran"
        assert not await queue.is_paused()
        await queue.pause()
        third = await later_work.enqueue()
        assert await app.drain() == 0  # a burst worker does not wait for a paused queue
        assert await third.status() is TaskStatus.QUEUED
