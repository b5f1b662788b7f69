"""R3 (RELIABILITY §8): the server drops every client connection, again and again, while
two worker subprocesses drain the queue and a producer keeps enqueueing.

Every 0.5-1 s (seeded) an admin connection runs `CLIENT KILL TYPE normal SKIPME yes`. That
cuts the workers' connections (fast path, blocking wait, lease renewal) and the producer's,
mid-command. No task may be lost or completed twice, every worker must come back on its own,
and a producer that retries a failed enqueue with the same `key=` ends with each task once.
The tasks record their runs in the suite's ledger, on a server of its own that the kills do
not reach.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import check
from tests.faults.conftest import Report, Scale
from tests.faults.events import EventTally
from tests.faults.ledger import Execution, History, Ledger, LedgerServer

pytestmark = pytest.mark.slow

APP = "tests.apps.faults:app"
TASK_MS = 30
CONCURRENCY = 4


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)
    yield app
    app.settings = saved


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _kill_clients(
    admin: Any, rng: random.Random, stop: asyncio.Event, kills: list[float], killed: list[int]
) -> None:
    while not stop.is_set():
        try:
            async with asyncio.timeout(rng.uniform(0.5, 1.0)):
                await stop.wait()
        except TimeoutError:
            kills.append(time.time())
            killed.append(
                await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            )


def _resume_times(kills: list[float], executions: dict[str, list[Execution]]) -> list[float]:
    """For each kill and worker: how long until the worker started its next task."""
    starts: dict[str, list[float]] = collections.defaultdict(list)
    for runs in executions.values():
        for run in runs:
            starts[run.worker].append(run.started_ms / 1000)
    for times in starts.values():
        times.sort()
    last = max((t[-1] for t in starts.values() if t), default=0.0)
    out: list[float] = []
    for kill in kills:
        if kill >= last:
            continue  # the queue was drained: no more work to come back to
        for times in starts.values():
            after = [t for t in times if t > kill]
            if after:
                out.append(after[0] - kill)
    return out


async def test_client_kill_storms_lose_nothing_and_complete_nothing_twice(
    segue_valkey: Engine,
    fault_ledger: LedgerServer,
    client_app: App,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    n = fault_scale.pick(1_000, 10_000)
    admin: Any = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    history = History(client_app, queue_name)
    kills: list[float] = []
    killed: list[int] = []
    stop = asyncio.Event()
    tally = EventTally(admin, queue_name)
    fleet = Fleet(APP, segue_valkey.url, queue_name, env=fault_ledger.env(), log_dir=tmp_path)
    async with client_app, tally:
        with fleet:
            for _ in range(2):
                fleet.start(CONCURRENCY)
            await fleet.ready()
            killer = asyncio.create_task(_kill_clients(admin, fault_rng, stop, kills, killed))
            began = time.monotonic()
            # enqueued over a few seconds, so that kills land mid-enqueue as well as mid-drain
            for i in range(n):
                for _ in range(50):
                    op = await history.enqueue(faults.sleep.call(TASK_MS), f"r3-{i}")
                    if op.outcome == "ok":
                        break
                else:
                    pytest.fail(f"enqueue of task r3-{i} failed 50 times in a row")
                if i % 20 == 19:
                    await asyncio.sleep(0.1)
            enqueue_seconds = time.monotonic() - began
            deadline = time.monotonic() + fault_scale.seconds(60, 600)
            while True:
                ended = await Ledger(fault_ledger, queue_name).read()
                if len(ended.effects) >= n:
                    break
                assert time.monotonic() < deadline, f"{n - len(ended.effects)} task(s) not done"
                await asyncio.sleep(0.1)
            drain_seconds = time.monotonic() - began
            stop.set()
            await killer
            effects = await Ledger(fault_ledger, queue_name).read()
            verdict = await check(
                history=history, effects=effects, admin_url=segue_valkey.admin_url, queue=queue_name
            )
    await admin.aclose()

    ids = history.ids("ok")
    double_completions = sum(tally.of(i, "task.succeeded") > 1 for i in ids)
    double_enqueues = sum(tally.of(i, "task.enqueued") > 1 for i in ids)
    resume = _resume_times(kills, effects.executions)
    fault_report.add(
        n=n,
        kills=len(kills),
        killed_connections=sum(killed),
        double_completions=double_completions,
        double_enqueues=double_enqueues,
        producer_errors=history.counts()["ambiguous"] + history.counts()["fail"],
        reconnect_ms_p50=round(_quantile(resume, 0.5) * 1000),
        reconnect_ms_p99=round(_quantile(resume, 0.99) * 1000),
        reconnect_ms_max=round(max(resume, default=0.0) * 1000),
        enqueue_seconds=round(enqueue_seconds, 3),
        drain_seconds=round(drain_seconds, 3),
        **verdict.figures(),
    )
    assert len(kills) >= 3, "too few kills happened during the run to test anything"
    assert sum(killed) >= 3 * len(kills), "the kills found too few connections to cut"
    assert verdict.lost == []
    assert verdict.not_succeeded == {}
    assert verdict.phantom == []
    assert verdict.dup_effect == []
    assert double_completions == 0
    assert double_enqueues == 0
    # every worker was back at work well within a lease after each kill
    assert _quantile(resume, 0.99) < 2.0, resume
