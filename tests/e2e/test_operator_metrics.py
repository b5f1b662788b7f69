"""The queue latency an autoscaler reads (ready tasks, age of the oldest ready one) and the
counters kept on the server, through the dashboard's /metrics with no worker running."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from segue import (
    App,
    Context,
    Fail,
    Limit,
    RateLimited,
    TaskHandle,
    TaskNotFound,
    TaskStatus,
    _ops_reads,
)
from tests.e2e.conftest import dashboard
from tests.integration.conftest import serving

DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboard.md"


def _metric(text: str, name: str, queue: str, **labels: str) -> float:
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == {"queue": queue, **labels}
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def _metrics_text(app: App) -> str:
    """One scrape of a fresh dashboard: /metrics serves a scrape again for a few seconds,
    and these tests read the server again and again."""
    async with dashboard(app, sign_in=False) as client:
        return (await client.get("/metrics")).text


async def _scrape(app: App, queue: str, *names: str) -> list[float]:
    text = await _metrics_text(app)
    return [_metric(text, n, queue) for n in names]


async def _exists(handle: TaskHandle[Any]) -> bool:
    try:
        await handle.status()
    except TaskNotFound:
        return False
    return True


async def test_counters_survive_the_expiry_of_task_records(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    tried: set[int] = set()

    @app.task(name="short", ttl=0.2, max_tries=2, retry_backoff=0.01)
    async def short(n: int) -> int:
        if n == 1 and n not in tried:
            tried.add(n)
            raise ValueError("once")
        return n

    queue = app.settings.queue
    async with app:
        handles = [await short.enqueue(n) for n in range(3)]
        await app.drain()
        # the records are gone, and no worker runs: the counters are the server's
        deadline = time.monotonic() + 10
        for h in handles:
            while await _exists(h):
                assert time.monotonic() < deadline, "records did not expire"
                await asyncio.sleep(0.1)
        assert not await app.workers() or all(w.stale for w in await app.workers())
        text = await _metrics_text(app)
        assert _metric(text, "segue_runs_started_total", queue) == 4  # one retry
        assert _metric(text, "segue_runs_retried_total", queue) == 1
        assert _metric(text, "segue_tasks_ended_total", queue, status="succeeded") == 3
        assert _metric(text, "segue_tasks_ended_total", queue, status="failed") == 0


async def test_a_delayed_task_is_not_late_and_a_held_one_is_not_ready(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    release = asyncio.Event()

    @app.task(name="one_at_a_time", concurrency=1)
    async def one_at_a_time() -> None:
        await release.wait()

    @app.task(name="later")
    async def later() -> None:
        return None

    queue = app.settings.queue
    names = ("segue_queue_ready", "segue_queue_oldest_ready_seconds")
    async with app:
        # delayed by 1.5 s, no worker: not ready until due, then ready and young
        start = time.monotonic()
        await later.options(delay=1.5).enqueue()
        assert await _scrape(app, queue, *names) == [0, 0]
        await asyncio.sleep(1.8)
        before = time.monotonic() - start
        ready, age = await _scrape(app, queue, *names)
        after = time.monotonic() - start
        assert ready == 1
        # counted from its due time, 1.5 s after the enqueue, not from the enqueue
        assert before - 1.5 - 0.1 <= age <= after - 1.5 + 0.1, (before, age, after)
        await app.drain()

        # a task held by its name's concurrency limit is queued but not ready
        async with serving(app):
            first = await one_at_a_time.enqueue()
            await first.wait_for(TaskStatus.RUNNING, timeout=10)
            second = await one_at_a_time.enqueue()
            await asyncio.sleep(0.5)  # claims come and go: it stays queued
            assert await second.status() is TaskStatus.QUEUED
            assert await _scrape(app, queue, *names) == [0, 0]
            # nor is a task of a paused queue
            await app.queue().pause()
            waiting = await later.enqueue()
            assert await _scrape(app, queue, *names) == [0, 0]
            await app.queue().resume()
            release.set()
            await second.wait_for(timeout=10)
            await waiting.wait_for(timeout=10)
        assert await _scrape(app, queue, *names) == [0, 0]


async def test_keyed_tasks_count_as_ready_unless_their_key_holds_them(
    make_dash_app: Callable[..., App],
) -> None:
    """Tasks with a limit key wait in lanes, not in the priority lists: with no worker
    running they are ready (an autoscaler starting from zero must see them), until their
    key's concurrency or rate holds them back."""
    app = make_dash_app()
    release = asyncio.Event()

    @app.task(name="per_tenant", concurrency=Limit(1, key="tenant"))
    async def per_tenant(tenant: str) -> None:
        await release.wait()

    @app.task(name="paced", rate_limit=Limit("1/m", key="tenant", burst=1))
    async def paced(tenant: str) -> None:
        return None

    queue = app.settings.queue
    names = ("segue_queue_ready", "segue_queue_oldest_ready_seconds")
    async with app:
        start = time.monotonic()
        a1, a2, b1 = await app.enqueue_many([per_tenant.call(t) for t in ("a", "a", "b")])
        await asyncio.sleep(0.3)
        ready, age = await _scrape(app, queue, *names)
        assert ready == 3
        assert 0.2 <= age <= time.monotonic() - start + 0.1
        async with serving(app):
            # one run of each key holds its key: a's second task waits, held
            await a1.wait_for(TaskStatus.RUNNING, timeout=10)
            await b1.wait_for(TaskStatus.RUNNING, timeout=10)
            assert await a2.status() is TaskStatus.QUEUED
            assert await _scrape(app, queue, *names) == [0, 0]
            release.set()
            await a2.wait_for(timeout=10)
            # the rate's one token goes to the first; the second waits for the next
            first = await paced.enqueue("c")
            await first.wait_for(timeout=10)
            second = await paced.enqueue("c")
            await asyncio.sleep(0.5)  # claims come and go: it stays queued
            assert await second.status() is TaskStatus.QUEUED
            assert await _scrape(app, queue, *names) == [0, 0]
            await second.cancel()


async def test_a_name_held_by_rate_limited_is_not_ready(
    make_dash_app: Callable[..., App],
) -> None:
    """A task that raised RateLimited holds its task name: the name's waiting tasks are not
    ready until the hold ends."""
    app = make_dash_app()
    told = asyncio.Event()

    @app.task(name="told_to_wait")
    async def told_to_wait(n: int) -> None:
        told.set()
        raise RateLimited(retry_after=60)

    queue = app.settings.queue
    names = ("segue_queue_ready", "segue_queue_oldest_ready_seconds")
    async with app:
        first, second = await app.enqueue_many([told_to_wait.call(n) for n in range(2)])
        assert (await _scrape(app, queue, *names))[0] == 2
        async with serving(app, concurrency=1):
            await asyncio.wait_for(told.wait(), timeout=10)
            await asyncio.sleep(0.5)  # claims come and go: both stay queued
            assert await first.status() is await second.status() is TaskStatus.QUEUED
            assert await _scrape(app, queue, *names) == [0, 0]
        await first.cancel()
        await second.cancel()


async def test_a_signal_wait_past_its_deadline_is_ready(
    make_dash_app: Callable[..., App],
) -> None:
    """A task waiting for a signal is not ready; once its deadline passes it is, since only
    a worker ends the wait (with its timeout), and counts from the deadline."""
    app = make_dash_app()

    @app.task(name="awaits_go")
    async def awaits_go(ctx: Context) -> Any:
        return await ctx.wait_signal("go", timeout=2.0, default="late")

    queue = app.settings.queue
    names = ("segue_queue_ready", "segue_queue_oldest_ready_seconds")
    async with app:
        enqueued = time.monotonic()
        handle = await awaits_go.enqueue()
        async with serving(app):
            await handle.wait_for(TaskStatus.WAITING, timeout=10)
        waited = time.monotonic()
        # its deadline is 2 s after the wait began, between the enqueue and now
        if waited < enqueued + 1.5:
            assert await _scrape(app, queue, *names) == [0, 0]
        await asyncio.sleep(max(0.0, waited + 2.3 - time.monotonic()))
        before = time.monotonic()
        ready, age = await _scrape(app, queue, *names)
        after = time.monotonic()
        assert ready == 1
        assert before - waited - 2.0 - 0.1 <= age <= after - enqueued - 2.0 + 0.1
        async with serving(app):
            assert await handle.result(timeout=10) == "late"
        assert await _scrape(app, queue, *names) == [0, 0]


async def test_every_metric_is_in_the_documented_table(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="doc.job")
    async def job() -> None:
        return None

    doc = DOC.read_text(encoding="utf-8")  # small: read once, before the loop's work
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `(segue_\w+)` \| (\w+) \|", doc, re.M)
    }
    async with app:
        await job.enqueue()
        text = await _metrics_text(app)
    served = {
        (f.name + "_total" if f.type == "counter" else f.name): f.type
        for f in text_string_to_metric_families(text)
    }
    assert served == rows


async def test_the_history_ring_is_bounded_and_reads_only_its_own_day(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="ring.job", max_tries=1)
    async def job(ok: bool) -> None:
        if not ok:
            raise Fail("no")

    async with app:
        broker = await app._client.broker()
        # three ends in one 5-minute step: not in its last seconds
        while await _ops_reads.server_ms(broker.reads) % _ops_reads.HIST_STEP_MS > 295_000:
            await asyncio.sleep(0.2)
        for ok in (True, True, False):
            await job.enqueue(ok)
        await app.drain()
        ks = broker.keyspace(app.settings.queue)
        now = await _ops_reads.server_ms(broker.reads)
        step = now // _ops_reads.HIST_STEP_MS
        stored = await broker.client.hgetall(ks.hist)
        assert len(stored) == 3  # one slot: its step, and its two counts
        # a slot two steps back holds its own step; the one before holds a step of the last
        # lap of the ring (25 hours ago): that one reads as nothing
        prev, stale = (step - 2) % _ops_reads.HIST_SLOTS, (step - 1) % _ops_reads.HIST_SLOTS
        await broker.client.hset(
            ks.hist,
            mapping={
                prev: step - 2,
                f"{prev}:s": 4,
                f"{prev}:f": 1,
                stale: step - 1 - _ops_reads.HIST_SLOTS,
                f"{stale}:s": 9,
                f"{stale}:f": 9,
            },
        )
        day = await _ops_reads.history(broker.reads, ks, now, 288)
        assert len(day) == 288
        assert [(s.succeeded, s.failed) for s in day[-3:]] == [(4, 1), (0, 0), (2, 1)]
        assert day[-1].start_ms == step * _ops_reads.HIST_STEP_MS
