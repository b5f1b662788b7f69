"""The events and status histories each scenario leaves on the server, recorded exactly.

The scripts' status writes keep status, history, index and event in step; these records pin
what a run of each scenario leaves in the queue's event stream and in each task's history,
so that a change to how the scripts are put together cannot add, drop or rename one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from segue import App, Context, Pause
from segue._wire import history_lines
from tests._support import Engine
from tests.integration.conftest import eventually


def _app(engine: Engine, queue: str, **overrides: Any) -> App:
    overrides.setdefault("poll_seconds", 0.1)
    return App("wire", redis_url=engine.url, queue=queue, **overrides)


async def _events(app: App, queue: str) -> list[tuple[str, str, str]]:
    """(kind, task id, task name) of every entry of the queue's stream, oldest first."""
    broker = await app._client.broker()
    entries = await broker.client.xrange(broker.keyspace(queue).events)
    return [(f[b"e"].decode(), f[b"id"].decode(), f.get(b"n", b"").decode()) for _, f in entries]


async def _history(app: App, queue: str, task_id: str) -> list[tuple[str, str]]:
    """(status, reason) of a task's history, without the times."""
    broker = await app._client.broker()
    fields = await broker.client.hmget(broker.keyspace(queue).task(task_id), "h", "hc", "ce")
    lines, _ = history_lines(fields[0], fields[1], int(fields[2]) if fields[2] else None)
    return [(status, reason) for status, _, reason in lines]


def _kinds(events: list[tuple[str, str, str]], task_id: str) -> list[str]:
    return [kind for kind, tid, _ in events if tid == task_id]


async def test_enqueue_claim_succeed(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)

    @app.task(name="ok")
    async def ok(ctx: Context) -> int:
        return 1

    async with app:
        h = await ok.enqueue()
        await app.drain()
        events = await _events(app, queue_name)
        assert events == [
            ("task.enqueued", h.id, "ok"),
            ("task.started", h.id, "ok"),
            ("task.succeeded", h.id, "ok"),
        ]
        hist = await _history(app, queue_name, h.id)
        assert hist[1][1]  # the worker's id
        assert hist == [
            ("queued", ""),
            ("running", hist[1][1]),
            ("succeeded", ""),
        ]


async def test_fail_retry_dead_letter(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)

    @app.task(name="bad", max_tries=2, retry_backoff=lambda tries: 0.0)
    async def bad(ctx: Context) -> None:
        raise ValueError("no")

    async with app:
        h = await bad.enqueue()
        await app.drain()
        events = await _events(app, queue_name)
        assert _kinds(events, h.id) == [
            "task.enqueued",
            "task.started",
            "task.retried",
            "task.started",
            "task.failed",
        ]
        statuses = [s for s, _ in await _history(app, queue_name, h.id)]
        assert statuses == ["queued", "running", "retrying", "queued", "running", "failed"]
        hist = await _history(app, queue_name, h.id)
        assert hist[2] == ("retrying", "retry") and hist[3] == ("queued", "due")
        assert hist[5] == ("failed", "error")
        broker = await app._client.broker()
        dead = await broker.reads.dead_ids(broker.keyspace(queue_name), 0, 10)
        assert dead == [h.id]
        await h.retry("again")
        await app.drain()
        events = await _events(app, queue_name)
        # an operator's retry emits no event of its own
        assert _kinds(events, h.id)[5:] == [
            "task.started",
            "task.retried",
            "task.started",
            "task.failed",
        ]
        assert (await _history(app, queue_name, h.id))[6] == ("queued", "again")


async def test_pause_resume_cancel_of_waiting_tasks(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)

    @app.task(name="idle")
    async def idle(ctx: Context) -> None:
        return None

    async with app:
        queued = await idle.enqueue()
        later = await idle.options(delay=3600).enqueue()
        await queued.pause("hold on")
        await queued.resume("go")
        await queued.cancel("stop")
        await later.pause("p")
        await later.cancel("c")
        events = await _events(app, queue_name)
        assert _kinds(events, queued.id) == [
            "task.enqueued",
            "task.paused",
            "task.resumed",
            "task.cancelled",
        ]
        assert _kinds(events, later.id) == ["task.enqueued", "task.paused", "task.cancelled"]
        assert await _history(app, queue_name, queued.id) == [
            ("queued", ""),
            ("paused", "hold on"),
            ("queued", "go"),
            ("cancelled", "stop"),
        ]
        assert await _history(app, queue_name, later.id) == [
            ("scheduled", ""),
            ("paused", "p"),
            ("cancelled", "c"),
        ]


async def test_pause_and_cancel_of_running_tasks(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)
    started: set[str] = set()

    @app.task(name="long")
    async def long(ctx: Context) -> None:
        started.add(ctx.task_id)
        while True:
            await ctx.checkpoint()
            await asyncio.sleep(0.02)

    async with app:
        a = await long.enqueue()
        b = await long.enqueue()
        worker = app.worker(concurrency=2)
        running = asyncio.create_task(worker.run())
        try:

            async def both() -> bool:
                return started == {a.id, b.id}

            await eventually(both)
            await a.pause("op pause")

            async def a_paused() -> bool:
                return str(await a.status()) == "paused"

            await eventually(a_paused)
            await b.cancel("op cancel")

            async def b_cancelled() -> bool:
                return str(await b.status()) == "cancelled"

            await eventually(b_cancelled)
        finally:
            worker.stop()
            await running
        events = await _events(app, queue_name)
        assert _kinds(events, a.id) == ["task.enqueued", "task.started", "task.paused"]
        assert _kinds(events, b.id) == ["task.enqueued", "task.started", "task.cancelled"]
        assert [s for s, _ in await _history(app, queue_name, a.id)] == [
            "queued",
            "running",
            "paused",
        ]
        assert (await _history(app, queue_name, a.id))[2] == ("paused", "op pause")
        assert (await _history(app, queue_name, b.id))[2] == ("cancelled", "op cancel")


async def test_suspend_and_expiry(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)

    @app.task(name="nap")
    async def nap(ctx: Context) -> str:
        if not await ctx.state.get("napped"):
            await ctx.state.set(napped=True)
            raise Pause(delay=0.0)
        return "woke"

    @app.task(name="stale")
    async def stale(ctx: Context) -> None:
        return None

    async with app:
        h = await nap.enqueue()
        await app.drain(horizon=1.0)
        e = await stale.options(expire=0.001).enqueue()
        await asyncio.sleep(0.05)
        await app.drain()
        events = await _events(app, queue_name)
        assert _kinds(events, h.id) == [
            "task.enqueued",
            "task.started",
            "task.suspended",
            "task.started",
            "task.succeeded",
        ]
        assert _kinds(events, e.id) == ["task.enqueued", "task.expired"]
        assert [s for s, _ in await _history(app, queue_name, h.id)] == [
            "queued",
            "running",
            "suspended",
            "queued",
            "running",
            "succeeded",
        ]
        assert await _history(app, queue_name, e.id) == [
            ("queued", ""),
            ("expired", "not started before its expiry"),
        ]


async def test_lease_expiry_requeues_then_fails_as_worker_lost(
    segue_valkey: Engine, queue_name: str
) -> None:
    # max_tries above the deliveries: only max_deliveries ends it
    app = _app(segue_valkey, queue_name, lease_seconds=0.2, max_deliveries=2)

    @app.task(name="lost", max_tries=10)
    async def lost(ctx: Context) -> None:
        return None

    async with app:
        h = await lost.enqueue()
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        # a worker that claims and dies: its leases are never renewed. Claims come often
        # (a gap of over half a lease would be bridged as a server that stood still)

        async def claimed() -> bool:
            reply = (await broker.run_calls([broker.claim_call(ks, "ghost", 1)]))[0]
            return len(reply) == 4

        await eventually(claimed, interval=0.02)
        await eventually(claimed, interval=0.02)  # requeued when its lease lapsed

        async def failed() -> bool:
            await broker.run_calls([broker.claim_call(ks, "ghost", 1)])
            return str(await h.status()) == "failed"

        await eventually(failed, interval=0.02)
        events = await _events(app, queue_name)
        assert _kinds(events, h.id) == [
            "task.enqueued",
            "task.started",
            "task.requeued",
            "task.started",
            "task.failed",
        ]
        hist = await _history(app, queue_name, h.id)
        assert hist == [
            ("queued", ""),
            ("running", "ghost"),
            ("queued", "lease expired"),
            ("running", "ghost"),
            ("failed", "worker_lost"),
        ]


async def test_workflow_steps(segue_valkey: Engine, queue_name: str) -> None:
    app = _app(segue_valkey, queue_name)

    @app.task(name="first")
    async def first(ctx: Context) -> int:
        return 1

    @app.task(name="second")
    async def second(ctx: Context, x: int) -> int:
        return x + 1

    @app.task(name="breaks")
    async def breaks(ctx: Context, x: int) -> int:
        raise ValueError("no")

    async with app:
        wf = await (first.call() | second.call()).enqueue()
        await app.drain()
        assert await wf.result() == 2
        steps = [s.id for s in await wf.steps()]
        events = await _events(app, queue_name)
        assert _kinds(events, steps[0]) == ["task.enqueued", "task.started", "task.succeeded"]
        assert _kinds(events, steps[1]) == ["task.enqueued", "task.started", "task.succeeded"]
        assert [s for s, _ in await _history(app, queue_name, steps[1])] == [
            "waiting",
            "queued",
            "running",
            "succeeded",
        ]
        assert (await _history(app, queue_name, steps[1]))[1] == ("queued", "dependencies done")

        bad = await (first.call() | breaks.call() | second.call()).enqueue()
        await app.drain()
        ids = [s.id for s in await bad.steps()]
        events = await _events(app, queue_name)
        assert _kinds(events, ids[1])[-1] == "task.failed"
        assert _kinds(events, ids[2]) == ["task.enqueued", "task.failed"]
        hist = await _history(app, queue_name, ids[2])
        assert [s for s, _ in hist] == ["waiting", "failed"]
        assert hist[1][1].startswith("dependency breaks (")

        held = await (first.call() | second.call()).enqueue()
        await held.pause()
        await held.resume()
        await held.cancel()
        hids = [s.id for s in await held.steps()]
        events = await _events(app, queue_name)
        kinds = {tid: _kinds(events, tid) for tid in hids}
        assert kinds[hids[0]] == ["task.enqueued", "task.paused", "task.resumed", "task.cancelled"]
        assert kinds[hids[1]] == ["task.enqueued", "task.cancelled"]
