"""W6, the companions of a crash-looping task (RELIABILITY §8 A): tasks that happen to be
claimed with a task that kills its worker die with it, and are requeued with it when their
leases lapse together. They must not follow it all the way to `max_deliveries` and be
failed as worker_lost: a worker gets at most one task on its last delivery (claim.lua)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segue import App
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP, client_app, drained

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

__all__ = ["client_app"]  # the fixture, imported for this module's tests


async def test_tasks_claimed_with_a_crash_looping_task_are_not_failed_with_it(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """One worker of concurrency 8, restarted whenever it dies, and a queue of a poison task
    followed by 7 tasks of 200 ms: each of the worker's first two lives claims all eight,
    and the poison kills it. On their last delivery the tasks run one per worker life, so
    the poison dies alone: it is failed (worker_lost) after 3 attempts, the 7 succeed."""
    companions = 7
    history = History(client_app, queue_name)
    fleet = Fleet(
        APP, segue_valkey.url, queue_name, lease=1.0, env=fault_ledger.env(), log_dir=tmp_path
    )
    async with client_app:
        with fleet:
            fleet.start(companions + 1)
            await fleet.ready()
            async with fleet.supervised() as restarts:
                await history.enqueue(faults.poison.call(), "poison", effect=False)
                await history.enqueue_many(
                    [(faults.sleep.call(200), str(k)) for k in range(companions)]
                )
                await drained(client_app, queue_name, companions + 1, timeout=60)
            effects = await Ledger(fault_ledger, queue_name).read()
            verdict = await check(
                history=history,
                effects=effects,
                admin_url=segue_valkey.admin_url,
                queue=queue_name,
            )
            poison = await (await client_app.task_handle(history.task_id("poison"))).info()

    fault_report.add(
        companions=companions,
        poison_attempts=len(effects.executions[history.task_id("poison")]),
        worker_restarts=len(restarts),
        companions_failed=len(verdict.not_succeeded),
        companion_runs_max=max(len(effects.executions[i]) for i in history.ids("ok", effect=True)),
        **verdict.figures(),
    )
    assert poison.status.value == "failed"
    assert poison.error is not None and poison.error.reason == "worker_lost"
    assert len(effects.executions[history.task_id("poison")]) == 3
    assert verdict.not_succeeded == {}, "a companion of the poison task was failed with it"
    assert verdict.lost == [] and verdict.dup_effect == [] and verdict.stuck == []
    assert len(restarts) == 3
