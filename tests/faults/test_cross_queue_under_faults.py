"""Workflows across queues under faults: fan-out on one queue, fan-in on another, and back,
while worker subprocesses (serving both queues) are SIGKILLed and restarted. A worker killed
between recording a step and forwarding its outbox entry leaves the entry; another worker
delivers it (at least once), and a delivery repeated changes nothing: every fan-in runs
after all of its members and gets all their results, in order."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from segue import TaskStatus
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import workflows
from tests.faults.conftest import Report, Scale
from tests.integration.conftest import eventually
from tests.integration.test_workflow_processes import Ledger, use
from tests.integration.test_workflow_processes import fleet as workflow_fleet

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]


@pytest.fixture
def fleet(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    w = workflow_fleet(segue_valkey.url, queue_name, segue_valkey.admin_url)
    w.env["SEGUE_MAX_DELIVERIES"] = "50"  # a kill may hit a step every time: no crash loop
    with w:
        yield w


async def test_cross_queue_fan_in_runs_once_after_all_members_while_workers_die(
    fleet: Fleet,
    segue_valkey: Engine,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    rng = fault_rng
    qa, qb = queue_name, f"{queue_name}b"
    n_flows = fault_scale.pick(20, 200)
    width = fault_scale.pick(10, 30)
    both = [qa, qb]
    for _ in range(2):
        fleet.start(concurrency=4, queues=both)
    app = use(workflows.app, segue_valkey.url, qa)
    ledger = Ledger(segue_valkey, qa)
    counter = f"running:{{{qa}}}"
    kills = 0
    async with app:
        flows = []
        for _ in range(n_flows):
            group = app.group(workflows.unit.call(i, counter) for i in range(width))
            wf = group | workflows.merge.options(queue=qb) | workflows.merge
            flows.append(await wf.enqueue())

        async def started() -> bool:
            return bool(await ledger.rows())

        await eventually(started, timeout=30)  # the kills fall while the flows run
        deadline = time.monotonic() + fault_scale.seconds(3.0, 60.0)
        while time.monotonic() < deadline and kills < fault_scale.pick(3, 20):
            await asyncio.sleep(rng.uniform(0.1, 0.4))
            fleet.kill(rng.choice(fleet.alive()))
            kills += 1
            await asyncio.sleep(rng.uniform(0.05, 0.2))
            fleet.start(concurrency=4, queues=both)
        # how far the flows had got when the kills ended (a figure: the kills overlapped them)
        statuses = [await flow.status() for flow in flows]
        unfinished = sum(1 for st in statuses if st is not TaskStatus.SUCCEEDED)
        results = [await flow.result(timeout=90) for flow in flows]
        steps = [await flow.steps() for flow in flows]
        broker = await app._client.broker()

        async def settled() -> bool:
            # every outbox moved, and the main records counted their part on b as ended
            for q in (qa, qb):
                if await broker.reads.outbox(broker.keyspace(q), 1):
                    return False
            ks = broker.keyspace(qa)
            return all([await broker.client.pttl(ks.workflow(f.id)) > 0 for f in flows])

        await eventually(settled, timeout=30)
        rows = await ledger.rows()
    assert results == [[i * i for i in range(width)]] * n_flows
    runs = Counter(r.task for r in rows)
    order: dict[str, list[int]] = {}
    for n, r in enumerate(rows):
        order.setdefault(r.task, []).append(n)
    dup = 0
    for flow_steps in steps:
        *members, fan_in, last = flow_steps
        assert fan_in.queue == qb and last.queue == qa
        assert all(s.status is TaskStatus.SUCCEEDED for s in flow_steps)
        for s in (fan_in, last):
            assert 1 <= runs[s.id] <= 1 + kills
            dup += runs[s.id] - 1
        # the fan-in on b started after every member on a ran; the last step after the fan-in
        assert max(order[m.id][-1] for m in members) < order[fan_in.id][0]
        assert order[fan_in.id][0] < order[last.id][0]
    fault_report.add(
        workflows=n_flows,
        width=width,
        kills=kills,
        unfinished_when_kills_ended=unfinished,
        duplicate_cross_queue_step_runs=dup,
    )
