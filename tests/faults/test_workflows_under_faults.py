"""Workflows under faults (RELIABILITY S3): fan-out/fan-in workflows drain while worker
subprocesses are SIGKILLed and restarted, and a seeded tenth of the workflows is cancelled.
Every fan-in step runs after all of its members and returns all their results; a cancelled
workflow's members record nothing after the cancel took effect and its fan-in never runs."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from segue import TaskStatus
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import workflows
from tests.faults.conftest import Report, Scale
from tests.integration.test_workflow_processes import Ledger, use
from tests.integration.test_workflow_processes import fleet as workflow_fleet

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]


@pytest.fixture
def fleet(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    w = workflow_fleet(segue_valkey.url, queue_name, segue_valkey.admin_url)
    # a member may be on the killed worker at every kill: that is not a crash loop
    w.env["SEGUE_MAX_DELIVERIES"] = "50"
    with w:
        yield w


async def test_fan_in_runs_once_after_all_members_and_cancel_stops_the_whole_workflow(
    fleet: Fleet,
    segue_valkey: Engine,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    rng = fault_rng
    n_flows = fault_scale.pick(20, 200)
    width = fault_scale.pick(10, 50)
    concurrency = 4
    app = use(workflows.app, segue_valkey.url, queue_name)
    ledger = Ledger(segue_valkey, queue_name)
    counter = f"running:{{{queue_name}}}"
    for _ in range(2):
        fleet.start(concurrency=concurrency)
    kills = 0
    async with app:
        flows = []
        for _ in range(n_flows):
            group = app.group(workflows.unit.call(i, counter) for i in range(width))
            flows.append(await (group | workflows.merge).enqueue())
        doomed = set(rng.sample(range(n_flows), k=max(1, n_flows // 10)))
        cancelled_at: dict[int, float] = {}
        ended_before_cancel = 0

        async def cancel(k: int) -> None:
            nonlocal ended_before_cancel
            # a flow that already finished stays succeeded: the cancel changes nothing
            if await flows[k].cancel(reason="S3 cancel") is TaskStatus.SUCCEEDED:
                ended_before_cancel += 1
            else:
                cancelled_at[k] = time.monotonic()

        deadline = time.monotonic() + fault_scale.seconds(4.0, 60.0)
        while time.monotonic() < deadline:
            if doomed and rng.random() < 0.5:
                await cancel(doomed.pop())
            elif kills < fault_scale.pick(3, 20):
                fleet.kill(rng.choice(fleet.alive()))
                kills += 1
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                fleet.start(concurrency=concurrency)
            await asyncio.sleep(rng.uniform(0.1, 0.4))
        for k in doomed:  # the schedule ended before these were drawn: cancel them now
            await cancel(k)
        finals: dict[int, Any] = {}
        for k, flow in enumerate(flows):
            if k not in cancelled_at:
                finals[k] = await flow.result(timeout=90)
        steps = {k: await flow.steps() for k, flow in enumerate(flows)}
        rows = await ledger.rows()
    assert all(finals[k] == [i * i for i in range(width)] for k in finals)
    merges_by_task = Counter(r.task for r in rows if r.label.startswith("merge"))
    order = {id(r): n for n, r in enumerate(rows)}
    dup_merges = 0
    in_flight_at_cancel = 0
    for k, flow_steps in steps.items():
        merge_step = flow_steps[-1]
        members = {s.id for s in flow_steps[:-1]}
        if k in cancelled_at:
            assert merge_step.status is TaskStatus.CANCELLED
            assert merges_by_task[merge_step.id] == 0  # the fan-in of a cancelled flow never ran
            member_steps = flow_steps[:-1]
            assert {s.status for s in member_steps} <= {TaskStatus.CANCELLED, TaskStatus.SUCCEEDED}
            ran = Counter(r.task for r in rows if r.task in members)
            assert all(ran[s.id] >= 1 for s in member_steps if s.status is TaskStatus.SUCCEEDED)
            # a cancelled member that still recorded a run was in flight when the cancel came;
            # there are at most as many of those as the workers have slots
            stray = sum(1 for s in member_steps if s.status is TaskStatus.CANCELLED and ran[s.id])
            assert stray <= concurrency * len(fleet.slots)
            in_flight_at_cancel += stray
            continue
        assert all(s.status is TaskStatus.SUCCEEDED for s in flow_steps)
        runs = merges_by_task[merge_step.id]
        assert 1 <= runs <= 1 + kills
        dup_merges += runs - 1
        first_merge = min(order[id(r)] for r in rows if r.task == merge_step.id)
        last_member = max(order[id(r)] for r in rows if r.task in members)
        assert last_member < first_merge  # the fan-in started after every member ran
    fault_report.add(
        workflows=n_flows,
        width=width,
        kills=kills,
        cancelled=len(cancelled_at),
        ended_before_their_cancel=ended_before_cancel,
        duplicate_fan_in_runs=dup_merges,
        cancelled_members_in_flight=in_flight_at_cancel,
    )
