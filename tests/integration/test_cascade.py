"""Cascade to sub-tasks (issue 17, part 2): a cancel or pause of a task reaches the sub-tasks
it started with ctx.enqueue, recursively; a resume resumes only what the cascade paused; a
parent that ends FAILED or CANCELLED cancels its unfinished sub-tasks, except those started
with on_parent_end="abandon". Runs on valkey, the cluster and redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from segue import App, Context, TaskFailed, TaskHandle, TaskNotFound, TaskStatus, _calls
from segue._broker import make_async_client
from segue._keys import Keyspace
from segue._reconcile import Reconciler
from tests._support import Engine
from tests.integration.conftest import eventually, serving

WAIT = 10.0  # seconds a condition may take on a loaded machine


def tree(app: App, gate: asyncio.Event) -> Any:
    """root → 2 mids → 2 leaves each: the root and the mids wait (no slot held), the leaves
    run until `gate` opens, checkpointing. Returns the root task."""

    @app.task(name="leaf")
    async def leaf(ctx: Context) -> str:
        while not gate.is_set():
            await ctx.checkpoint()
            await asyncio.sleep(0.02)
        return ctx.task_id

    @app.task(name="mid")
    async def mid(ctx: Context) -> list[str]:
        return await ctx.wait_for(await ctx.enqueue([leaf.call(), leaf.call()]))

    @app.task(name="root")
    async def root(ctx: Context) -> list[list[str]]:
        return await ctx.wait_for(await ctx.enqueue([mid.call(), mid.call()]))

    return root


def below(root_id: str) -> tuple[list[str], list[str]]:
    """The mids and leaves of a root: ids '<parent id>.<n>'."""
    mids = [f"{root_id}.{i}" for i in (1, 2)]
    return mids, [f"{m}.{j}" for m in mids for j in (1, 2)]


async def statuses(app: App, ids: list[str]) -> list[TaskStatus | None]:
    """Each task's status; None for one not created yet."""
    out: list[TaskStatus | None] = []
    for i in ids:
        try:
            out.append(await (await app.task_handle(i)).status())
        except TaskNotFound:
            out.append(None)
    return out


async def all_in(app: App, ids: list[str], *wanted: TaskStatus) -> bool:
    return all(s in wanted for s in await statuses(app, ids))


async def cascade_markers(engine: Engine, ks: Keyspace) -> int:
    client: Any = make_async_client(engine.admin_url, cluster=engine.kind == "cluster")
    try:
        return int(await client.hlen(ks.base + "cascade"))
    finally:
        await client.aclose()


async def test_cancelling_the_root_of_a_3_level_tree_leaves_nothing_running(
    make_app: Callable[..., App], segue_engine: Engine, queue_name: str
) -> None:
    app = make_app(concurrency=8)
    gate = asyncio.Event()  # never opened: only the cancel ends the leaves
    root = tree(app, gate)
    async with app, serving(app):
        h: TaskHandle[Any] = await root.enqueue()
        mids, leaves = below(h.id)
        await eventually(lambda: all_in(app, leaves, TaskStatus.RUNNING), timeout=WAIT)
        assert await all_in(app, [h.id, *mids], TaskStatus.WAITING)
        assert await h.cancel() is TaskStatus.CANCELLED
        await eventually(lambda: all_in(app, leaves, TaskStatus.CANCELLED), timeout=WAIT)
        assert await all_in(app, mids, TaskStatus.CANCELLED)
        info = await (await app.task_handle(leaves[0])).info()
        assert f"cascade from {mids[0]}" in info.history[-1].reason
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        assert await broker.client.zcard(ks.leases) == 0  # nothing runs
        assert await cascade_markers(segue_engine, ks) == 0  # every walk is over


async def test_resume_after_a_tree_pause_resumes_only_what_the_cascade_paused(
    make_app: Callable[..., App], segue_engine: Engine, queue_name: str
) -> None:
    app = make_app(concurrency=8)
    gate = asyncio.Event()
    root = tree(app, gate)
    async with app, serving(app):
        h: TaskHandle[Any] = await root.enqueue()
        mids, leaves = below(h.id)
        await eventually(lambda: all_in(app, leaves, TaskStatus.RUNNING), timeout=WAIT)
        # an operator pauses one leaf first: that pause is theirs, not the cascade's
        mine = await app.task_handle(leaves[0])
        await mine.pause()
        await eventually(lambda: all_in(app, [mine.id], TaskStatus.PAUSED), timeout=WAIT)

        assert await h.pause() is TaskStatus.WAITING  # held where it is
        await eventually(lambda: all_in(app, leaves, TaskStatus.PAUSED), timeout=WAIT)
        assert await all_in(app, [h.id, *mids], TaskStatus.WAITING)
        others = leaves[1:]
        info = await (await app.task_handle(others[0])).info()
        assert "cascade from" in info.history[-1].reason

        await h.resume()  # the walk is over when it returns (a small tree)
        assert await mine.status() is TaskStatus.PAUSED
        assert TaskStatus.PAUSED not in await statuses(app, others)
        gate.set()
        await eventually(lambda: all_in(app, others, TaskStatus.SUCCEEDED), timeout=WAIT)
        assert await mine.status() is TaskStatus.PAUSED  # still the operator's
        assert await h.status() is TaskStatus.WAITING  # for the leaf held by the operator
        await mine.resume()
        assert len(await h.result(timeout=WAIT)) == 2
        ks = (await app._client.broker()).keyspace(queue_name)
        assert await cascade_markers(segue_engine, ks) == 0


async def test_abandoned_sub_tasks_run_on_when_their_parent_is_cancelled(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=4)
    gate = asyncio.Event()

    @app.task(name="worker_bee")
    async def worker_bee(ctx: Context) -> str:
        while not gate.is_set():
            await ctx.checkpoint()
            await asyncio.sleep(0.02)
        return "done"

    @app.task(name="hive")
    async def hive(ctx: Context) -> None:
        kept = await ctx.enqueue(worker_bee.call())
        left = await ctx.enqueue(worker_bee.call(), on_parent_end="abandon")
        await ctx.wait_for([kept, left])

    async with app, serving(app):
        h = await hive.enqueue()
        kept, left = f"{h.id}.1", f"{h.id}.2"
        await eventually(lambda: all_in(app, [kept, left], TaskStatus.RUNNING), timeout=WAIT)
        await h.pause()  # a pause leaves the abandoned one alone too
        await eventually(lambda: all_in(app, [kept], TaskStatus.PAUSED), timeout=WAIT)
        assert await all_in(app, [left], TaskStatus.RUNNING)
        await h.cancel()
        await eventually(lambda: all_in(app, [kept], TaskStatus.CANCELLED), timeout=WAIT)
        gate.set()
        left_handle = await app.task_handle(left)
        assert await left_handle.result(timeout=WAIT) == "done"


async def test_a_parent_that_fails_cancels_its_unfinished_sub_tasks(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=4)
    started = asyncio.Event()

    @app.task(name="long_child")
    async def long_child() -> None:
        started.set()
        await asyncio.sleep(60)

    @app.task(name="failing_parent", max_tries=1)
    async def failing_parent(ctx: Context) -> None:
        await ctx.enqueue(long_child.call())
        await asyncio.wait_for(started.wait(), WAIT)
        raise RuntimeError("parent broke")

    async with app, serving(app):
        h = await failing_parent.enqueue()
        await asyncio.wait_for(started.wait(), WAIT)
        child = await app.task_handle(f"{h.id}.1")
        assert await child.wait_for(timeout=WAIT) is TaskStatus.CANCELLED
        assert await h.status() is TaskStatus.FAILED
        info = await child.info()
        assert "parent ended failed" in info.history[-1].reason


async def test_a_lost_cascade_marker_is_restored_by_the_reconciler(
    make_app: Callable[..., App], segue_engine: Engine, queue_name: str
) -> None:
    app = make_app(concurrency=8)
    gate = asyncio.Event()
    root = tree(app, gate)
    async with app, serving(app):
        h: TaskHandle[Any] = await root.enqueue()
        _, leaves = below(h.id)
        await eventually(lambda: all_in(app, leaves, TaskStatus.RUNNING), timeout=WAIT)
        await h.pause()
        await eventually(lambda: all_in(app, leaves, TaskStatus.PAUSED), timeout=WAIT)
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        # what a resume of the root writes, without its marker (lost in a restore of an
        # older copy before any walk): the root's record says a walk is under way
        await broker.client.hdel(ks.task(h.id), "hold")
        await broker.client.hset(ks.task(h.id), mapping={"cz": "resume", "cw": "1"})
        repairs = await Reconciler(broker, "test", [ks]).run_pass(ks, steps=None)
        assert [(r.kind, r.task_id) for r in repairs] == [("cascade_lost", h.id)]
        gate.set()
        assert len(await h.result(timeout=WAIT)) == 2  # the workers walked it down


async def test_on_parent_end_takes_only_cancel_or_abandon(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="bad_policy", max_tries=1)
    async def bad_policy(ctx: Context) -> None:
        await ctx.enqueue(noop.call(), on_parent_end="detach")  # type: ignore[call-overload]

    async with app, serving(app):
        h = await bad_policy.enqueue()
        with pytest.raises(TaskFailed, match="on_parent_end='detach'"):
            await h.result(timeout=WAIT)


async def test_workflow_pause_resume_and_cancel_reach_a_steps_sub_tasks(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=8)
    gate = asyncio.Event()  # never opened: the cancel ends the leaves
    tree(app, gate)
    mid = app.registry["mid"]  # a step that starts two leaves and waits for them

    @app.task(name="tail")
    async def tail(x: list[str]) -> int:
        return len(x)

    async with app, serving(app):
        h = await (mid.call() | tail).enqueue()
        step = (await h.steps())[0].id
        leaves = [f"{step}.1", f"{step}.2"]
        await eventually(lambda: all_in(app, leaves, TaskStatus.RUNNING), timeout=WAIT)
        await h.pause(running=True)
        await eventually(lambda: all_in(app, leaves, TaskStatus.PAUSED), timeout=WAIT)
        await h.resume()
        assert TaskStatus.PAUSED not in await statuses(app, leaves)
        await h.cancel()
        await eventually(lambda: all_in(app, leaves, TaskStatus.CANCELLED), timeout=WAIT)
        assert await h.status() is TaskStatus.CANCELLED


async def test_the_walk_goes_in_bounded_batches_and_workers_finish_what_a_client_left(
    make_app: Callable[..., App], segue_engine: Engine, queue_name: str
) -> None:
    app = make_app()

    @app.task(name="later")
    async def later() -> None:
        return None

    @app.task(name="planner")
    async def planner(ctx: Context) -> None:
        await ctx.wait_for(await ctx.enqueue(later.options(delay=3600).call() for _ in range(5)))

    async with app:
        async with serving(app):
            h = await planner.enqueue()
            await h.wait_for(TaskStatus.WAITING, timeout=WAIT)
        kids = [f"{h.id}.{i}" for i in range(1, 6)]
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        # the command alone, as from a client that stopped right after it: no walk yet
        await broker.run_calls([_calls.control(ks, h.id, "pause", "test")])
        assert await all_in(app, kids, TaskStatus.SCHEDULED)
        assert await broker.cascade(ks, 2) == (2, 1)
        assert await statuses(app, kids) == [TaskStatus.PAUSED] * 2 + [TaskStatus.SCHEDULED] * 3
        assert await broker.cascade(ks, 2) == (2, 1)
        assert await broker.cascade(ks, 2) == (1, 0)
        assert await all_in(app, kids, TaskStatus.PAUSED)
        await broker.run_calls([_calls.control(ks, h.id, "cancel", "test")])
        async with serving(app):  # a worker's forwarder walks it
            await eventually(lambda: all_in(app, kids, TaskStatus.CANCELLED), timeout=WAIT)
        assert await cascade_markers(segue_engine, ks) == 0
