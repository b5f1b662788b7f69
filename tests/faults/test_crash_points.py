"""★W4 (RELIABILITY §8 A): crash-point enumeration.

Every fault point of the worker's task path (segue._faults.POINTS) × {kill, stall beyond
the lease}: a worker with `SEGUE_FAULTPOINT=<point>:<action>` (acting once) runs a few
tasks of a queue of the cell's own and is SIGKILLed, or frozen for three leases, at that
point; a rescuer worker serving every cell's queue is started once the point was reached.
Per cell: nothing acknowledged is lost, nothing succeeds twice, nothing is left queued or
running, and no task runs more than once beyond its recorded interruptions (at most one
extra run per faulted task). All cells run at once, on one server, to keep the matrix
cheap. `cron_after_enqueue` (the scheduler's point) has a cell of its own below.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskHandle, TaskStatus
from segue._faults import POINTS
from segue._scheduler import tick_id
from tests._support import Engine, start_server, stop
from tests._workers import Fleet, Slot
from tests.apps import faults
from tests.faults.checker import Verdict, check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP
from tests.integration.conftest import eventually

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

LEASE = 1.5
POLL = 0.2
STALL = 3 * LEASE
TASK_POINTS = [p for p in POINTS if p != "cron_after_enqueue"]
# points reached only when the test asks for something of a running task
TRIGGERED = {"during_requeue", "after_pause_ack", "during_cancel"}
ACTIONS = {"kill": "kill", "stall": f"stall:{STALL}"}


@dataclasses.dataclass
class Cell:
    """One point × action: its queue, its faulted worker, what it enqueued."""

    point: str
    action: str
    queue: str
    hits: Path
    history: History
    slot: Slot | None = None
    target: str | None = None  # the task the test pauses or cancels (TRIGGERED points)
    verdict: Verdict | None = None

    @property
    def name(self) -> str:
        return f"{self.point}:{self.action}"

    def hit(self) -> bool:
        return self.hits.exists() and self.point in self.hits.read_text()


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=POLL)
    yield app
    app.settings = saved


async def _running(app: App, task_id: str) -> bool:
    return await (await app.task_handle(task_id)).status() is TaskStatus.RUNNING


async def _trigger(app: App, fleet: Fleet, cell: Cell) -> None:
    """Make the worker reach a point that needs a request: a stop, a pause, a cancel of
    a task it runs."""
    assert cell.target is not None and cell.slot is not None
    target = cell.target
    await eventually(lambda: _running(app, target), timeout=30)
    handle: TaskHandle[Any] = await app.task_handle(target)
    if cell.point == "during_requeue":
        fleet.terminate(cell.slot)  # the grace period (0.5 s) ends before the tasks do
    elif cell.point == "after_pause_ack":
        await handle.pause(reason="W4")
    elif cell.point == "during_cancel":
        await handle.cancel(reason="W4")


async def test_every_crash_point_killed_or_stalled_loses_nothing(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★W4: each task-path fault point × {kill, stall 3 × lease}, a few tasks each: lost 0,
    double successes 0, nothing stuck, at most one extra run per faulted task."""
    per_cell = fault_scale.pick(6, 50)
    fleet = Fleet(
        APP,
        segue_valkey.url,
        queue_name,
        lease=LEASE,
        poll=POLL,
        env=fault_ledger.env(),
        log_dir=tmp_path / "logs",
    )
    cells = [
        Cell(point, action, f"{queue_name}c{n}", tmp_path / f"c{n}.hits", History(client_app, ""))
        for n, (point, action) in enumerate((p, a) for p in TASK_POINTS for a in ACTIONS)
    ]
    for cell in cells:
        cell.history = History(client_app, cell.queue)
    async with client_app:
        with fleet:
            for cell in cells:
                cell.slot = fleet.start(
                    4,
                    env={
                        "SEGUE_QUEUE": cell.queue,
                        "SEGUE_FAULTPOINT": f"{cell.point}:{ACTIONS[cell.action]}",
                        "SEGUE_FAULTPOINT_ONCE": "1",
                        "SEGUE_FAULTPOINT_LOG": str(cell.hits),
                    },
                )
            await fleet.ready(timeout=60)
            began = time.time()
            for cell in cells:
                # long runs where the test must reach a running task first; short otherwise
                steps, ms = (20, 100) if cell.point in TRIGGERED else (3, 100)
                if cell.point in TRIGGERED:
                    # a cancelled task may or may not have applied its effect: not counted
                    effect = cell.point != "during_cancel"
                    op = await cell.history.enqueue(
                        faults.steps.call(steps, ms), "t", effect=effect
                    )
                    cell.target = op.task_id
                await cell.history.enqueue_many(
                    [
                        (faults.steps.call(steps, ms), str(k))
                        for k in range(per_cell - (cell.target is not None))
                    ]
                )
            for cell in cells:
                if cell.point in TRIGGERED:
                    await _trigger(client_app, fleet, cell)

            async def all_hit() -> bool:
                return all(c.hit() for c in cells)

            with contextlib.suppress(AssertionError):
                await eventually(all_hit, timeout=30, interval=0.1)
            rescuer = fleet.start(16, queues=[c.queue for c in cells])
            await fleet.ready(rescuer, timeout=60)
            for cell in cells:
                if cell.point == "after_pause_ack" and cell.target is not None:
                    handle = await client_app.task_handle(cell.target)
                    status = await handle.wait_for(
                        TaskStatus.PAUSED, TaskStatus.SUCCEEDED, timeout=30
                    )
                    if status is TaskStatus.PAUSED:
                        await handle.resume(reason="W4")

            pending: dict[str, dict[str, int]] = {}

            async def drained() -> bool:
                pending.clear()
                for c in cells:
                    counts = await client_app.queue_counts(c.queue)
                    ended = sum(counts[s] for s in ("succeeded", "failed", "cancelled", "expired"))
                    left = counts["queued"] + counts["running"] + counts["scheduled"]
                    if ended < per_cell or left + counts.get("paused", 0):
                        pending[c.name] = counts
                return not pending

            try:
                await eventually(drained, timeout=fault_scale.seconds(60, 300), interval=0.2)
            except AssertionError:
                raise AssertionError(f"cells not drained: {pending}") from None
            drain_s = time.time() - began
            for cell in cells:
                cell.verdict = await check(
                    history=cell.history,
                    effects=await Ledger(fault_ledger, cell.queue).read(),
                    admin_url=segue_valkey.admin_url,
                    queue=cell.queue,
                    leaks=True,
                )
            exits = {c.name: c.slot.proc.poll() for c in cells if c.slot is not None}

    matrix: dict[str, dict[str, Any]] = {}
    for cell in cells:
        v = cell.verdict
        assert v is not None and v.leaks is not None
        matrix.setdefault(cell.point, {})[cell.action] = {
            "reached": cell.hit(),
            "lost": len(v.lost),
            "dup_effect": len(v.dup_effect),
            "stuck": len(v.stuck) + v.leaks.queued + v.leaks.running,
            "dup_exec": v.dup_exec,
            "max_exec": v.max_exec,
            "lease_losses": v.lease_losses,
            "dup_bound_ok": not v.bound_violations,
            "worker_exit": exits[cell.name],
        }
    fault_report.add(
        tasks_per_cell=per_cell,
        lease_s=LEASE,
        stall_s=STALL,
        cells=len(cells),
        drain_s=round(drain_s, 3),
        matrix=matrix,
    )
    bad = {
        f"{p}:{a}": m
        for p, by_action in matrix.items()
        for a, m in by_action.items()
        if not m["reached"]
        or m["lost"]
        or m["dup_effect"]
        or m["stuck"]
        or not m["dup_bound_ok"]
        or m["max_exec"] > 2
    }
    assert bad == {}
    for cell in cells:
        assert cell.verdict is not None
        assert cell.verdict.phantom == []
        if cell.action == "kill":
            assert exits[cell.name] == -9, cell.name  # the point killed it
        elif cell.point != "during_requeue":
            assert exits[cell.name] is None, cell.name  # a stall leaves it serving


CRON_LEASE = 5.0  # segue._scheduler._LEASE_MS: a dead worker's tick fires again after it


async def _cron_cell(
    action: str, fault_ledger: LedgerServer, queue: str, directory: Path
) -> dict[str, Any]:
    """One action at the scheduler's point, on a server of its own (a fleet serves every
    schedule of its prefix): a worker fires a tick, enqueues it and is killed, or frozen
    past the tick's lease, before it advances the schedule; a clean worker takes over."""
    engine, proc = start_server("valkey", directory)
    hits = directory / "hits"
    spec = "kill" if action == "kill" else f"stall:{CRON_LEASE + 1.5}"
    fleet = Fleet(
        APP, engine.url, queue, lease=LEASE, poll=POLL, env=fault_ledger.env(), log_dir=directory
    )
    client = App("w4-cron", redis_url=engine.url)
    try:
        async with client:
            with fleet:
                faulted = fleet.start(
                    2,
                    env={
                        "SEGUE_FAULTPOINT": f"cron_after_enqueue:{spec}",
                        "SEGUE_FAULTPOINT_ONCE": "1",
                        "SEGUE_FAULTPOINT_LOG": str(hits),
                    },
                )
                await fleet.ready(faulted, timeout=60)
                sid = await client.schedule(
                    faults.sleep.call(10).options(queue=queue), cron="* * * * * *", id="w4"
                )

                async def hit() -> bool:
                    return hits.exists() and "cron_after_enqueue" in hits.read_text()

                await eventually(hit, timeout=20)
                hit_at = time.time()
                fleet.start(2)  # the rescuer
                (info,) = await client.schedules()
                assert info.next_run is not None
                stuck = int(info.next_run.timestamp() * 1000)  # enqueued, not advanced
                ledger = Ledger(fault_ledger, queue)

                async def went_on() -> bool:
                    (now,) = await client.schedules()
                    return now.last_tick is not None and now.last_tick.timestamp() * 1000 > stuck

                await eventually(went_on, timeout=30, interval=0.1)
                moved_at = time.time()
                await client.unschedule(sid)

                async def ran_all() -> bool:
                    c = await client.queue_counts(queue)
                    return c["queued"] + c["running"] + c["scheduled"] == 0

                await eventually(ran_all, timeout=30)
                effects = await ledger.read()
                exit_code = faulted.proc.poll()
    finally:
        stop(proc)
    runs = {i: len(r) for i, r in effects.executions.items()}
    stuck_id = tick_id(queue, "w4", stuck)
    return {
        "reached": hits.exists(),
        "ticks_run": len(runs),
        "stuck_tick_runs": runs.get(stuck_id, 0),
        "dup_exec": sum(n - 1 for n in runs.values()),
        "lost": sum(1 for i in runs if i not in effects.effects),
        "schedule_stuck_s": round(moved_at - hit_at, 3),
        "worker_exit": exit_code,
    }


async def test_the_scheduler_point_killed_or_stalled_fires_each_tick_once(
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★W4, `cron_after_enqueue` × {kill, stall past the tick's 5 s lease}: the tick the
    worker enqueued but did not advance is fired again by another worker once its lease
    ran out (idempotent by task id: it runs once), and the schedule goes on."""
    cells = await asyncio.gather(
        *(
            _cron_cell(action, fault_ledger, f"{queue_name}{action[0]}", tmp_path / action)
            for action in ACTIONS
        )
    )
    matrix = dict(zip(ACTIONS, cells, strict=True))
    fault_report.add(cron_lease_s=CRON_LEASE, matrix={"cron_after_enqueue": matrix})
    for action, m in matrix.items():
        assert m["reached"], action
        assert m["stuck_tick_runs"] == 1, (action, m)  # fired twice, run once
        assert m["dup_exec"] == 0 and m["lost"] == 0, (action, m)
        assert m["ticks_run"] >= 2, (action, m)  # and later ticks fired
    assert matrix["kill"]["worker_exit"] == -9
    assert matrix["stall"]["worker_exit"] is None
