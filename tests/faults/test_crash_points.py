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

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskHandle, TaskStatus
from segue._faults import POINTS
from tests._support import Engine
from tests.apps import faults
from tests.faults.checker import Verdict, check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP
from tests.faults.workers import Fleet, Slot
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow

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
