"""Queries (issue 18 item 4): a running task answers `handle.query` through the worker
holding it, within a second; TaskNotRunning names the status when no run holds the task,
UnknownQuery lists the names registered so far, QueryTimeout comes from a stopped worker.
Single server and cluster (the `segue_engine` fixture)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest

from segue import (
    App,
    Context,
    QueryFailed,
    QueryTimeout,
    SyncContext,
    TaskNotRunning,
    TaskStatus,
    UnknownQuery,
)
from tests._support import Engine
from tests._workers import Fleet
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_workflow import _segue


async def test_a_running_task_answers_its_queries_and_the_errors_say_why_not(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    registered, go_on, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @app.task(name="q.job")
    async def job(ctx: Context, pages: int) -> int:
        # a replay on its way has not registered its handlers yet: UnknownQuery lists none
        await go_on.wait()
        page = 3

        async def echo(*values: object) -> list[object]:
            await asyncio.sleep(0)
            return list(values)

        def broken() -> None:
            raise ValueError("no progress here")

        ctx.on_query("progress", lambda: {"page": page, "of": pages})
        ctx.on_query("echo", echo)
        ctx.on_query("broken", broken)
        registered.set()
        await finish.wait()
        return page

    async with app, serving(app, concurrency=1):
        running = await job.enqueue(10)
        queued = await job.enqueue(20)  # concurrency 1: it waits behind the first
        await running.wait_for(TaskStatus.RUNNING, timeout=5)
        with pytest.raises(UnknownQuery, match="none yet") as unknown:
            await running.query("progress", timeout=2)
        assert unknown.value.names == []
        go_on.set()
        await asyncio.wait_for(registered.wait(), 5)

        started = time.monotonic()
        assert await running.query("progress") == {"page": 3, "of": 10}
        assert time.monotonic() - started < 1.0
        assert await running.query("echo", 1, "two", {"three": [3]}) == [1, "two", {"three": [3]}]
        with pytest.raises(UnknownQuery, match="'broken', 'echo', 'progress'") as unknown:
            await running.query("size")
        assert unknown.value.names == ["broken", "echo", "progress"]
        with pytest.raises(QueryFailed, match="ValueError: no progress here") as failed:
            await running.query("broken")
        assert failed.value.type == "ValueError"

        with pytest.raises(TaskNotRunning, match="is queued") as not_running:
            await queued.query("progress")
        assert not_running.value.status == "queued"
        waiting = await job.options(after=[running]).enqueue(30)
        with pytest.raises(TaskNotRunning, match="is waiting") as not_running:
            await waiting.query("progress")
        assert not_running.value.status == "waiting"
        await queued.cancel()
        await waiting.cancel()
        finish.set()
        assert await running.result(timeout=5) == 3
        with pytest.raises(TaskNotRunning, match="is succeeded") as not_running:
            await running.query("progress")
        assert not_running.value.status == "succeeded"
        with pytest.raises(TaskNotRunning, match="is cancelled"):
            await queued.query("progress")


async def test_a_sync_task_s_handler_runs_on_the_worker_s_loop_beside_its_thread(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    started, done = threading.Event(), threading.Event()

    @app.task(name="q.sync")
    def count(ctx: SyncContext, n: int) -> int:
        lock = threading.Lock()
        seen = {"i": 0}

        def progress() -> dict[str, int]:
            with lock:  # the handler runs on the loop thread, the task in its own
                return dict(seen)

        ctx.on_query("progress", progress)
        for i in range(n):
            with lock:
                seen["i"] = i
        started.set()
        done.wait(10)
        return n

    async with app, serving(app, concurrency=1):
        h = await count.enqueue(5)
        assert await asyncio.to_thread(started.wait, 5)
        assert await h.query("progress") == {"i": 4}
        done.set()
        assert await h.result(timeout=5) == 5


@pytest.mark.slow
@pytest.mark.serial  # a 1 s timeout measured against a 2 s bound
async def test_a_stopped_worker_s_task_times_out_and_answers_again_once_continued(
    segue_valkey: Engine, queue_name: str
) -> None:
    # one engine: what is under test is the stopped worker's silence; the queries above
    # run on every engine, the cluster included
    segue_engine = segue_valkey
    app = App("queries", redis_url=segue_engine.url, queue=queue_name)
    from tests.apps import queries

    crawl = app.task(name="queries.crawl")(queries.crawl.fn)
    with Fleet("tests.apps.queries:app", segue_engine.url, queue_name, concurrency=1) as fleet:
        worker = fleet.start()
        async with app:
            h = await crawl.enqueue(600, 0.05)
            await h.wait_for(TaskStatus.RUNNING, timeout=20)

            async def registered() -> bool:
                # RUNNING from its claim on: the run registers its handler a moment later
                try:
                    return bool((await h.query("progress", timeout=5))["of"] == 600)
                except UnknownQuery:
                    return False

            await eventually(registered, timeout=10)

            shown = await asyncio.to_thread(
                _segue, "query", h.id, "progress", "--url", segue_engine.url
            )
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["of"] == 600

            fleet.pause(worker)
            started = time.monotonic()
            with pytest.raises(QueryTimeout, match="did not answer query 'progress' within 1 s"):
                await h.query("progress", timeout=1)
            assert time.monotonic() - started < 2.0
            fleet.resume(worker)
            assert (await h.query("progress", timeout=5))["of"] == 600
            await h.cancel()
