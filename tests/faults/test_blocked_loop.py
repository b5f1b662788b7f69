"""W5 blocked event loop (RELIABILITY §8 A): async tasks that block their worker's event
loop with a sync `time.sleep` for three leases. Lease renewal runs in its own thread
(segue/_lease.py), so no lease lapses: no other worker takes the tasks, none runs twice."""

from __future__ import annotations

import random
import time
from pathlib import Path

from segue import App
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP, assert_sound, client_app, drained

__all__ = ["client_app"]  # the fixture, imported for this module's tests


async def test_tasks_blocking_the_loop_past_the_lease_are_not_reclaimed(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """W5: two workers each claim tasks that `time.sleep(3 × lease)` on the event loop, one
    after another, so every claimed task waits out the others' blocks too (up to 6 leases
    with no turn of its loop). Every task runs once, by the worker that first claimed it,
    and no lease is recorded as lost."""
    lease = 1.0
    n = fault_scale.pick(4, 100)
    concurrency = fault_scale.pick(2, 8)
    block_ms = int(3 * lease * 1000)
    history = History(client_app, queue_name)
    fleet = Fleet(
        APP, segue_valkey.url, queue_name, lease=lease, env=fault_ledger.env(), log_dir=tmp_path
    )
    async with client_app:
        with fleet:
            for _ in range(2):
                fleet.start(concurrency)
            await fleet.ready()
            began = time.time()
            await history.enqueue_many([(faults.block.call(block_ms), str(k)) for k in range(n)])
            per_worker = -(-n // 2)
            await drained(client_app, queue_name, n, timeout=per_worker * block_ms / 1000 + 30)
            done_at = time.time()
            verdict = await check(
                history=history,
                effects=await Ledger(fault_ledger, queue_name).read(),
                admin_url=segue_valkey.admin_url,
                queue=queue_name,
                leaks=True,
            )
            results = [
                await (await client_app.task_handle(i)).result(timeout=5)
                for i in sorted(history.ids("ok"))
            ]
        logs = " ".join("".join(fleet.log(s) for s in fleet.slots).split())  # unwrapped

    fault_report.add(
        n=n,
        workers=2,
        concurrency=concurrency,
        lease_s=lease,
        block_s=block_ms / 1000,
        drain_s=round(done_at - began, 3),
        false_reclaims=verdict.lease_losses,
        **verdict.figures(),
    )
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
    assert verdict.lease_losses == 0, "a lease lapsed while its worker's loop was blocked"
    assert verdict.dup_exec == 0
    assert "no longer holds its lease" not in logs
    # both workers held blocked tasks at once: each blocked longer than the lease
    assert len({r.split(" ")[0] for r in results}) == 2
