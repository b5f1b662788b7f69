"""Workflows and after= whose steps live on different queues (different Cluster slots).

Each crossing goes through the finishing queue's outbox and the forwarder (_forward.py).
Run on a single server, on the cluster, and on Redis when it is on PATH."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from segue import App, Context, Fail, TaskStatus
from segue._broker import GraphRecord
from segue._forward import forward_now
from tests.integration.conftest import eventually, serving


def _queues(queue_name: str) -> tuple[str, str, str]:
    return queue_name, f"{queue_name}b", f"{queue_name}c"


def _tasks(app: App) -> Any:
    @app.task(name="inc")
    async def inc(x: int) -> int:
        return x + 1

    @app.task(name="dbl")
    async def dbl(x: int) -> int:
        return x * 2

    @app.task(name="total")
    async def total(xs: list[int | None]) -> list[int | None]:
        return xs

    @app.task(name="boom", max_tries=1)
    async def boom(x: int) -> int:
        raise Fail("boom")

    return inc, dbl, total, boom


async def test_a_chain_across_three_queues_passes_each_result_on(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, dbl, _, _ = _tasks(app)
    async with app:
        wf = inc.call(1) | dbl.options(queue=qb) | inc.options(queue=qc) | dbl
        h = await wf.enqueue()
        assert await h.queues() == [qa, qb, qc]
        await app.drain(queues=[qa, qb, qc])
        assert await h.result(timeout=5) == 10  # ((1 + 1) * 2 + 1) * 2
        assert await h.status() is TaskStatus.SUCCEEDED
        steps = await h.steps()
        assert [(s.queue, s.result) for s in steps] == [(qa, 2), (qb, 4), (qc, 5), (qa, 10)]
        assert (await app.workflow_handle(h.id)).queue == qa
        # each queue's record of it ended: the main one only once every part told it so
        broker = await app._client.broker()
        for q in (qa, qb, qc):
            assert await broker.client.pttl(broker.keyspace(q).workflow(h.id)) > 0, q


async def test_a_serving_worker_forwards_between_its_queues(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, dbl, total, _ = _tasks(app)
    async with app, serving(app, queues=[qa, qb, qc]):
        g = app.group([dbl.options(queue=qb), inc.options(queue=qc)])
        h = await (inc.call(1) | g | total.options(queue=qb) | total).enqueue()
        assert await h.result(timeout=10) == [4, 3]  # merged on b, last step back on a
        # an operator's cancel (no worker finished the step) is forwarded at the next poll
        later = await (inc.options(delay=60).call(1) | inc.options(queue=qb)).enqueue()
        first, second = await later.steps()
        await (await app.task_handle(first.id)).cancel()
        follower = await app.task_handle(second.id)

        async def second_failed() -> bool:
            return await follower.status() is TaskStatus.FAILED

        await eventually(second_failed, timeout=5)
        info = await follower.info()
        assert info.error is not None and info.error.reason == "dependency_cancelled"
        broker = await app._client.broker()

        async def outboxes_empty() -> bool:
            # b's part of `later` ended with that delivery: its end goes on to a's record
            return not any([await broker.reads.outbox(broker.keyspace(q), 1) for q in (qa, qb, qc)])

        await eventually(outboxes_empty, timeout=5)
        assert await later.status() is TaskStatus.FAILED


async def test_a_fan_out_on_one_queue_fans_in_on_another(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app(concurrency=8)
    qa, qb, qc = _queues(queue_name)
    inc, dbl, total, _ = _tasks(app)
    async with app:
        members = [dbl.options(queue=qc).call(i) if i % 3 == 2 else dbl.call(i) for i in range(6)]
        h = await (app.group(members) | total.options(queue=qb)).enqueue()
        # a step on b fans out to members on a and c, whose list ends on a
        wf = inc.options(queue=qb).call(1) | app.group([dbl, inc.options(queue=qc)]) | total
        h2 = await wf.enqueue()
        # a group alone, members on two queues: the list in the group's order
        g = await app.group([inc.options(queue=qb).call(1), inc.call(2)]).enqueue()
        await app.drain(queues=[qa, qb, qc])
        assert await h.result(timeout=5) == [0, 2, 4, 6, 8, 10]
        assert await h2.result(timeout=5) == [4, 3]
        assert await g.result(timeout=5) == [2, 3]


async def test_after_waits_for_tasks_of_other_queues(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, _, _, boom = _tasks(app)
    async with app:
        x = await inc.enqueue(1)
        y = await inc.options(queue=qb).enqueue(2)
        z = await inc.options(queue=qc, after=[x, y, y.id]).enqueue(3)  # y named twice
        # a workflow step may wait for a task of another queue outside the workflow too
        w = await (inc.call(10) | inc.options(queue=qc, after=[y])).enqueue()
        await app.drain(queues=[qa, qc])
        assert await z.status() is TaskStatus.WAITING  # y has not run
        assert [s.status for s in await w.steps()][1] is TaskStatus.WAITING
        await app.drain(queues=[qb, qc])
        assert await z.result(timeout=5) == 4
        assert await w.result(timeout=5) == 12
        # a dependency that already succeeded counts at once; a missing one fails the task
        now = await inc.options(queue=qc, after=[x]).enqueue(5)
        assert await now.status() is TaskStatus.QUEUED
        gone = await inc.options(queue=qc, after=[f"{qb}:no-such-task"]).enqueue(1)
        assert await gone.status() is TaskStatus.FAILED
        info = await gone.info()
        assert info.error is not None and info.error.reason == "dependency_missing"
        # a failed dependency fails the task, naming it
        bad = await boom.options(queue=qb).enqueue(0)
        late = await inc.options(queue=qc, after=[bad]).enqueue(1)
        await app.drain(queues=[qb])
        assert await late.status() is TaskStatus.FAILED
        info = await late.info()
        assert info.error is not None and info.error.reason == "dependency_failed"
        assert f"boom ({bad.id}) ended failed" in info.error.message


async def test_failure_propagates_across_queues(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, _, total, boom = _tasks(app)
    async with app:
        wf = inc.call(1) | boom.options(queue=qb) | inc.options(queue=qc) | inc
        h = await wf.enqueue()
        cancelled = await (
            inc.call(1) | boom.options(queue=qb) | inc.options(queue=qc, on_failure="cancel")
        ).enqueue()
        optional = await (
            app.group([inc.call(1), boom.options(queue=qb, optional=True).call(2)])
            | total.options(queue=qc)
        ).enqueue()
        await app.drain(queues=[qa, qb, qc])
        assert await h.status() is TaskStatus.FAILED
        steps = await h.steps()
        assert [s.status for s in steps] == [TaskStatus.SUCCEEDED] + [TaskStatus.FAILED] * 3
        for step in steps[2:]:  # on queue c, then back on queue a: both name the root
            assert step.error is not None and step.error.reason == "dependency_failed"
            assert f"boom ({steps[1].id}) ended failed" in step.error.message
        assert [s.status for s in await cancelled.steps()][-1] is TaskStatus.CANCELLED
        assert await optional.result(timeout=5) == [2, None]


async def test_pause_resume_and_cancel_cover_every_queue(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, _, _, _ = _tasks(app)
    async with app:
        h = await (inc.call(1) | inc.options(queue=qb) | inc.options(queue=qc)).enqueue()
        c = await (inc.call(1) | inc.options(queue=qb) | inc.options(queue=qc)).enqueue()
        await app.drain(queues=[qa])  # the first steps ran; the second ones are queued on b
        assert await h.pause() is TaskStatus.PAUSED
        assert await c.cancel() is TaskStatus.CANCELLED
        assert [s.status for s in await c.steps()] == [
            TaskStatus.SUCCEEDED,
            TaskStatus.CANCELLED,
            TaskStatus.CANCELLED,
        ]
        assert [s.status for s in await h.steps()][1] is TaskStatus.PAUSED
        assert await app.drain(queues=[qb, qc]) == 0  # held on b, and c's steps cancelled
        assert [s.status for s in await h.steps()][1:] == [TaskStatus.PAUSED, TaskStatus.WAITING]
        assert await h.resume() is TaskStatus.RUNNING
        await app.drain(queues=[qb, qc])
        assert await h.result(timeout=5) == 4
        assert await c.status() is TaskStatus.CANCELLED


async def test_a_forwarded_entry_delivered_twice_changes_nothing(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, qc = _queues(queue_name)
    inc, _, total, _ = _tasks(app)
    async with app:
        # merge on b waits for a member on a and one on c; the member on a is optional, so
        # its cancel (no worker involved: nothing forwards) passes None on
        first = inc.options(optional=True).call(1)
        g = await (
            app.group([first, inc.options(queue=qc).call(2)]) | total.options(queue=qb)
        ).enqueue()
        step_a, _, merge = await g.steps()
        await (await app.task_handle(step_a.id)).cancel()
        broker = await app._client.broker()
        entries = await broker.reads.outbox(broker.keyspace(qa), 10)
        assert len(entries) == 1
        assert await broker.forward(broker.keyspace(qb), entries) == 1
        assert await broker.forward(broker.keyspace(qb), entries) == 0  # the repeat
        await broker.outbox_done(broker.keyspace(qa), entries)
        # an entry the server cannot apply is set aside, not retried for ever
        await broker.client.rpush(
            broker.keyspace(qa).outbox, json.dumps({"k": "d", "d": f"{qb}:x"})
        )
        await forward_now(broker, [qa])
        assert await broker.reads.outbox(broker.keyspace(qa), 10) == []
        handle = await app.task_handle(merge.id)
        assert await handle.status() is TaskStatus.WAITING  # still waits for the member on c
        await app.drain(queues=[qc, qb])
        assert await g.result(timeout=5) == [None, 3]
        assert (await handle.info()).tries == 1


async def test_a_step_that_ends_before_a_later_part_exists_is_applied_when_it_does(
    make_app: Callable[..., App], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    qa, qb, _ = _queues(queue_name)
    inc, dbl, _, _ = _tasks(app)
    create = app._enqueuer.enqueue_graph

    async def main_part_runs_first(
        queue: str, fields: list[Any], record: GraphRecord | None, levels: Any = ()
    ) -> list[Any]:
        reply = await create(queue, fields, record, levels)
        if record is not None and not record.part:
            # the first step runs and its end is forwarded before b's part exists
            assert await app.drain(queues=[qa]) == 1
        return reply

    monkeypatch.setattr(app._enqueuer, "enqueue_graph", main_part_runs_first)
    async with app:
        h = await (inc.call(1) | dbl.options(queue=qb) | inc).enqueue()
        broker = await app._client.broker()
        assert await broker.reads.outbox(broker.keyspace(qa), 10) == []
        await app.drain(queues=[qb, qa])
        assert await h.result(timeout=5) == 5
        step_b = (await h.steps())[1]
        assert not await broker.client.exists(broker.keyspace(qb).key("early", step_b.id))


async def test_a_sub_task_on_another_queue_is_still_refused_clearly(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    qa, qb, _ = _queues(queue_name)

    @app.task(name="child")
    async def child() -> None: ...

    @app.task(name="parent", max_tries=1)
    async def parent(ctx: Context) -> None:
        await ctx.enqueue(child.options(queue=qb).call())

    async with app:
        h = await parent.enqueue()
        await app.drain(queues=[qa])
        info = await h.info()
        assert info.status is TaskStatus.FAILED and info.error is not None
        assert "is a sub-task of a task on queue" in info.error.message
        assert not any((await app.queue_counts(qb)).values())  # nothing was written there


async def test_a_workflow_ending_with_a_wide_group_gives_every_result(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app(concurrency=32)
    qa, qb, _ = _queues(queue_name)
    _, dbl, _, _ = _tasks(app)
    async with app:
        # more last steps than redis-py's pool has connections (100), on two queues
        members = [dbl.options(queue=qb).call(i) if i % 2 else dbl.call(i) for i in range(150)]
        h = await app.group(members).enqueue()
        await app.drain(queues=[qa, qb])
        assert await h.result(timeout=10) == [2 * i for i in range(150)]
        assert await h.status() is TaskStatus.SUCCEEDED
