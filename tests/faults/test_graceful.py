"""W3 graceful SIGTERM (RELIABILITY §8 A): a worker asked to stop lets its running tasks
finish within the shutdown grace, and hands back the rest the moment the grace runs out,
not a lease later."""

from __future__ import annotations

import asyncio
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


async def test_sigterm_finishes_what_fits_in_the_grace_and_requeues_the_rest_at_once(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """W3: a worker running tasks of 1–3 s (full: 1–10 s) gets SIGTERM with a grace G.
    The tasks that end within G complete once, on it; the others are requeued when G runs
    out (the lease is much longer, so a requeue by lease expiry would show), and a second
    worker runs them once more each. Nothing finished during the drain runs again."""
    n = fault_scale.pick(16, 500)
    grace = fault_scale.seconds(1.5, 3.0)
    longest = fault_scale.pick(3000, 10_000)
    lease = 15.0  # a requeue that waited for the lease would come ≥ 15 s after SIGTERM
    # both kinds for sure: one task shorter than the grace, one longer than any wait here
    durations = [1000, longest] + [fault_rng.randrange(1000, longest + 1) for _ in range(n - 2)]
    history = History(client_app, queue_name)
    fleet = Fleet(
        APP,
        segue_valkey.url,
        queue_name,
        lease=lease,
        grace=grace,
        env=fault_ledger.env(),
        log_dir=tmp_path,
        log_level="info",
    )
    ledger = Ledger(fault_ledger, queue_name)
    async with client_app:
        with fleet:
            first = fleet.start(concurrency=n)
            await fleet.ready(first)
            await history.enqueue_many(
                [(faults.sleep.call(ms), str(k)) for k, ms in enumerate(durations)]
            )
            deadline = time.monotonic() + 20
            while await ledger.count_started() < n:  # every task running on the first worker
                assert time.monotonic() < deadline, "the first worker did not start every task"
                await asyncio.sleep(0.02)
            await asyncio.sleep(fault_rng.uniform(0.1, 0.4))
            termed = fleet.terminate(first)
            code = await asyncio.to_thread(fleet.wait_exit, first, 30)
            exited = time.time()
            second = fleet.start(concurrency=n)
            await fleet.ready(second)
            await drained(client_app, queue_name, n, timeout=30)
            effects = await ledger.read()
            verdict = await check(
                history=history,
                effects=effects,
                admin_url=segue_valkey.admin_url,
                queue=queue_name,
                leaks=True,
            )
            requeued_at: dict[str, float] = {}
            for task_id in history.ids("ok"):
                info = await (await client_app.task_handle(task_id)).info()
                for t in info.history:
                    if t.status.value == "queued" and t.reason == "worker shutdown":
                        requeued_at[task_id] = t.at.timestamp()

    first_pid = first.pids[0]
    finished_in_grace = {
        task_id
        for task_id, runs in effects.executions.items()
        if runs[0].by(first_pid) and runs[0].ended_ms is not None
    }
    cut = set(history.ids("ok")) - finished_in_grace
    grace_end = termed + grace
    latencies = sorted(at - grace_end for at in requeued_at.values())
    fault_report.add(
        n=n,
        grace_s=grace,
        lease_s=lease,
        finished_in_grace=len(finished_in_grace),
        requeued=len(requeued_at),
        requeue_after_grace_ms_max=round(latencies[-1] * 1000, 1) if latencies else None,
        requeue_after_grace_ms_min=round(latencies[0] * 1000, 1) if latencies else None,
        exit_after_sigterm_s=round(exited - termed, 3),
        exit_code=code,
        dup_exec_finished_in_grace=sum(len(effects.executions[i]) - 1 for i in finished_in_grace),
        **verdict.figures(),
    )
    assert code == 0
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
    assert finished_in_grace and cut, "the run must have tasks of both kinds"
    # the first worker's log says so when it hands tasks back
    assert f"requeueing {len(cut)} unfinished task(s)" in " ".join(fleet.log(first).split())
    for task_id in finished_in_grace:
        assert len(effects.executions[task_id]) == 1, f"{task_id} ran again after finishing"
        assert task_id not in requeued_at
    for task_id in cut:
        runs = effects.executions[task_id]
        assert [r.by(first_pid) for r in runs] == [True, False], runs
        assert runs[0].ended_ms is None  # cut short, not finished twice
        assert task_id in requeued_at, f"{task_id} came back by another way than the requeue"
    # handed back when the grace ran out, not before (the task could still have finished)
    # and within a second of it (not a lease later)
    assert latencies[0] >= -0.05
    assert latencies[-1] <= 1.0
