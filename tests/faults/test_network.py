"""Network faults (RELIABILITY §8 C) through the fault proxy: N1 latency with jitter on every
worker connection, N3 one worker cut off (a silent partition) for longer than its lease."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from segue import App
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import Verdict, check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.proxy import FaultProxy
from tests.faults.test_worker_faults import APP, assert_sound, client_app, drained

__all__ = ["client_app"]  # the fixture, imported for this module's tests


async def _drain(
    app: App,
    fleet: Fleet,
    ledger: LedgerServer,
    queue: str,
    durations: list[int],
    admin_url: str,
    chaos: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> tuple[float, Verdict]:
    """Enqueue the tasks with the fleet ready and wait for the drain, running `chaos`
    meanwhile: (tasks/s, verdict)."""
    await fleet.ready(timeout=60)
    history = History(app, queue)
    began = time.time()
    await history.enqueue_many([(faults.sleep.call(ms), str(k)) for k, ms in enumerate(durations)])
    faulting = asyncio.create_task(chaos()) if chaos is not None else None
    try:
        done = await drained(app, queue, len(durations), timeout=120)
    finally:
        if faulting is not None:
            faulting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faulting
    verdict = await check(
        history=history,
        effects=await Ledger(ledger, queue).read(),
        admin_url=admin_url,
        queue=queue,
    )
    return len(durations) / (done - began), verdict


async def test_latency_and_jitter_cause_no_false_lease_expiry(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_seed: int,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """N1: the same tasks drained by two workers, directly and then with 50 ± 20 ms added to
    each direction of every worker connection (a round trip of 60-140 ms, under a third of
    the 2 s lease) and every connection reset a few times at seeded moments: no lease
    lapses, nothing is lost or run twice; the throughput against the direct run is
    reported."""
    n = fault_scale.pick(300, 10_000)
    lease = 2.0
    durations = [fault_rng.randrange(0, 21) for _ in range(n)]
    concurrency = 16
    gaps = [fault_rng.uniform(0.2, 0.6) for _ in range(fault_scale.pick(3, 40))]
    resets: list[int] = []
    with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as proxy:

        async def reset_now_and_then() -> None:
            for gap in gaps:
                await asyncio.sleep(gap)  # the schedule's next fault
                resets.append(await asyncio.to_thread(proxy.reset))

        proxy.delay(50, jitter_ms=20)
        async with client_app:
            direct = f"{queue_name}d"
            with Fleet(
                APP,
                segue_valkey.url,
                direct,
                lease=lease,
                env=fault_ledger.env(),
                log_dir=tmp_path / "d",
            ) as fleet:
                fleet.start(concurrency)
                fleet.start(concurrency)
                base_rate, base = await _drain(
                    client_app, fleet, fault_ledger, direct, durations, segue_valkey.admin_url
                )
            with Fleet(
                APP,
                proxy.url_for(segue_valkey.url),
                queue_name,
                lease=lease,
                env=fault_ledger.env(),
                log_dir=tmp_path / "p",
            ) as fleet:
                fleet.start(concurrency)
                fleet.start(concurrency)
                rate, verdict = await _drain(
                    client_app,
                    fleet,
                    fault_ledger,
                    queue_name,
                    durations,
                    segue_valkey.admin_url,
                    reset_now_and_then,
                )
                # the console log wraps lines: compare words
                logs = " ".join("".join(fleet.log(s) for s in fleet.slots).split())
        stats = proxy.stats()

    fault_report.add(
        n=n,
        workers=2,
        concurrency=concurrency,
        lease_s=lease,
        delay_ms=50,
        jitter_ms=20,
        baseline_rate_per_s=round(base_rate, 1),
        throughput_per_s=round(rate, 1),
        rate_ratio=round(rate / base_rate, 3),
        false_lease_expiries=verdict.lease_losses,
        reset_rounds=len(resets),
        connections_reset=sum(resets),
        proxy_bytes_up=stats.bytes_up,
        **verdict.figures(),
    )
    for v in (base, verdict):
        assert_sound(v)
        assert v.not_succeeded == {}
        assert v.lease_losses == 0, "a lease lapsed although every round trip was short"
        assert v.dup_exec == 0
    assert "no longer holds its lease" not in logs
    assert stats.bytes_up > 0  # the delayed workers did go through the proxy
    assert sum(resets) > 0, "no reset hit a connection"


@pytest.mark.parametrize("heal", ["reset", "late"])
async def test_a_partitioned_worker_is_fenced_and_its_tasks_taken_over(
    heal: str,
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_seed: int,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """N3: a worker running tasks of 3 s is cut off for 3 leases, then healed. `reset`: its
    connections are blackholed (open, silent), and reset when the partition ends, as when
    it outlives TCP's retransmissions or a middlebox dropped their state. `late`: what it
    sends is held and delivered 3 leases late, as TCP retransmits it after a partition, so
    its renewals and outcomes reach the server after another worker took its tasks.
    Another worker takes its tasks once their leases lapse; every result is the new
    holder's (the cut-off worker's late completions are refused by the lease generation);
    each task succeeds once; and the healed worker serves the queue again."""
    lease = 1.0
    n = fault_scale.pick(4, 50)
    task_ms = 3000
    history = History(client_app, queue_name)
    ledger = Ledger(fault_ledger, queue_name)
    with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as proxy:
        cut_fleet = Fleet(
            APP,
            proxy.url_for(segue_valkey.url),
            queue_name,
            lease=lease,
            env=fault_ledger.env(),
            log_dir=tmp_path,
        )
        other_fleet = Fleet(
            APP,
            segue_valkey.url,
            queue_name,
            lease=lease,
            env=fault_ledger.env(),
            log_dir=tmp_path / "other",
        )
        async with client_app:
            with cut_fleet, other_fleet:
                cut = cut_fleet.start(n)
                await cut_fleet.ready()
                await history.enqueue_many([(faults.hold.call(task_ms), str(k)) for k in range(n)])
                deadline = time.monotonic() + 20
                while await ledger.count_started() < n:
                    assert time.monotonic() < deadline, "the worker did not start every task"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(fault_rng.uniform(0.0, 0.5))
                if heal == "reset":
                    proxy.blackhole()
                else:
                    proxy.delay(3 * lease * 1000)
                cut_at = time.time()
                other = other_fleet.start(n)
                await other_fleet.ready()
                await asyncio.sleep(max(0.0, cut_at + 3 * lease - time.time()))
                if heal == "reset":
                    # a blackhole swallowed bytes mid-stream, which TCP itself never does:
                    # those connections cannot carry on
                    proxy.reset(refuse_new=True)
                proxy.heal()  # (held bytes still arrive, in order, when they are due)
                healed = time.time()
                await drained(client_app, queue_name, n, timeout=60)
                results = [
                    await (await client_app.task_handle(history.task_id(str(k)))).result(timeout=5)
                    for k in range(n)
                ]
                verdict = await check(
                    history=history,
                    effects=await ledger.read(),
                    admin_url=segue_valkey.admin_url,
                    queue=queue_name,
                )
                # the healed worker serves again: with the other one gone, it runs new work
                other_fleet.kill(other)
                later = History(client_app, f"{queue_name}")
                await later.enqueue_many([(faults.sleep.call(1), f"after.{k}") for k in range(4)])
                resumed_at = time.time()
                await drained(client_app, queue_name, n + 4, timeout=30)
                served = time.time() - resumed_at
                after = await ledger.read()
                log = " ".join(cut_fleet.log(cut).split())  # unwrapped

    cut_id = cut.id_prefix
    stale_accepted = sum(1 for r in results if r.startswith(cut_id))
    late = [
        task_id
        for task_id, runs in after.executions.items()
        if not task_id.startswith(f"{queue_name}:k:after.")
        for r in runs
        if r.worker.startswith(cut_id) and r.ended_ms is not None and r.ended_ms > cut_at * 1000
    ]
    rejected = log.count("discarded: this worker no longer holds its lease")
    fault_report.add(
        n=n,
        heal=heal,
        lease_s=lease,
        task_s=task_ms / 1000,
        stale_writes_rejected=rejected,
        partition_s=round(healed - cut_at, 3),
        stale_writes_accepted=stale_accepted,
        runs_finished_while_cut=len(late),
        healed_worker_served_new_work_s=round(served, 3),
        **verdict.figures(),
    )
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
    assert stale_accepted == 0, f"a cut-off run's outcome was kept: {results}"
    assert all(r.startswith(other.id_prefix) for r in results), results
    assert verdict.lease_losses == n  # each task's lease lapsed once, and only once
    # every run that ended while cut off tried to record its outcome, and was refused
    assert rejected == len(late) > 0
    after_runs = [
        runs
        for task_id, runs in after.executions.items()
        if task_id.startswith(f"{queue_name}:k:after.")
    ]
    assert len(after_runs) == 4 and all(r[0].worker.startswith(cut_id) for r in after_runs)
