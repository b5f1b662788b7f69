"""Pause, resume and cancel under faults (RELIABILITY ★S1, ★S2).

Worker subprocesses run the durable tasks of tests/apps/durable.py, which record every
processed step in a ledger on a server that is never faulted. A seeded schedule pauses,
resumes and cancels tasks while workers are SIGKILLed (S1, S2) and the server itself is
killed and restarted from its AOF (S2). The ledger and the tasks' results then show whether a
step ran while its task was paused, or a cancelled task went on after its cancel took effect.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from segue import BrokerError, InvalidTransition, TaskCancelled, TaskHandle, TaskStatus
from tests._support import ACL_PASSWORD, ACL_USER, Engine, Server, add_acl_user
from tests._workers import Fleet
from tests.apps import durable
from tests.faults.conftest import Report, Scale
from tests.integration.test_durable_processes import file_names, fleet, ledger_key, total_of

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

STEP_SECONDS = 0.05


class StepLedger:
    """Counts the recorded steps of every task, read in one LRANGE."""

    def __init__(self, engine: Engine, queue: str) -> None:
        # synchronous: one short LRANGE, and it closes in the fixture without an event loop
        self.client = redis.Redis.from_url(engine.admin_url)
        self.key = ledger_key(queue)

    async def counts(self) -> Counter[str]:
        rows: list[bytes] = self.client.lrange(self.key, 0, -1)  # type: ignore[assignment]
        return Counter(r.split(b" ", 1)[0].decode() for r in rows)

    async def steps(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        rows: list[bytes] = self.client.lrange(self.key, 0, -1)  # type: ignore[assignment]
        for r in rows:
            task, _, _, step = r.decode().split()
            out.setdefault(task, []).append(step)
        return out

    def close(self) -> None:
        self.client.close()


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.fixture
def step_ledger(segue_valkey: Engine, queue_name: str) -> Iterator[StepLedger]:
    ledger = StepLedger(segue_valkey, queue_name)
    yield ledger
    ledger.close()


async def _kill_and_restart(workers: Fleet, rng: random.Random, concurrency: int) -> None:
    workers.kill(rng.choice(workers.alive()))
    await asyncio.sleep(rng.uniform(0.1, 0.4))
    workers.start(concurrency=concurrency)


async def test_no_step_runs_while_paused_and_resume_continues_from_the_checkpoint(
    segue_valkey: Engine,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    step_ledger: StepLedger,
) -> None:
    """★S1: random pauses and resumes while workers are SIGKILLed mid-step and while tasks
    are paused. A paused task records no step until it is resumed; every task's result counts
    each file exactly once (its state survived every pause and crash); a crash redoes at most
    the one step that was running."""
    rng = fault_rng
    n_tasks = fault_scale.pick(24, 500)
    n_files = fault_scale.pick(40, 100)
    concurrency = 6
    # a task here may be on the killed worker at every kill: that is not a crash loop
    workers = fleet(segue_valkey.url, queue_name, segue_valkey.admin_url, max_deliveries="50")
    app = durable.app
    app.settings = app.settings.replace(redis_url=segue_valkey.url, queue=queue_name)
    files = file_names(n_files)
    kills = 0
    held_violations: list[str] = []
    ack_latencies: list[float] = []
    pauses = resumes = 0
    try:
        for _ in range(2):
            workers.start(concurrency=concurrency)
        async with app:
            handles = [
                await durable.process_files_in_a_storm.enqueue(files, STEP_SECONDS)
                for _ in range(n_tasks)
            ]
            by_id = {h.id: h for h in handles}
            paused: dict[str, int] = {}  # task id -> steps recorded when its pause took effect
            deadline = time.monotonic() + fault_scale.seconds(6.0, 120.0)
            while time.monotonic() < deadline:
                roll = rng.random()
                if roll < 0.45:
                    h = by_id[rng.choice(sorted(by_id))]
                    if h.id in paused:
                        continue
                    try:
                        await h.pause(reason="S1 pause")
                    except InvalidTransition:
                        continue  # it ended meanwhile
                    asked = time.monotonic()
                    got = await h.wait_for(TaskStatus.PAUSED, *_FINAL, timeout=15)
                    if got is TaskStatus.PAUSED:
                        ack_latencies.append(time.monotonic() - asked)
                        paused[h.id] = (await step_ledger.counts())[h.id]
                        pauses += 1
                elif roll < 0.85 and paused:
                    task_id = rng.choice(sorted(paused))
                    now = (await step_ledger.counts())[task_id]
                    if now != paused[task_id]:
                        held_violations.append(f"{task_id}: {paused[task_id]} -> {now}")
                    assert await by_id[task_id].resume(reason="S1 resume") is TaskStatus.QUEUED
                    del paused[task_id]
                    resumes += 1
                elif kills < fault_scale.pick(3, 30):
                    await _kill_and_restart(workers, rng, concurrency)
                    kills += 1
                await asyncio.sleep(rng.uniform(0.02, 0.2))
            # a restart with everything paused: pauses outlive the workers that carried them out
            for w in workers.alive():
                workers.kill(w)
            workers.start(concurrency=concurrency)
            for task_id, at_pause in sorted(paused.items()):
                assert await by_id[task_id].status() is TaskStatus.PAUSED
                now = (await step_ledger.counts())[task_id]
                if now != at_pause:
                    held_violations.append(f"{task_id}: {at_pause} -> {now}")
                assert await by_id[task_id].resume() is TaskStatus.QUEUED
            # full size: 500 tasks x 100 steps of 50 ms on 12 slots is minutes of work
            until = time.monotonic() + fault_scale.seconds(60.0, 900.0)
            results = [await h.result(timeout=until - time.monotonic()) for h in handles]
            steps = await step_ledger.steps()
    finally:
        workers.stop_all()
    assert held_violations == []
    assert results == [total_of(files)] * n_tasks  # each file counted once, in the state
    redone = {t: len(s) - len(set(s)) for t, s in steps.items()}
    assert all(sorted(set(s), key=int) == [str(i) for i in range(n_files)] for s in steps.values())
    # a crash redoes at most the step each task had in flight on the killed worker
    assert sum(redone.values()) <= kills * concurrency
    assert max(redone.values(), default=0) <= kills
    fault_report.add(
        tasks=n_tasks,
        steps_per_task=n_files,
        kills=kills,
        pauses=pauses,
        resumes=resumes,
        redone_steps=sum(redone.values()),
        pause_ack_ms_p50=round(_p(ack_latencies, 0.5) * 1000, 1),
        pause_ack_ms_p99=round(_p(ack_latencies, 0.99) * 1000, 1),
    )


_FINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED)


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    add_acl_user(s.port)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def _until_up(call: Any, deadline: float = 20.0) -> Any:
    """Run a client call, retrying while the server is down (a restart in progress)."""
    end = time.monotonic() + deadline
    while True:
        try:
            return await call()
        except BrokerError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
def fsync_always_server(tmp_path: Path) -> Iterator[Server]:
    """A server that writes and syncs its AOF before it replies: with `everysec`, a loaded
    machine's Redis postpones the AOF write behind a slow fsync yet still replies, so a
    kill -9 loses acknowledged writes, which the `memory` level never promised to keep."""
    s = Server(tmp_path, fsync="always")
    s.start()
    add_acl_user(s.port)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def test_cancelled_tasks_never_complete_and_cancels_survive_restarts(
    fsync_always_server: Server,
    segue_valkey: Engine,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    step_ledger: StepLedger,
) -> None:
    """★S2: a seeded 30 % of queued, running and retry-waiting tasks are cancelled while a
    worker is SIGKILLed and the server is killed and restarted from its AOF. Once a cancel
    took effect (status CANCELLED) the task records no further step and never succeeds; its
    CANCELLED status outlives both restarts; every other task succeeds."""
    rng = fault_rng
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{fsync_always_server.port}/0"
    workers = fleet(url, queue_name, segue_valkey.admin_url, max_deliveries="50")
    app = durable.app
    app.settings = app.settings.replace(redis_url=url, queue=queue_name)
    n = fault_scale.pick(240, 1_000)
    files = file_names(8)
    concurrency = 8
    acked: dict[str, int] = {}  # cancelled task id -> steps recorded when the cancel took effect
    latencies: list[float] = []
    try:
        for _ in range(2):
            workers.start(concurrency=concurrency)
        async with app:
            handles: list[TaskHandle[Any]] = []
            for i in range(n):
                if i % 3 == 0:
                    handles.append(await durable.flaky.enqueue(i))
                else:
                    handles.append(
                        await durable.process_files_in_a_storm.enqueue(files, STEP_SECONDS)
                    )
            chosen = rng.sample(handles, k=int(0.3 * n))
            waves = [chosen[i::6] for i in range(6)]
            pending: dict[str, float] = {}
            for wave_no, wave in enumerate(waves):
                for h in wave:
                    asked = time.monotonic()
                    status = await _until_up(lambda h=h: h.cancel(reason="S2"))
                    if status is TaskStatus.CANCELLED:
                        acked[h.id] = (await step_ledger.counts())[h.id]
                        latencies.append(time.monotonic() - asked)
                    elif not status.is_final:
                        pending[h.id] = asked
                if wave_no == 1:
                    await _kill_and_restart(workers, rng, concurrency)
                if wave_no == 3:
                    fsync_always_server.kill()
                    await asyncio.sleep(rng.uniform(0.3, 1.0))
                    fsync_always_server.start()
                    add_acl_user(fsync_always_server.port)
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                for task_id, asked in list(pending.items()):
                    h = next(x for x in chosen if x.id == task_id)
                    status = await _until_up(h.status)
                    if status is TaskStatus.CANCELLED:
                        acked[task_id] = (await step_ledger.counts())[task_id]
                        latencies.append(time.monotonic() - asked)
                        del pending[task_id]
            for task_id, asked in pending.items():
                h = next(x for x in chosen if x.id == task_id)
                got = await h.wait_for(*_FINAL, timeout=30)
                if got is TaskStatus.CANCELLED:
                    acked[task_id] = (await step_ledger.counts())[task_id]
                    latencies.append(time.monotonic() - asked)
            # the server restarts once more with every cancel acknowledged: they persist
            fsync_always_server.kill()
            fsync_always_server.start()
            add_acl_user(fsync_always_server.port)
            finals = {h.id: await _until_up(h.wait_for) for h in handles}
            counts = await step_ledger.counts()
            cancelled_results = 0
            for task_id in acked:
                with pytest.raises(TaskCancelled):
                    await next(h for h in handles if h.id == task_id).result(timeout=1)
                cancelled_results += 1
            others = [h for h in handles if h.id not in acked and h not in chosen]
            values = [await h.result(timeout=30) for h in others]
    finally:
        workers.stop_all()
    completions_after_ack = sorted(t for t, c in acked.items() if counts[t] != c)
    assert completions_after_ack == []
    assert {finals[t] for t in acked} <= {TaskStatus.CANCELLED}
    # a cancel that raced a finishing run may lose the race (the task had already ended);
    # it is then not acknowledged, and the task's own outcome stands
    assert len(acked) >= int(0.3 * n) * 0.8
    assert all(v == total_of(files) or isinstance(v, int) for v in values)
    assert {finals[h.id] for h in others} == {TaskStatus.SUCCEEDED}
    fault_report.add(
        tasks=n,
        cancel_requests=len(chosen),
        cancels_acknowledged=len(acked),
        cancelled_results_raising=cancelled_results,
        completions_after_ack=len(completions_after_ack),
        cancel_ms_p50=round(_p(latencies, 0.5) * 1000, 1),
        cancel_ms_p99=round(_p(latencies, 0.99) * 1000, 1),
    )
