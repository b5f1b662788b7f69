"""Pause raised by the task (issue 16, items 3 and 4): `Pause(state=...)` checkpoints and
suspends in one step; Pauses in a row without progress back off and end `pause_limit`;
progress resets the count; the history a record keeps is bounded and numbered.

In-process workers on the single server and the cluster (the engine fixtures); the crash
points of the atomic checkpoint-and-pause are in test_pauses_processes.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from segue import App, Context, Pause, TaskFailed, TaskStatus
from segue.testing import assert_history
from tests._support import Engine, admin_client
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_workflow import _segue


async def test_pause_state_is_merged_into_ctx_state_as_the_task_suspends(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    seen: list[dict[str, object]] = []

    # max_pauses=0: a Pause without progress would fail it; its own state= is progress
    @app.task(name="pages", max_pauses=0)
    async def pages(ctx: Context, n: int) -> int:
        state = await ctx.state.all()
        seen.append(state)
        if not state:
            await ctx.state.set(kept="from set")
        page: int = state.get("page", 0)
        if page < n:
            at = datetime(2026, 12, 7, tzinfo=UTC)
            raise Pause(delay=0.05, state={"page": page + 1, "at": at})
        return page

    async with app:
        h = await pages.enqueue(3)
        async with serving(app):
            assert await h.result(timeout=10) == 3
        info = await h.info()
    # merged: the key written by ctx.state.set stays; values come back as plain JSON
    assert seen[0] == {}
    assert seen[1] == {"kept": "from set", "page": 1, "at": "2026-12-07T00:00:00Z"}
    assert [s.get("page") for s in seen] == [None, 1, 2, 3]
    assert info.tries == 1
    assert [t.status for t in info.history].count(TaskStatus.SUSPENDED) == 3


async def test_pause_in_a_loop_backs_off_and_ends_pause_limit(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    runs: list[float] = []

    @app.task(name="spin", max_pauses=4)
    async def spin() -> None:
        runs.append(time.monotonic())
        raise Pause()

    async with app:
        h = await spin.enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed) as failed:
                await h.result(timeout=20)
        info = await h.info()
        dead = [d.id for d in await app.dead_letters()]
    assert failed.value.reason == "pause_limit"
    assert "max_pauses=4" in failed.value.message
    # four Pauses backed off 0.1, 0.2, 0.4 and 0.8 s; the fifth ended it
    assert len(runs) == 5
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert runs[-1] - runs[0] >= 1.5 - 0.05, gaps
    assert all(gap >= want - 0.02 for gap, want in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=True))
    assert dead == [h.id]
    assert info.status is TaskStatus.FAILED and info.tries == 1
    # each backed-off Pause is scheduled, so it is queued again when due
    steps = ["running", "suspended", "queued"] * 4
    assert_history(info, ["queued", *steps, "running", "failed"])
    assert [t.number for t in info.history] == list(range(1, 16))
    assert info.history_total == 15


async def test_a_retry_of_a_task_that_hit_the_pause_limit_counts_from_zero(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    runs: list[int] = []

    @app.task(name="spin.once", max_pauses=0)
    async def spin_once() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise Pause()
        if len(runs) == 2:
            raise Pause(state={"moved": True})  # progress: does not count
        return "done"

    async with app:
        h = await spin_once.enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed, match="max_pauses=0"):
                await h.result(timeout=10)
            await h.retry()
            assert await h.result(timeout=10) == "done"


async def test_a_1000_step_job_pausing_every_5_steps_after_a_checkpoint_finishes(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    app = make_app()

    @app.task(name="long.job")  # max_pauses: the default 100, well under its 199 Pauses
    async def long_job(ctx: Context, n: int) -> int:
        i: int = await ctx.state.get("i", 0)
        while i < n:
            i += 1  # a step
            if i % 5 == 0 and i < n:
                await ctx.state.set(i=i)  # the documented pattern: checkpoint, then Pause
                raise Pause()
        return i

    async with app:
        h = await long_job.enqueue(1000)
        async with serving(app, concurrency=1):
            assert await h.result(timeout=120) == 1000
        info = await h.info()
    # queued, 199 x (running, suspended), running, succeeded
    total = 1 + 2 * 199 + 2
    assert info.history_total == total
    assert len(info.history) == 200
    assert [t.number for t in info.history] == list(range(total - 199, total + 1))
    assert [t.status for t in info.history[-3:]] == [
        TaskStatus.SUSPENDED,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
    ]
    assert_history(info, ["suspended", "running", "succeeded"], exact=False)
    assert info.tries == 1
    shown = _segue("info", h.id, "--url", segue_engine.url)
    assert shown.returncode == 0, shown.stderr
    assert "(201 earlier transitions not kept: a record keeps the last 200)" in shown.stdout


async def test_a_long_history_written_without_a_count_is_bounded_and_numbered(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    """A record a worker of the previous release wrote: its history unbounded and no count
    ('hn'). It reads as it is, numbered from 1; the first transition of this release keeps
    the last 200 entries and counts every one."""
    app = make_app()

    @app.task(name="old.one")
    async def old_one() -> str:
        return "ok"

    async with app:
        h = await old_one.options(delay=3600).enqueue()
        key = f"{app.settings.prefix}:{{{h.queue}}}:task:{h.id}"
        lines = "".join(f"suspended|{1_700_000_000_000 + i}|paused itself\n" for i in range(299))
        client = admin_client(segue_engine)
        try:
            await client.hset(key, mapping={"h": b"queued|1700000000000|\n" + lines.encode()})
            await client.hdel(key, "hc")  # the previous release writes the long form only
        finally:
            await client.aclose()
        before = await h.info()
        assert len(before.history) == before.history_total == 300
        assert [t.number for t in before.history[:2]] == [1, 2]
        await h.pause()  # SCHEDULED -> PAUSED: one transition of this release
        await h.resume()
        async with serving(app):
            assert await h.result(timeout=10) == "ok"
        info = await h.info()
    total = 300 + 4  # paused, queued, running, succeeded
    assert info.history_total == total
    assert len(info.history) == 200
    assert [t.number for t in info.history] == list(range(total - 199, total + 1))
    assert [t.status for t in info.history[-4:]] == [
        TaskStatus.PAUSED,
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
    ]


async def test_a_follower_of_the_history_sees_every_new_transition_past_the_bound(
    make_app: Callable[..., App],
) -> None:
    """The follower of docs/web.md: it reads `number` to know what it has seen."""
    app = make_app()

    @app.task(name="chatty")
    async def chatty(ctx: Context, n: int) -> int:
        i: int = await ctx.state.get("i", 0)
        if i < n:
            raise Pause(state={"i": i + 1})
        return i

    followed: list[int] = []
    seen = 0
    async with app:
        h = await chatty.enqueue(150)  # 303 transitions
        async with serving(app, concurrency=1):

            async def follow() -> bool:
                nonlocal seen
                info = await h.info()
                followed.extend(t.number for t in info.history if t.number > seen)
                seen = info.history_total
                return info.status.is_final

            await eventually(follow, timeout=60, interval=0.01)
    # what it missed between two reads had left the record only if more than 200 came in
    assert followed == sorted(set(followed))
    assert followed[-1] == seen == 303
