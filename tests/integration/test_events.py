"""Events and progress: lifecycle events streamed atomically with transitions, progress on
the record and the stream, a task's own events, followed live with app.events()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from segue import App, Context, Event, SyncContext, TaskStatus
from tests.integration.conftest import eventually, serving


async def _collect(app: App, events: list[Event], stop: Callable[[list[Event]], bool]) -> None:
    async for event in app.events(since="0", block=0.2):
        events.append(event)
        if stop(events):
            return


async def test_lifecycle_progress_and_own_events_are_streamed_in_order(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="import_file", max_tries=2, retry_backoff=lambda tries: 0.0)
    async def import_file(ctx: Context, rows: int) -> int:
        for i in range(rows):
            await ctx.progress(i + 1, rows, f"row {i + 1}")
        await ctx.emit("file.imported", {"rows": rows})
        if ctx.tries == 1:
            raise ConnectionError("flaky upstream")
        return rows

    @app.task(name="sync_report")
    def sync_report(ctx: SyncContext) -> str:
        ctx.progress(1)
        return "ok"

    async with app:
        h = await import_file.enqueue(3)
        s = await sync_report.enqueue()
        await app.drain(horizon=1.0)
        assert await h.result() == 3
        info = await h.info()
        assert info.progress == (3.0, 3.0) and info.progress_message == "row 3"
        assert (await s.info()).progress == (1.0, None)
        events: list[Event] = []
        await asyncio.wait_for(
            _collect(app, events, lambda evs: sum(e.kind == "task.succeeded" for e in evs) == 2),
            10,
        )
        mine = [(e.kind, e.data) for e in events if e.task_id == h.id]
        assert mine == [
            ("task.enqueued", None),
            ("task.started", None),
            ("task.progress", {"done": 1.0, "total": 3.0, "message": "row 1"}),
            ("task.progress", {"done": 2.0, "total": 3.0, "message": "row 2"}),
            ("task.progress", {"done": 3.0, "total": 3.0, "message": "row 3"}),
            ("file.imported", {"rows": 3}),
            ("task.retried", None),
            ("task.started", None),
            ("task.progress", {"done": 1.0, "total": 3.0, "message": "row 1"}),
            ("task.progress", {"done": 2.0, "total": 3.0, "message": "row 2"}),
            ("task.progress", {"done": 3.0, "total": 3.0, "message": "row 3"}),
            ("file.imported", {"rows": 3}),
            ("task.succeeded", None),
        ]
        assert all(e.task_name == "import_file" for e in events if e.task_id == h.id)
        ms = [tuple(int(p) for p in e.id.split("-")) for e in events]
        assert ms == sorted(ms)  # one queue's stream: in the order things happened


async def test_events_are_followed_live_and_carry_operator_actions(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    started = asyncio.Event()

    @app.task(name="long_job")
    async def long_job(ctx: Context) -> None:
        started.set()
        while True:
            await asyncio.sleep(0.01)
            await ctx.checkpoint()

    async with app:
        seen: list[Event] = []

        async def watch() -> None:
            # the queue is this test's own: from its start ("0"), nothing is missed however
            # late the watcher starts, and what comes after is followed live
            async for event in app.events(since="0", block=0.2):
                seen.append(event)
                if event.kind == "task.cancelled":
                    return

        watcher = asyncio.create_task(watch())
        h = await long_job.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            await h.pause()
            await h.wait_for(TaskStatus.PAUSED, timeout=5)
            await h.resume()
            await h.wait_for(TaskStatus.RUNNING, timeout=5)
            await h.cancel()
            await asyncio.wait_for(watcher, 10)
        kinds = [e.kind for e in seen if e.task_id == h.id]
        assert kinds == [
            "task.enqueued",
            "task.started",
            "task.paused",
            "task.resumed",
            "task.started",
            "task.cancelled",
        ]


async def test_events_of_one_task_and_some_kinds(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="noisy")
    async def noisy(ctx: Context, n: int) -> int:
        await ctx.progress(1, 1)
        return n

    async with app:
        a = await noisy.enqueue(1)
        await noisy.enqueue(2)
        await app.drain()
        got: list[Event] = []

        async def take() -> None:
            async for e in app.events(
                task_id=a.id, kinds={"task.started", "task.succeeded"}, since="0", block=0.2
            ):
                got.append(e)
                if e.kind == "task.succeeded":
                    return

        await asyncio.wait_for(take(), 10)
        assert [(e.task_id, e.kind) for e in got] == [
            (a.id, "task.started"),
            (a.id, "task.succeeded"),
        ]


async def test_workers_trim_events_older_than_the_retention(
    make_app: Callable[..., App],
) -> None:
    app = make_app(events_keep_seconds=0.3)

    @app.task(name="old_news")
    async def old_news() -> None: ...

    async with app:
        await old_news.enqueue()
        await app.drain()
        broker = await app._client.broker()
        ks = broker.keyspace(app.settings.queue)
        assert await broker.client.xlen(ks.events) == 3  # enqueued, started, succeeded
        await asyncio.sleep(0.4)  # the events must be older than the retention
        async with serving(app) as worker:
            await asyncio.wait_for(worker.ready.wait(), 10)  # its first beat trims

            async def trimmed() -> bool:
                return bool(await broker.client.xlen(ks.events) == 0)

            await eventually(trimmed, timeout=5)
