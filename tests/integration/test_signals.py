"""Contract tests of signals (issue 18): handle.signal, ctx.wait_signal, wf.signal, and
signals in local runs and under drain. Single server and cluster (segue_engine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from segue import (
    App,
    Context,
    InvalidTransition,
    SignalBufferFull,
    SignalTimeout,
    SyncContext,
    TaskStatus,
    _ops_reads,
)
from tests._support import keys_of
from tests.integration.conftest import eventually, serving


async def _is(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)


async def test_a_signal_sent_before_the_wait_is_taken_at_once(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="sig.before")
    async def before(ctx: Context) -> Any:
        await ctx.state.set(ready=1)
        return await ctx.wait_signal("go")

    async with app:
        h = await before.enqueue()
        assert await h.signal("go", {"n": 1}) is TaskStatus.QUEUED
        assert await h.signal("go", {"n": 2}) is TaskStatus.QUEUED
        await app.drain()
        assert await h.result(timeout=5) == {"n": 1}
        info = await h.info()
        # the second one was still buffered when the task ended: counted, then dropped
        assert info.signals_dropped == 1
        kinds = [e.kind for e in await h.events()]
        assert "task.signals_dropped" in kinds
        assert [s.name for s in info.steps] == ["signal:go#1"]


async def test_a_signal_during_the_wait_wakes_the_task_and_is_delivered_once(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    runs: list[int] = []

    @app.task(name="sig.during")
    async def during(ctx: Context) -> Any:
        runs.append(ctx.tries)
        first = await ctx.wait_signal("approval")
        second = await ctx.wait_signal("approval", timeout=60)
        return [first, second]

    async with app, serving(app, concurrency=2):
        h = await during.enqueue()
        await eventually(lambda: _is(h, TaskStatus.WAITING))
        info = await h.info()
        assert info.waiting_for == "signal:approval"
        assert info.worker_id is None
        assert await h.signal("approval", "a", id="one") is TaskStatus.QUEUED
        # a resend of the same id (a lost reply) changes nothing
        await h.signal("approval", "a", id="one")
        await eventually(lambda: _is(h, TaskStatus.WAITING))
        assert str((await h.info()).waiting_for).startswith("signal:approval until ")
        await h.signal("approval", "b", id="two")
        assert await h.result(timeout=10) == ["a", "b"]
        # a resend after the end still reports success; a new signal is refused
        assert await h.signal("approval", "b", id="two") is TaskStatus.SUCCEEDED
        with pytest.raises(InvalidTransition, match="succeeded"):
            await h.signal("approval", "c")
        assert (await h.info()).tries == 1  # waits spend no try
        assert await keys_of(segue_engine, f"*sig:{h.id}") == []


async def test_the_timeout_returns_the_default_or_raises(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="sig.default")
    async def with_default(ctx: Context) -> Any:
        return await ctx.wait_signal("x", timeout=timedelta(days=2), default="gave up")

    @app.task(name="sig.raises")
    async def raises(ctx: Context) -> Any:
        return await ctx.wait_signal("x", timeout=0.3)

    async with app:
        h1 = await with_default.enqueue()
        h2 = await raises.enqueue()
        await app.drain(advance=timedelta(days=2, seconds=1))
        assert await h1.result(timeout=5) == "gave up"
        info = await h2.info()
        assert info.status is TaskStatus.FAILED and info.tries == 1
        assert info.error is not None and info.error.type == "SignalTimeout"
        assert info.error.reason == "signal_timeout"


@pytest.mark.serial
async def test_the_timeout_comes_on_time_with_a_worker(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="sig.ontime")
    async def ontime(ctx: Context) -> Any:
        return await ctx.wait_signal("x", timeout=1.0, default="late")

    async with app, serving(app):
        t0 = time.monotonic()
        h = await ontime.enqueue()
        assert await h.result(timeout=10) == "late"
        assert 0.9 <= time.monotonic() - t0 < 3.0


async def test_pause_resume_cancel_of_a_waiting_task(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="sig.paused")
    async def paused(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    async with app, serving(app):
        h = await paused.enqueue()
        await eventually(lambda: _is(h, TaskStatus.WAITING))
        assert await h.pause() is TaskStatus.PAUSED
        await h.signal("go", 7)  # buffered while paused
        assert await h.status() is TaskStatus.PAUSED
        await h.resume()
        assert await h.result(timeout=10) == 7
        h2 = await paused.enqueue()
        await eventually(lambda: _is(h2, TaskStatus.WAITING))
        await h2.pause()
        runs = (await h2.info()).history_total
        assert await h2.resume() is TaskStatus.WAITING  # no signal buffered: waits again
        info = await h2.info()
        assert info.waiting_for == "signal:go" and info.history_total == runs + 1
        await h2.pause()
        await h2.signal("go", 8)
        assert await h2.resume() is TaskStatus.QUEUED  # the buffered one is taken now
        assert await h2.result(timeout=10) == 8
        h3 = await paused.enqueue()
        await eventually(lambda: _is(h3, TaskStatus.WAITING))
        assert await h3.cancel() is TaskStatus.CANCELLED


async def test_the_buffer_is_bounded(make_app: Callable[..., App]) -> None:
    app = make_app(max_pending_signals=2)

    @app.task(name="sig.full")
    async def full(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    async with app:
        h = await full.options(delay=3600).enqueue()
        await h.signal("go", 1)
        await h.signal("other", 2)
        with pytest.raises(SignalBufferFull):
            await h.signal("go", 3)
        await h.cancel()
        assert (await h.info()).signals_dropped == 2


async def test_a_signal_to_a_workflow_step_before_it_starts_reaches_it(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()

    @app.task(name="sig.first")
    async def first() -> int:
        return 1

    @app.task(name="sig.step")
    async def step(ctx: Context, prev: int) -> Any:
        return [prev, await ctx.wait_signal("go")]

    async with app:
        other = f"{queue_name}_b"
        wf = await (first.call() | step.options(name="approve", queue=other).call()).enqueue()
        await wf.signal("approve", "go", "yes")
        await app.drain(queues=[queue_name, other])
        assert await wf.result(timeout=10) == [1, "yes"]


def test_a_local_run_takes_given_signals_and_never_waits(make_app: Callable[..., App]) -> None:
    import asyncio

    app = make_app()

    @app.task(name="sig.local")
    async def local(ctx: Context) -> Any:
        a = await ctx.wait_signal("go")
        b = await ctx.wait_signal("go", timeout=3600, default="none")
        return [a, b]

    @app.task(name="sig.local_sync")
    def local_sync(ctx: SyncContext) -> Any:
        return ctx.wait_signal("go")

    assert asyncio.run(local.run(signals={"go": ["x"]})) == ["x", "none"]
    with pytest.raises(SignalTimeout):
        asyncio.run(local.run())
    assert asyncio.run(local_sync.run(signals={"go": [5]})) == 5


async def test_waiting_tasks_hold_no_slot_and_do_not_count_as_ready(
    make_app: Callable[..., App], queue_name: str, segue_engine: Any
) -> None:
    # the 1,000 on the single server; fewer elsewhere, to keep the suite fast
    n = 1000 if segue_engine.kind == "valkey" and not segue_engine.ports else 200
    app = make_app()

    @app.task(name="sig.waiter")
    async def waiter(ctx: Context, i: int) -> Any:
        return [i, await ctx.wait_signal("go")]

    @app.task(name="sig.other")
    async def other(i: int) -> int:
        return i

    async with app:
        hs = await app.enqueue_many([waiter.call(i) for i in range(n)])
        await app.drain(concurrency=4)
        counts = await app.queue_counts()
        assert (counts["waiting"], counts["queued"], counts["running"]) == (n, 0, 0)
        reads = await app._client.reads()
        ready = await _ops_reads.readiness(reads, reads.keyspace(queue_name))
        assert (ready.ready, ready.oldest_age) == (0, 0.0)
        async with serving(app, concurrency=4):
            quick = await app.enqueue_many([other.call(i) for i in range(8)])
            assert [await h.result(timeout=10) for h in quick] == list(range(8))
        for h in hs:
            await h.signal("go", h.id)
        await app.drain(concurrency=4)
        assert [await h.result(timeout=5) for h in hs] == [[i, h.id] for i, h in enumerate(hs)]


async def test_the_reconciler_repairs_signal_keys_and_never_queues_a_waiting_task(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    from segue._broker import make_async_client
    from segue._keys import Keyspace
    from segue._reconcile import Reconciler

    app = make_app()
    ks = Keyspace("segue", queue_name)

    @app.task(name="sig.rec")
    async def rec(ctx: Context) -> Any:
        return await ctx.wait_signal("go", timeout=3600)

    admin: Any = make_async_client(segue_engine.admin_url, cluster=segue_engine.kind == "cluster")
    try:
        async with app:
            waiting, done = await rec.enqueue(), await rec.enqueue()
            await done.signal("go", 1, id="kept")
            await app.drain()
            assert await done.result(timeout=5) == 1
            gone = f"{queue_name}:gone"
            await admin.zrem(ks.signal_due, waiting.id)  # an old release's claim dropped it
            await admin.zadd(ks.signal_due, {gone: 1})
            await admin.hset(ks.signals(gone), "c", 1)
            await admin.sadd(ks.signal_ids(gone), "x")
            await admin.persist(ks.signal_ids(done.id))
            broker = await app._client.broker()
            reconciler = Reconciler(broker, "test", [ks])
            kinds = sorted(r.kind for r in await reconciler.run_pass(ks, steps=None))
            assert kinds == [
                "orphan_signal_ids",
                "orphan_signals",
                "signal_deadline_not_indexed",
                "signal_ids_without_ttl",
                "stale_signal_deadline",
            ]
            assert await reconciler.run_pass(ks, steps=None) == []
            assert await waiting.status() is TaskStatus.WAITING
            assert await admin.zscore(ks.signal_due, waiting.id) is not None
            assert await admin.pttl(ks.signal_ids(done.id)) > 0
            await waiting.cancel()
            assert await admin.zscore(ks.signal_due, waiting.id) is None
            # a release that did not know signals held it instead of pausing it: the
            # signal that wakes it makes it PAUSED, the signal journaled for its resume
            held = await rec.enqueue()
            await app.drain()
            await admin.hset(ks.task(held.id), "hold", 1)
            await held.signal("go", 5)
            assert await held.status() is TaskStatus.PAUSED
            await held.resume()
            await app.drain()
            assert await held.result(timeout=5) == 5
    finally:
        await admin.aclose()


async def test_a_sync_task_waits_too_and_delete_leaves_no_signal_key(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()

    @app.task(name="sig.sync")
    def sync_waiter(ctx: SyncContext, n: int) -> Any:
        return [n, ctx.wait_signal("go", timeout=3600)]

    @app.task(name="sig.after")
    async def after(x: int) -> int:
        return x

    async with app:
        h = await sync_waiter.enqueue(1)
        dependant = await after.options(after=[h]).enqueue(2)
        await app.drain()
        assert (await h.info()).waiting_for is not None
        assert (await dependant.info()).waiting_for == "dependencies"
        await h.signal("go", "ok", id="once")
        await app.drain()
        assert await h.result(timeout=5) == [1, "ok"]
        assert await keys_of(segue_engine, f"*sgi:{h.id}") != []
        assert await h.delete()
        assert await keys_of(segue_engine, f"*sgi:{h.id}") == []


async def test_a_query_to_a_task_waiting_for_a_signal_is_not_running(
    make_app: Callable[..., App],
) -> None:
    from segue import TaskNotRunning

    app = make_app()

    @app.task(name="sig.queried")
    async def queried(ctx: Context) -> Any:
        ctx.on_query("draft", lambda: "kept in ctx.state too")
        await ctx.state.set(draft="v1")
        return await ctx.wait_signal("approval")

    async with app:
        h = await queried.enqueue()
        await app.drain()
        with pytest.raises(TaskNotRunning, match="waiting"):
            await h.query("draft")
        assert (await h.state())["draft"] == "v1"  # the read that always works
        await h.cancel()


async def test_segue_signal_and_segue_info(segue_valkey: Any, queue_name: str) -> None:
    from tests.integration.test_cli_workflow import _segue

    app = App("cli", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="sig.cli")
    async def cli_task(ctx: Context) -> Any:
        return await ctx.wait_signal("approval", timeout=3600)

    async with app:
        h = await cli_task.enqueue()
        await app.drain()
        url = segue_valkey.url
        shown = await asyncio.to_thread(_segue, "info", h.id, "--url", url)
        assert "waiting for signal:approval until " in shown.stdout, shown.stdout
        sent = await asyncio.to_thread(
            _segue, "signal", h.id, "approval", '{"by": "ana"}', "--id", "a1", "--url", url
        )
        assert sent.returncode == 0, sent.stderr
        assert f"task {h.id}: signal approval sent (queued)" in sent.stdout
        bad = await asyncio.to_thread(_segue, "signal", h.id, "approval", "{", "--url", url)
        assert bad.returncode == 1 and "not JSON" in bad.stderr
        await app.drain()
        assert await h.result(timeout=5) == {"by": "ana"}
        ended = await asyncio.to_thread(_segue, "signal", h.id, "approval", "--url", url)
        assert ended.returncode == 1 and "succeeded" in ended.stderr
