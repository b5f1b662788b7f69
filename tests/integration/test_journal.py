"""Durable functions in one process: the step journal (ctx.step) and durable sleep
(ctx.sleep), on a single server and on the cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from segue import (
    App,
    Context,
    Pause,
    Retry,
    StepFailed,
    SyncContext,
    TaskNotFound,
    TaskStatus,
)
from tests._support import admin_client, keys_of
from tests.integration.conftest import eventually, serving


async def test_a_journaled_step_runs_once_and_replays_as_the_same_type(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    calls: list[str] = []
    seen: list[Any] = []

    async def reserve(order: str) -> datetime:
        calls.append("reserve")
        return datetime(2026, 1, 2, tzinfo=UTC)

    def charge(order: str, amount: int) -> dict[str, int]:
        calls.append("charge")
        return {"charged": amount}

    @app.task(name="order")
    async def order(ctx: Context, order_id: str) -> int:
        at = await ctx.step("reserve", reserve, order_id)
        seen.append(at)  # a datetime on the first run too, not the JSON text
        if await ctx.state.get("paused") is None:
            await ctx.state.set(paused=True)
            raise Pause()
        paid = await ctx.step("charge", charge, order_id, amount=5)
        return int(paid["charged"])

    async with app:
        h = await order.enqueue("o-1")
        await app.drain()
        assert await h.result() == 5
        assert calls == ["reserve", "charge"]
        assert seen == [datetime(2026, 1, 2, tzinfo=UTC)] * 2
        info = await h.info()
        assert [(s.name, s.ok) for s in info.steps] == [("reserve", True), ("charge", True)]
        assert all(s.duration >= 0 and s.started_at.year >= 2026 for s in info.steps)
        assert await keys_of(segue_engine, f"*state:{h.id}") == []  # the journal went with it


async def test_a_failed_step_is_step_failed_on_replay_and_runs_again_on_the_next_try(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    calls: list[int] = []
    caught: list[tuple[str, str]] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("card declined")
        return "ok"

    @app.task(name="payer", max_tries=2, retry_backoff=0.05)
    async def payer(ctx: Context) -> str:
        try:
            return str(await ctx.step("pay", flaky))
        except StepFailed as exc:
            caught.append((exc.type, exc.message))
            if await ctx.state.get("replayed") is None:
                await ctx.state.set(replayed=True)
                raise Pause() from None  # the same try: the failure is replayed
            raise Retry() from None

    async with app:
        h = await payer.enqueue()
        await app.drain()
        assert await h.result() == "ok"
        assert caught == [("ValueError", "card declined")] * 2
        assert len(calls) == 2  # once failing, replayed without a call, then the retry
        info = await h.info()
        assert [(s.name, s.ok, s.error_type) for s in info.steps] == [
            ("pay", False, "ValueError"),
            ("pay", True, None),
        ]


async def test_duplicate_names_and_steps_inside_steps_are_refused(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    errors: list[str] = []

    @app.task(name="dup")
    async def dup(ctx: Context) -> None:
        await ctx.step("a", lambda: 1)
        try:
            await ctx.step("a", lambda: 2)
        except ValueError as exc:
            errors.append(str(exc))

        async def nested() -> None:
            await ctx.sleep(1)

        try:
            await ctx.step("outer", nested)
        except StepFailed as exc:
            errors.append(exc.message)

    async with app:
        h = await dup.enqueue()
        await app.drain()
        await h.result()
    assert "step name 'a' is used twice" in errors[0]
    assert "inside the function of step 'outer'" in errors[1]


async def test_a_sync_task_journals_steps_and_sleeps(make_app: Callable[..., App]) -> None:
    app = make_app(sleep_inline_seconds=0.5)
    calls: list[str] = []

    def count(name: str, value: int) -> int:
        calls.append(name)
        return value

    @app.task(name="sync_steps")
    def sync_steps(ctx: SyncContext) -> int:
        a = ctx.step("one", count, "one", 1)
        ctx.sleep(0.6)  # past the inline threshold: the run ends, the task is due later
        return int(a) + int(ctx.step("two", count, "two", 2))

    async with app:
        h = await sync_steps.enqueue()
        await app.drain(horizon=2)
        assert await h.result() == 3
        assert calls == ["one", "two"]
        info = await h.info()
        assert [t.reason for t in info.history if t.status is TaskStatus.SUSPENDED] == ["sleeping"]
        assert info.tries == 1


async def test_a_durable_sleep_frees_the_worker_and_resumes_when_due(
    make_app: Callable[..., App],
) -> None:
    app = make_app(sleep_inline_seconds=0.2)
    woke: list[float] = []
    progress: list[str] = []

    @app.task(name="sleeper")
    async def sleeper(ctx: Context) -> float:
        await ctx.step("before", lambda: progress.append("before"))
        await ctx.sleep(1.0)
        woke.append(time.time())
        return 1.0

    @app.task(name="other")
    async def other() -> str:
        return "ran"

    async with app, serving(app, concurrency=1):
        started = time.time()
        h = await sleeper.enqueue()
        await eventually(lambda: _status(h, TaskStatus.SUSPENDED), timeout=5)
        # the one slot is free while it sleeps
        assert await (await other.enqueue()).result(timeout=5) == "ran"
        assert await h.result(timeout=10) == 1.0
        assert woke[0] - started >= 1.0
        assert progress == ["before"]
        assert (await h.info()).tries == 1


async def test_a_local_run_runs_steps_inline_and_does_not_wait_for_sleeps() -> None:
    app = App("local-journal")
    calls: list[str] = []

    @app.task(name="remind")
    async def remind(ctx: Context) -> str:
        await ctx.step("reserve", lambda: calls.append("reserve"))
        await ctx.sleep(timedelta(days=3))
        await ctx.sleep_until(datetime.now(UTC) + timedelta(days=1))
        return "reminded"

    started = time.monotonic()
    assert await remind.run() == "reminded"
    assert time.monotonic() - started < 1
    assert calls == ["reserve"]


async def test_bad_sleep_durations_are_refused(make_app: Callable[..., App]) -> None:
    app = App("local-journal-bad")

    @app.task(name="bad")
    async def bad(ctx: Context) -> None:
        await ctx.sleep(-1)

    with pytest.raises(ValueError, match=r"ctx.sleep\(-1\): the duration must be"):
        await bad.run()


async def _status(h: Any, status: TaskStatus) -> bool:
    return bool(await h.status() is status)


async def test_drain_advance_runs_a_three_day_sleep_at_once(make_app: Callable[..., App]) -> None:
    app = make_app()
    sent: list[str] = []

    @app.task(name="reminder")
    async def reminder(ctx: Context, to: str) -> str:
        await ctx.sleep(timedelta(days=3))
        await ctx.step("remind", lambda: sent.append(to))
        return "sent"

    async with app:
        h = await reminder.enqueue("ann")
        await app.drain()  # without skipping time, it sleeps
        assert await h.status() is TaskStatus.SUSPENDED and sent == []
        started = time.monotonic()
        await app.drain(advance=timedelta(days=3, minutes=1))
        assert await h.result() == "sent"
        assert time.monotonic() - started < 5
        assert sent == ["ann"]


async def test_purge_spares_sleeping_tasks_unless_asked_and_pause_resume_keeps_the_due(
    make_app: Callable[..., App],
) -> None:
    app = make_app(sleep_inline_seconds=0.1)

    @app.task(name="nap")
    async def nap(ctx: Context, seconds: float) -> str:
        await ctx.sleep(seconds)
        return "up"

    @app.task(name="idle")
    async def idle() -> None:
        return None

    async with app:
        sleeper = await nap.enqueue(3600.0)
        await app.drain()
        waiting = await idle.options(delay=3600).enqueue()
        assert await app.queue(app.settings.queue).purge() == 1  # only the delayed one
        assert await waiting.status() is TaskStatus.CANCELLED
        assert await sleeper.status() is TaskStatus.SUSPENDED
        due = (await sleeper.info()).due_at
        await sleeper.pause()
        await sleeper.resume()
        await app.drain()  # the resumed run replays its sleep: the rest of it, not a new one
        info = await sleeper.info()
        assert info.status is TaskStatus.SUSPENDED and info.due_at is not None and due
        assert abs((info.due_at - due).total_seconds()) < 1
        assert await app.queue(app.settings.queue).purge(include_sleeping=True) == 1
        assert await sleeper.status() is TaskStatus.CANCELLED


async def test_a_replay_does_not_move_progress_back_and_old_readers_see_json(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    raw: dict[bytes, bytes] = {}

    @app.task(name="steady")
    async def steady(ctx: Context) -> None:
        for i in range(3):
            await ctx.step(f"part-{i}", lambda i=i: i)
            await ctx.progress(i + 1, 3)
        if await ctx.state.get("again") is None:
            await ctx.state.set(again=True)
            client = admin_client(segue_engine)
            try:
                raw.update(await client.hgetall(f"segue:{{{ctx.queue}}}:state:{ctx.task_id}"))
            finally:
                await client.aclose()
            raise Pause()
        # the replay passed parts 0-2 without reporting 1/3 and 2/3 again
        await ctx.step("last", lambda: None)

    async with app:
        h = await steady.enqueue()
        await app.drain()
        await h.result()
        progress = [e.data for e in await h.events() if e.kind == "task.progress"]
    # 1/3 and 2/3 are not reported again by the replay (it was before its last journaled
    # entry then); past it, 3/3 is the run's own again: progress never went back
    assert [p["done"] for p in progress] == [1, 2, 3, 3]
    # a worker of the release before the journal reads every state field as JSON
    # (ctx.state.all()): the journal's entries are JSON objects it can read
    assert {k.decode() for k in raw} == {"again", "~j:part-0", "~j:part-1", "~j:part-2"}
    assert all(isinstance(json.loads(v), dict) for k, v in raw.items() if k != b"again")


async def test_a_replay_never_enqueues_a_sub_task_again_even_after_its_record_is_gone(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    runs: list[int] = []
    children: list[str] = []

    @app.task(name="child")
    async def child(n: int) -> int:
        runs.append(n)
        return n

    @app.task(name="parent")
    async def parent(ctx: Context) -> str:
        h = await ctx.enqueue(child.call(7))
        children.append(h.id)
        [value] = await ctx.wait_for([h])  # journaled once it returns
        if await ctx.state.get("paused") is None:
            await ctx.state.set(paused=True)
            raise Pause(delay=3600)
        return f"{h.id}={value}"

    async with app:
        p = await parent.enqueue()
        await app.drain()
        assert runs == [7]
        assert await (await app.task_handle(children[0])).delete()  # its record is gone
        await app.drain(advance=3601)
        # the replay did not enqueue it again, and took its result from the journal
        assert await p.result() == f"{children[0]}=7"
        assert runs == [7]
        assert set(children) == {children[0]}
        with pytest.raises(TaskNotFound):
            await (await app.task_handle(children[0])).status()
        assert [s.name for s in (await p.info()).steps] == ["enqueue#1", "wait#1"]


async def test_steps_and_sleeps_work_inside_a_workflow_step(make_app: Callable[..., App]) -> None:
    app = make_app(sleep_inline_seconds=0.1)
    calls: list[int] = []

    def triple(n: int) -> int:
        calls.append(n)
        return 3 * n

    @app.task(name="wf.first")
    async def first(ctx: Context, n: int) -> int:
        value = int(await ctx.step("triple", triple, n))
        await ctx.sleep(0.3)  # ends the run: the step is replayed on the next one
        return value

    @app.task(name="wf.second")
    def second(ctx: SyncContext, n: int) -> int:
        return int(ctx.step("add", lambda: n + 1))

    async with app:
        wf = await (first.call(2) | second).enqueue()
        await app.drain(horizon=2)
        assert await wf.result(timeout=5) == 7
    assert calls == [2]


async def test_every_kind_of_journal_entry_reads_as_plain_json_to_a_worker_before_the_journal(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    # a worker of the release before the journal (docs/functions.md, "Rolling deploys")
    # reads the state hash with HGETALL and decodes every value as JSON: its ctx.state.all()
    # must not fail on a hash holding entries of every kind
    app = make_app(sleep_inline_seconds=0)
    raw: dict[bytes, bytes] = {}

    def declined() -> None:
        raise ValueError("card declined")

    @app.task(name="leaf")
    async def leaf(n: int) -> int:
        return n

    @app.task(name="every")
    async def every(ctx: Context) -> None:
        await ctx.step("ok", lambda: {"at": datetime(2026, 1, 2, tzinfo=UTC)})
        with pytest.raises(StepFailed):
            await ctx.step("bad", declined)
        await ctx.sleep(0.01)
        h = await ctx.enqueue(leaf.call(3))
        await ctx.wait_for([h])
        await ctx.state.set(mine=[1, 2])
        if not raw:
            client = admin_client(segue_engine)
            try:
                raw.update(await client.hgetall(f"segue:{{{ctx.queue}}}:state:{ctx.task_id}"))
            finally:
                await client.aclose()
            raise Pause()
        # this release's ctx.state hides the journal's fields
        assert await ctx.state.all() == {"mine": [1, 2]}

    async with app:
        h = await every.enqueue()
        await app.drain(advance=1)
        await h.result()
    old_all = {k.decode(): json.loads(v) for k, v in raw.items()}
    assert set(old_all) == {"mine", "~j:ok", "~j:bad", "~j:sleep#1", "~j:enqueue#1", "~j:wait#1"}
    assert old_all["mine"] == [1, 2]
    assert all(isinstance(v, dict) for k, v in old_all.items() if k != "mine")
