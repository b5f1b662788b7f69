"""Contract tests of workflows: chains, groups, after=, sub-tasks, pausing a workflow.
Run on a single server, on the cluster, and on Redis when it is on PATH."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from segue import (
    App,
    ConfigurationError,
    Context,
    InvalidTransition,
    Retry,
    TaskCancelled,
    TaskFailed,
    TaskStatus,
)
from tests._support import keys_of
from tests.integration.conftest import eventually, serving


async def test_a_chain_threads_each_result_into_the_next_step(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="fetch")
    async def fetch(url: str) -> str:
        return f"<{url}>"

    @app.task(name="length")
    def length(text: str) -> int:
        return len(text)

    @app.task(name="add")
    async def add(x: int, extra: int = 0) -> int:
        return x + extra

    @app.task(name="is_even")
    async def is_even(x: int) -> bool:
        return x % 2 == 0

    async with app:
        wf = fetch.call("abc") | length | add.call(extra=1) | add.call(extra=10) | is_even
        h = await wf.enqueue()
        assert await h.status() is TaskStatus.RUNNING
        await app.drain()
        assert await h.result(timeout=5) is True  # len("<abc>") + 1 + 10 = 16
        steps = await h.steps()
        assert [s.name for s in steps] == ["fetch", "length", "add", "add", "is_even"]
        assert [s.result for s in steps] == ["<abc>", 5, 6, 16, True]
        assert await h.status() is TaskStatus.SUCCEEDED


async def test_then_builds_the_same_chain(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="start")
    async def start(x: int) -> int:
        return x

    @app.task(name="scale")
    async def scale(x: int, factor: int) -> int:
        return x * factor

    async with app:
        h = await start.call(3).then(scale, factor=4).then(scale, 10).enqueue()
        await app.drain()
        assert await h.result(timeout=5) == 120


async def test_a_group_fans_out_and_the_next_step_gets_results_in_order(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=8)

    @app.task(name="square")
    async def square(x: int) -> int:
        await asyncio.sleep(0.001 * (50 - x))  # finish out of order
        return x * x

    @app.task(name="total")
    async def total(values: list[int]) -> list[int]:
        return values

    async with app:
        h = await (app.group(square.call(i) for i in range(50)) | total.call()).enqueue()
        await app.drain()
        assert await h.result(timeout=10) == [i * i for i in range(50)]
        g = await app.group([square.call(2), square.call(3)]).enqueue()
        await app.drain()
        assert await g.result(timeout=5) == [4, 9]


async def test_groups_nest_in_chains_and_chains_in_groups(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="inc")
    async def inc(x: int) -> int:
        return x + 1

    @app.task(name="dbl")
    async def dbl(x: int) -> int:
        return x * 2

    @app.task(name="sum_all")
    async def sum_all(xs: list[int]) -> int:
        return sum(xs)

    async with app:
        # 1 -> inc -> (dbl, inc|dbl) -> sum  = 2 -> (4, 6) -> 10
        wf = inc.call(1) | app.group([dbl.call(), inc.call() | dbl]) | sum_all
        h = await wf.enqueue()
        await app.drain()
        assert await h.result(timeout=5) == 10


async def test_a_failed_step_fails_the_workflow_naming_it(make_app: Callable[..., App]) -> None:
    app = make_app()
    ran: list[str] = []

    @app.task(name="ok_step")
    async def ok_step(x: int) -> int:
        ran.append("ok")
        return x

    @app.task(name="bad_step", max_tries=1)
    async def bad_step(x: int) -> int:
        raise ValueError(f"bad input {x}")

    @app.task(name="after_bad")
    async def after_bad(x: int) -> int:
        ran.append("after")
        return x

    async with app:
        h = await (ok_step.call(1) | bad_step | after_bad).enqueue()
        await app.drain()
        with pytest.raises(TaskFailed, match=r"bad_step .* ended failed"):
            await h.result(timeout=5)
        assert ran == ["ok"]
        assert await h.status() is TaskStatus.FAILED
        statuses = [s.status for s in await h.steps()]
        assert statuses == [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.FAILED]


async def test_an_optional_step_does_not_fail_the_workflow(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="maybe", max_tries=1)
    async def maybe(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    @app.task(name="collect")
    async def collect(xs: list[int | None]) -> list[int | None]:
        return xs

    async with app:
        group = app.group([maybe.call(1), maybe.options(optional=True).call(-1), maybe.call(3)])
        h = await (group | collect).enqueue()
        await app.drain()
        assert await h.result(timeout=5) == [1, None, 3]


async def test_after_waits_for_dependencies_and_propagates_failure_and_cancel(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="step", max_tries=1)
    async def step(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    async with app:
        a = await step.enqueue(1)
        b = await step.enqueue(2)
        c = await step.options(after=[a, b]).enqueue(3)
        assert await c.status() is TaskStatus.WAITING
        await app.drain()
        assert await c.result(timeout=5) == 3
        done = await step.options(after=[a]).enqueue(4)  # a dependency that already ended
        assert await done.status() is TaskStatus.QUEUED
        # three levels: bad -> l1 (fail) -> l2 (cancel) -> l3 (fail)
        bad = await step.enqueue(-1)
        l1 = await step.options(after=[bad]).enqueue(5)
        l2 = await step.options(after=[l1], on_failure="cancel").enqueue(6)
        l3 = await step.options(after=[l2]).enqueue(7)
        await app.drain()
        assert await l1.status() is TaskStatus.FAILED
        assert await l2.status() is TaskStatus.CANCELLED
        assert await l3.status() is TaskStatus.FAILED
        with pytest.raises(TaskFailed, match="dependency"):
            await l3.result()
        # cancelling a dependency propagates too
        x = await step.options(delay=60).enqueue(8)
        y = await step.options(after=[x]).enqueue(9)
        await x.cancel()
        assert await y.status() is TaskStatus.FAILED
        info = await y.info()
        assert info.error is not None and info.error.reason == "dependency_cancelled"


async def test_pausing_a_workflow_holds_its_next_steps_until_resumed(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    ran: list[int] = []
    gate = asyncio.Event()

    @app.task(name="stage")
    async def stage(x: int) -> int:
        ran.append(x)
        if x == 3:
            await gate.wait()
        return x + 1

    async with app:
        chain = stage.call(1)
        for _ in range(9):
            chain = chain | stage  # type: ignore[assignment]
        h = await chain.enqueue()
        async with serving(app):
            await eventually(lambda: _has(ran, 3))  # step 3 is running
            assert await h.pause() is TaskStatus.PAUSED
            gate.set()  # the running step finishes; the next one is held
            steps = await _wait_step(h, 3, TaskStatus.PAUSED)
            assert steps[2].status is TaskStatus.SUCCEEDED
            await asyncio.sleep(0.3)
            assert ran == [1, 2, 3]
            assert await h.resume() is TaskStatus.RUNNING
            assert await h.result(timeout=10) == 11
        assert ran == list(range(1, 11))
        with pytest.raises(InvalidTransition):
            await h.pause()


async def _has(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _wait_step(h: Any, index: int, status: TaskStatus) -> list[Any]:
    async def reached() -> bool:
        steps = await h.steps()
        return bool(steps[index].status is status)

    await eventually(reached, timeout=5)
    steps: list[Any] = await h.steps()
    return steps


async def test_cancelling_a_workflow_stops_running_steps_and_drops_the_rest(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app(concurrency=4)
    started = asyncio.Event()

    @app.task(name="slow")
    async def slow(x: int) -> int:
        started.set()
        await asyncio.sleep(30)
        return x

    @app.task(name="merge")
    async def merge(xs: list[int]) -> int:
        return sum(xs)

    async with app:
        wf = app.group(slow.call(i) for i in range(6)) | merge
        h = await wf.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 5)
            assert await h.cancel() is TaskStatus.CANCELLED

            async def all_cancelled() -> bool:
                return all(s.status is TaskStatus.CANCELLED for s in await h.steps())

            await eventually(all_cancelled, timeout=5)
        with pytest.raises(TaskCancelled):
            await h.result(timeout=1)
        assert await keys_of(segue_engine, f"*next:{h.id}*") == []


async def test_sub_tasks_are_awaited_durably_without_holding_a_slot(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=2)
    parent_runs: list[int] = []

    @app.task(name="child")
    async def child(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 10

    @app.task(name="parent")
    async def parent(ctx: Context, n: int) -> int:
        parent_runs.append(ctx.tries)
        handles = await ctx.enqueue(child.call(i) for i in range(n))
        results = await ctx.wait_for(handles)
        return sum(results)

    async with app:
        h = await parent.enqueue(5)
        await app.drain()
        assert await h.result(timeout=5) == 100
        info = await h.info()
        assert TaskStatus.WAITING in [t.status for t in info.history]
        assert info.tries == 1  # waiting spent no try
        assert parent_runs == [1, 1]  # ran, waited, ran again and found the results
        children = [t for t in await app.tasks(TaskStatus.SUCCEEDED) if t.name == "child"]
        assert sorted(c.id for c in children) == [f"{h.id}.{i}" for i in range(1, 6)]
        assert Counter(c.result for c in children) == Counter(i * 10 for i in range(5))


async def test_a_failed_sub_task_raises_in_the_parent(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="bad_child", max_tries=1)
    async def bad_child() -> int:
        raise RuntimeError("child broke")

    @app.task(name="waiting_parent", max_tries=1)
    async def waiting_parent(ctx: Context) -> str:
        h = await ctx.enqueue(bad_child.call())
        try:
            await ctx.wait_for([h])
        except TaskFailed as exc:
            return f"child failed: {exc.message}"
        return "no error"

    async with app:
        h = await waiting_parent.enqueue()
        await app.drain()
        assert await h.result(timeout=5) == "child failed: child broke"


async def test_workflow_handle_from_an_id_in_another_client(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="one")
    async def one() -> int:
        return 1

    @app.task(name="plus")
    async def plus(x: int) -> int:
        return x + 1

    async with app:
        h = await (one.call() | plus).enqueue()
        await app.drain()
    async with make_app() as other:
        again = await other.workflow_handle(h.id)
        assert await again.result(timeout=5) == 2
        assert await again.status() is TaskStatus.SUCCEEDED


async def test_sub_tasks_with_ttl_0_keep_their_records_while_the_parent_needs_them(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    child_runs: list[int] = []

    @app.task(name="fleeting", ttl=0)
    async def fleeting(i: int) -> int:
        child_runs.append(i)
        return i

    @app.task(name="collector")
    async def collector(ctx: Context) -> list[int]:
        hs = await ctx.enqueue(fleeting.call(i) for i in range(3))
        return await ctx.wait_for(hs)

    async with app:
        h = await collector.enqueue()
        await app.drain()
        assert await h.result(timeout=5) == [0, 1, 2]
        assert sorted(child_runs) == [0, 1, 2]  # each child once: the re-run found them


async def test_a_step_that_retries_while_its_workflow_is_paused_is_held(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    tries: list[int] = []
    gate = asyncio.Event()

    @app.task(name="wobbly", max_tries=3)
    async def wobbly(ctx: Context, x: int) -> int:
        tries.append(ctx.tries)
        if ctx.tries == 1:
            await gate.wait()
            raise Retry(delay=0.05)
        return x

    @app.task(name="next_one")
    async def next_one(x: int) -> int:
        return x + 1

    async with app:
        h = await (wobbly.call(1) | next_one).enqueue()
        async with serving(app):
            await eventually(lambda: _has(tries, 1))
            await h.pause()
            gate.set()
            await _wait_step(h, 0, TaskStatus.PAUSED)
            await asyncio.sleep(0.2)
            assert tries == [1]  # the retry did not run while the workflow was paused
            await h.resume()
            assert await h.result(timeout=5) == 2
        assert tries == [1, 2]


async def test_after_with_a_delay_and_after_on_a_workflow_step(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="inc2")
    async def inc2(x: int) -> int:
        return x + 1

    async with app:
        first = await inc2.enqueue(0)
        await app.drain()
        later = await inc2.options(after=[first], delay=30).enqueue(5)
        assert await later.status() is TaskStatus.SCHEDULED  # the delay still counts
        gate = await inc2.options(delay=0.3).enqueue(100)
        wf = inc2.call(1) | inc2.options(after=[gate])
        h = await wf.enqueue()
        waiting = await app.tasks(TaskStatus.WAITING)
        assert [t.name for t in waiting] == ["inc2"]
        assert (await app.queue().counts())["waiting"] == 1
        await app.drain(horizon=1.0)
        assert await h.result(timeout=5) == 3
        steps = await h.steps()
        gate_ended = (await gate.info()).ended_at
        assert steps[1].started_at is not None and gate_ended is not None
        assert steps[1].started_at >= gate_ended


async def test_an_optional_last_step_does_not_fail_the_workflow(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="base")
    async def base(x: int) -> int:
        return x

    @app.task(name="notify", max_tries=1)
    async def notify(x: int) -> int | None:
        raise ConnectionError("mail server down")

    async with app:
        h = await (base.call(1) | notify.options(optional=True)).enqueue()
        await app.drain()
        assert await h.result(timeout=5) is None
        assert await h.status() is TaskStatus.SUCCEEDED


async def test_workflow_building_rules(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="plain")
    async def plain(x: int) -> int:
        return x

    @app.task(name="only_one", unique=True)
    async def only_one(x: int) -> int:
        return x

    @app.task(name="elsewhere_task", queue="elsewhere")
    async def elsewhere_task(x: int) -> int:
        return x

    async with app:
        with pytest.raises(ConfigurationError, match="is unique"):
            await (plain.call(1) | only_one).enqueue()
        # bare tasks in a group, and a workflow that starts on another queue: steps join it
        h = await (elsewhere_task.call(2) | app.group([plain, plain])).enqueue()
        assert h.queue == "elsewhere"
        await app.drain(queues=["elsewhere"])
        assert await h.result(timeout=5) == [2, 2]
        with pytest.raises(InvalidTransition, match="cannot pause workflow"):
            await h.pause(running=True)


async def test_an_optional_last_step_hides_neither_a_cancel_nor_an_earlier_failure(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="must", max_tries=1)
    async def must(x: int) -> int:
        if x < 0:
            raise ValueError("required step failed")
        return x

    @app.task(name="extra")
    async def extra(x: int) -> int:
        return x

    async with app:
        cancelled = await (must.call(1) | extra.options(optional=True)).enqueue()
        assert await cancelled.cancel() is TaskStatus.CANCELLED
        broken = await (must.call(-1) | extra.options(optional=True)).enqueue()
        await app.drain()
        assert await broken.status() is TaskStatus.FAILED
        with pytest.raises(TaskFailed, match="must"):
            await broken.result(timeout=5)
