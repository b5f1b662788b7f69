"""Sagas: a workflow step's compensation (`.options(compensate=...)`) runs when the workflow
fails or is cancelled, for the steps that succeeded, in reverse order. Run on a single
server, on the cluster, and on Redis when it is on PATH."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from segue import (
    App,
    ConfigurationError,
    Context,
    Hook,
    StreamRestarted,
    TaskFailed,
    TaskStatus,
)
from tests._support import admin_client, keys_of
from tests.integration.conftest import eventually, serving


def _saga(app: App, effects: list[str], *, fail_at: str = "ship") -> tuple[Any, ...]:
    """reserve, charge, ship, notify: each records its effect (outside segue), the one
    named `fail_at` fails; reserve and charge have compensations."""

    @app.task(name="saga.reserve")
    async def reserve(order: str) -> str:
        effects.append("reserve")
        return f"hold-{order}"

    @app.task(name="saga.charge")
    async def charge(hold: str, amount: int) -> str:
        effects.append("charge")
        return f"payment-{amount}"

    @app.task(name="saga.ship", max_tries=1)
    async def ship(payment: str) -> str:
        if fail_at == "ship":
            raise RuntimeError("no courier")
        effects.append("ship")
        return "parcel"

    @app.task(name="saga.notify")
    async def notify(parcel: str) -> None:
        effects.append("notify")

    @app.task(name="saga.release")
    async def release(hold: str, reason: str) -> None:
        effects.append(f"release {hold} {reason}")

    @app.task(name="saga.refund")
    async def refund(payment: str) -> None:
        effects.append(f"refund {payment}")

    return reserve, charge, ship, notify, release, refund


async def test_a_saga_failing_at_step_3_compensates_steps_2_then_1(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    effects: list[str] = []
    reserve, charge, ship, notify, release, refund = _saga(app, effects)
    async with app:
        wf = (
            reserve.call("o1").options(compensate=release.call(reason="failed"))
            | charge.call(amount=30).options(compensate=refund.call())
            | ship.call()
            | notify.call()
        )
        h = await wf.enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed):
                await h.result(timeout=10)
        assert effects == ["reserve", "charge", "refund payment-30", "release hold-o1 failed"]
        assert await h.status() is TaskStatus.FAILED
        steps = await h.steps()
        assert [s.status for s in steps] == ["succeeded", "succeeded", "failed", "failed"]
        comps = [s.compensation for s in steps]
        assert comps[0] is not None and comps[0].name == "saga.release"
        assert comps[1] is not None and comps[1].name == "saga.refund"
        assert comps[0].status is comps[1].status is TaskStatus.SUCCEEDED
        assert comps[0].workflow == h.id
        assert comps[2] is None and comps[3] is None
    # the saga's state lives in the workflow record, which expires once it ended (no leak)
    client = admin_client(segue_engine)
    try:
        assert await client.pttl(f"segue:{{{h.queue}}}:wf:{h.id}") > 0
    finally:
        await client.aclose()


async def test_a_cancelled_saga_compensates_what_succeeded_and_a_second_cancel_does_not_stop_it(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=4)
    effects: list[str] = []
    started = asyncio.Event()
    undo = asyncio.Event()

    @app.task(name="book")
    async def book(n: int) -> int:
        effects.append(f"book {n}")
        return n

    @app.task(name="wait_forever")
    async def wait_forever(n: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return n

    @app.task(name="unbook")
    async def unbook(n: int) -> None:
        effects.append(f"unbook {n}")
        await undo.wait()

    async with app:
        wf = (
            book.call(1).options(compensate=unbook.call())
            | wait_forever.options(compensate=unbook.call())
            | book.call().options(compensate=unbook.call())
        )
        h = await wf.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 10)
            await h.cancel()

            async def compensating() -> bool:
                return await h.status() is TaskStatus.COMPENSATING

            await eventually(compensating)
            assert await h.cancel() is TaskStatus.COMPENSATING  # it does not stop compensation
            undo.set()
            assert await h.wait_ended(timeout=10) is TaskStatus.CANCELLED
        # the interrupted step and the one that never ran are not compensated
        assert effects == ["book 1", "unbook 1"]
        steps = await h.steps()
        assert [s.status for s in steps] == ["succeeded", "cancelled", "cancelled"]
        assert steps[0].compensation is not None
        assert steps[0].compensation.status is TaskStatus.SUCCEEDED
        assert steps[1].compensation is None is steps[2].compensation


async def test_the_compensations_of_a_group_run_together(make_app: Callable[..., App]) -> None:
    app = make_app(concurrency=4)
    running: set[int] = set()
    together = asyncio.Event()
    undone: list[int] = []

    @app.task(name="member")
    async def member(n: int) -> int:
        return n

    @app.task(name="merge", max_tries=1)
    async def merge(values: list[int]) -> None:
        raise RuntimeError("cannot merge")

    @app.task(name="undo_member")
    async def undo_member(n: int) -> None:
        running.add(n)
        if len(running) == 3:
            together.set()
        # one at a time, the first would wait here for ever: the test would time out
        await asyncio.wait_for(together.wait(), 10)
        undone.append(n)

    async with app:
        group = app.group(member.call(n).options(compensate=undo_member.call()) for n in (1, 2, 3))
        h = await (group | merge.call()).enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed):
                await h.result(timeout=15)
        assert sorted(undone) == [1, 2, 3]
        assert await h.status() is TaskStatus.FAILED


async def test_a_compensation_whose_tries_are_spent_is_dead_lettered_naming_its_workflow(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    effects: list[str] = []

    @app.task(name="step")
    async def step(n: int) -> int:
        return n

    @app.task(name="boom", max_tries=1)
    async def boom(n: int) -> None:
        raise RuntimeError("no")

    @app.task(name="broken_undo", max_tries=2, retry_backoff=0.05)
    async def broken_undo(n: int) -> None:
        raise RuntimeError("cannot undo")

    @app.task(name="undo")
    async def undo(n: int) -> None:
        effects.append(f"undo {n}")

    async with app:
        wf = (
            step.call(1).options(compensate=undo.call())
            | step.call().options(compensate=broken_undo.call())
            | boom.call()
        )
        h = await wf.enqueue()
        async with serving(app):
            assert await h.wait_ended(timeout=15) is TaskStatus.FAILED
        # the earlier compensation still ran after the later one failed for good
        assert effects == ["undo 1"]
        [dead] = [d for d in await app.dead_letters(app.settings.queue) if d.name != "boom"]
        assert dead.name == "broken_undo" and dead.tries == 2
        assert dead.workflow == h.id and h.id in dead.id
        steps = await h.steps()
        assert steps[1].compensation is not None
        assert steps[1].compensation.status is TaskStatus.FAILED


async def test_a_compensation_that_streams_and_is_retried_still_tells_its_workflow(
    make_app: Callable[..., App],
) -> None:
    # a compensation's marker and the output stream's fields live side by side in its
    # record: its streaming, and the retry that clears the stream's fields, keep the marker
    app = make_app()

    @app.task(name="step")
    async def step(n: int) -> int:
        return n

    @app.task(name="boom", max_tries=1)
    async def boom(n: int) -> None:
        raise RuntimeError("no")

    @app.task(name="loud_undo", max_tries=2, retry_backoff=0.01)
    async def loud_undo(ctx: Context, n: int) -> str:
        await ctx.stream(f"undo {n} try {ctx.tries}")
        if ctx.tries == 1:
            raise RuntimeError("first try fails")
        return "undone"

    async with app:
        h = await (step.call(1).options(compensate=loud_undo.call()) | boom.call()).enqueue()
        async with serving(app):
            assert await h.wait_ended(timeout=10) is TaskStatus.FAILED
        comp = (await h.steps())[0].compensation
        assert comp is not None and comp.status is TaskStatus.SUCCEEDED
        assert comp.workflow == h.id and comp.tries == 2
        got = [c async for c in (await app.task_handle(comp.id)).stream()]
        assert got[0] == "undo 1 try 1" and got[-1] == "undo 1 try 2"
        assert isinstance(got[1], StreamRestarted)


async def test_compensate_is_refused_outside_a_workflow(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="t")
    async def t(n: int) -> int:
        return n

    async with app:
        with pytest.raises(ConfigurationError, match="compensate= is for workflow steps"):
            await t.options(compensate=t.call()).enqueue(1)


async def test_segue_workflow_shows_each_compensation(segue_valkey: Any, queue_name: str) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)
    effects: list[str] = []
    reserve, charge, ship, _notify, release, refund = _saga(app, effects)
    async with app:
        wf = (
            reserve.call("o2").options(compensate=release.call(reason="cli"))
            | charge.call(amount=5).options(compensate=refund.call())
            | ship.call()
        )
        h = await wf.enqueue()
        async with serving(app):
            assert await h.wait_ended(timeout=10) is TaskStatus.FAILED
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "segue", "workflow", "status", h.id, "--url", segue_valkey.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert shown.returncode == 0, shown.stderr
    assert f"workflow {h.id}: failed" in shown.stdout
    lines = shown.stdout.splitlines()
    assert any("saga.release succeeded" in line for line in lines)
    assert any("saga.refund succeeded" in line for line in lines)


async def test_steps_and_compensations_on_other_queues_go_through_the_outbox(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    effects: list[str] = []
    reserve, charge, ship, _notify, release, refund = _saga(app, effects)
    pay, undo = f"{queue_name}-pay", f"{queue_name}-undo"
    async with app:
        wf = (
            reserve.call("o3").options(compensate=release.call(reason="x").options(queue=undo))
            | charge.call(amount=9).options(queue=pay, compensate=refund.call())
            | ship.call()
        )
        h = await wf.enqueue()
        async with serving(app, queues=[queue_name, pay, undo]):
            with pytest.raises(TaskFailed):
                await h.result(timeout=15)
        assert effects == ["reserve", "charge", "refund payment-9", "release hold-o3 x"]
        steps = await h.steps()
        assert steps[0].compensation is not None and steps[0].compensation.queue == undo
        # the refund's queue is its own (the App's here), not its step's
        assert steps[1].compensation is not None
        assert steps[1].compensation.queue == queue_name
        assert await h.status() is TaskStatus.FAILED


async def test_the_reconciler_asks_again_for_a_compensation_whose_task_was_lost(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    """A compensation's record deleted while it runs (as an eviction, or a restore from an
    older copy, would leave it): the workflow would wait for its end for ever; the reconciler
    asks for it again, it runs again, and the workflow ends."""
    app = make_app(reconcile_seconds=0.5, lease_seconds=1.0)
    repairs: list[str] = []

    class Recorder(Hook):
        async def on_repair(self, queue: str, kind: str, task_id: str) -> None:
            repairs.append(kind)

    app.add_hook(Recorder())
    runs: list[int] = []
    started, go_on = asyncio.Event(), asyncio.Event()

    @app.task(name="step")
    async def step(n: int) -> int:
        return n

    @app.task(name="boom", max_tries=1)
    async def boom(n: int) -> None:
        raise RuntimeError("no")

    @app.task(name="undo")
    async def undo(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            started.set()
            await go_on.wait()

    async with app:
        h = await (step.call(1).options(compensate=undo.call()) | boom.call()).enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 10)
            client = admin_client(segue_engine)
            try:
                await client.delete(f"segue:{{{h.queue}}}:task:{h.id}.c1")
            finally:
                await client.aclose()
            go_on.set()  # its end finds no record: nothing tells the workflow
            assert await h.wait_ended(timeout=15) is TaskStatus.FAILED
        assert runs == [1, 1]
        assert "saga_asked_again" in repairs


async def test_a_saga_leaves_no_key_behind_once_its_records_expired(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app(result_ttl_seconds=0.3)
    effects: list[str] = []
    reserve, charge, ship, _notify, release, refund = _saga(app, effects)
    async with app:
        wf = (
            reserve.call("o4").options(compensate=release.call(reason="leak"))
            | charge.call(amount=1).options(compensate=refund.call())
            | ship.call()
        )
        h = await wf.enqueue()
        async with serving(app):
            assert await h.wait_ended(timeout=10) is TaskStatus.FAILED
        dead = {f"segue:{{{queue_name}}}:task:{d.id}" for d in await app.dead_letters(queue_name)}
    assert len(dead) == 1  # ship's record, kept in the dead-letter list by design
    per_task = ("task", "state", "next", "wf", "early", "uniq", "outbox")

    async def gone() -> bool:
        keys = await keys_of(segue_engine, f"segue:{{{queue_name}}}:*")
        left = [k for k in keys if k.split(":")[2] in per_task and k not in dead]
        return not left

    await eventually(gone, timeout=5)


async def test_a_step_that_succeeds_after_the_cancel_arrived_is_compensated(
    make_app: Callable[..., App],
) -> None:
    app = make_app(concurrency=4)
    effects: list[str] = []
    started = asyncio.Event()

    @app.task(name="book")
    async def book(n: int) -> int:
        return n

    @app.task(name="finish_anyway")
    async def finish_anyway(n: int) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # it completes its work instead of stopping: it succeeded after the cancel
            effects.append(f"finished {n + 1}")
            return n + 1
        return n

    @app.task(name="unbook")
    async def unbook(n: int) -> None:
        effects.append(f"unbook {n}")

    async with app:
        wf = (
            book.call(1).options(compensate=unbook.call())
            | finish_anyway.options(compensate=unbook.call())
            | book.call().options(compensate=unbook.call())
        )
        h = await wf.enqueue()
        async with serving(app):
            await asyncio.wait_for(started.wait(), 10)
            await h.cancel()
            assert await h.wait_ended(timeout=10) is TaskStatus.CANCELLED
        steps = await h.steps()
        assert [s.status for s in steps] == ["succeeded", "succeeded", "cancelled"]
        assert effects == ["finished 2", "unbook 2", "unbook 1"]
