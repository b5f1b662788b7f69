"""R3 (RELIABILITY §8): the server drops every client connection, again and again, while
two worker subprocesses drain the queue and a producer keeps enqueueing.

Every 0.5-1 s (seeded) an admin connection runs `CLIENT KILL TYPE normal SKIPME yes`, which
cuts the workers' connections (fast path, blocking wait, lease renewal) and the producer's
mid-command. No task may be lost or completed twice, every worker must come back on its own,
and a producer that retries a failed enqueue with the same `key=` ends with each task once.
Runs are recorded in a ledger on a second server that is never faulted.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from segue import App, BrokerError, TaskStatus
from segue._keys import Keyspace
from tests._support import Engine, start_server, stop
from tests.apps import client_kill
from tests.faults.conftest import Report, Scale

ROOT = Path(__file__).resolve().parents[2]
TASK_SECONDS = 0.03
CONCURRENCY = 4


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Engine]:
    """A server of its own for the ledger: CLIENT KILL on the queue's server spares it."""
    engine, proc = start_server("valkey", tmp_path / "ledger")
    yield engine
    stop(proc)


class WorkerProcs:
    """`segue worker tests.apps.client_kill:app` subprocesses; stops only its own, by pid."""

    def __init__(self, url: str, queue: str, ledger_url: str) -> None:
        self.env = {
            **os.environ,
            "SEGUE_REDIS_URL": url,
            "SEGUE_QUEUE": queue,
            "SEGUE_LEASE_SECONDS": "2",
            "SEGUE_POLL_SECONDS": "0.2",
            "SEGUE_SHUTDOWN_GRACE_SECONDS": "0.5",
            "LEDGER_URL": ledger_url,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        command = [sys.executable, "-m", "segue", "worker", "tests.apps.client_kill:app"]
        options = ["--concurrency", str(CONCURRENCY), "--log-level", "error"]
        self.procs.append(subprocess.Popen([*command, *options], cwd=ROOT, env=self.env))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def workers(segue_valkey: Engine, queue_name: str, ledger: Engine) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(segue_valkey.url, queue_name, ledger.admin_url)
    yield procs
    procs.stop_all()


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


async def test_client_kill_storms_lose_nothing_and_complete_nothing_twice(
    segue_valkey: Engine,
    queue_name: str,
    workers: WorkerProcs,
    ledger: Engine,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    n = fault_scale.pick(1_000, 10_000)
    app: App = client_kill.app
    app.settings = app.settings.replace(redis_url=segue_valkey.url, queue=queue_name)
    admin: Any = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    book: Any = redis.Redis.from_url(ledger.admin_url)
    for _ in range(2):
        workers.start()
    producer_errors: collections.Counter[str] = collections.Counter()
    kills: list[float] = []
    killed: list[int] = []
    stop = asyncio.Event()
    async with app:

        async def both_ready() -> bool:
            return len(await app.workers()) >= 2

        deadline = time.monotonic() + 30
        while not await both_ready():
            assert time.monotonic() < deadline, "the worker subprocesses did not start"
            await asyncio.sleep(0.1)
        killer = asyncio.create_task(_kill_clients(admin, fault_rng, stop, kills, killed))
        started = time.monotonic()
        # enqueued over a few seconds, so that kills land mid-enqueue as well as mid-drain
        for i in range(n):
            for _ in range(50):
                try:
                    await client_kill.work.options(key=f"r3-{i}").enqueue(TASK_SECONDS)
                    break
                except BrokerError as exc:
                    producer_errors[type(exc.__cause__).__name__] += 1
            else:
                pytest.fail(f"enqueue of task r3-{i} failed 50 times in a row")
            if i % 20 == 19:
                await asyncio.sleep(0.1)
        enqueue_seconds = time.monotonic() - started
        ks = Keyspace("segue", queue_name)
        ids = [f"{queue_name}:k:r3-{i}" for i in range(n)]

        async def statuses() -> list[Any]:
            pipe = admin.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(ks.task(task_id), "s")
            return list(await pipe.execute())

        deadline = time.monotonic() + fault_scale.seconds(60, 600)
        while True:
            try:
                current = await statuses()
            except redis.ConnectionError:
                continue  # our own admin connection is spared, but a retry costs nothing
            left = sum(s != TaskStatus.SUCCEEDED.value.encode() for s in current)
            if left == 0:
                break
            assert time.monotonic() < deadline, f"{left} task(s) not done in time"
            await asyncio.sleep(0.1)
        drain_seconds = time.monotonic() - started
        stop.set()
        await killer

    events: collections.Counter[tuple[str, str]] = collections.Counter()
    last = "-"
    while True:
        batch = await admin.xrange(ks.events, min=last, count=5_000)
        batch = batch[1:] if last != "-" else batch
        if not batch:
            break
        for _, fields in batch:
            events[fields[b"id"].decode(), fields[b"e"].decode()] += 1
        last = batch[-1][0].decode()
    await admin.aclose()
    runs = {task_id: book.lrange(f"segue:ledger:exec:{task_id}", 0, -1) for task_id in ids}
    book.close()

    double_completions = sum(events[i, "task.succeeded"] > 1 for i in ids)
    double_enqueues = sum(events[i, "task.enqueued"] > 1 for i in ids)
    lost = sum(not runs[i] or events[i, "task.succeeded"] == 0 for i in ids)
    dup_exec = sum(max(0, len(r) - 1) for r in runs.values())
    resume = _resume_times(kills, runs)
    fault_report.add(
        n=n,
        kills=len(kills),
        killed_connections=sum(killed),
        lost=lost,
        double_completions=double_completions,
        double_enqueues=double_enqueues,
        dup_exec=dup_exec,
        producer_errors=dict(producer_errors),
        reconnect_ms_p50=round(_quantile(resume, 0.5) * 1000),
        reconnect_ms_p99=round(_quantile(resume, 0.99) * 1000),
        reconnect_ms_max=round(max(resume, default=0.0) * 1000),
        enqueue_seconds=round(enqueue_seconds, 3),
        drain_seconds=round(drain_seconds, 3),
    )
    assert len(kills) >= 3, "too few kills happened during the run to test anything"
    assert sum(killed) >= 3 * len(kills), "the kills found too few connections to cut"
    assert lost == 0
    assert double_completions == 0
    assert double_enqueues == 0
    # every worker was back at work well within a lease after each kill
    assert _quantile(resume, 0.99) < 2.0, resume


def _resume_times(kills: list[float], runs: dict[str, list[bytes]]) -> list[float]:
    """For each kill and worker: how long until the worker started its next task."""
    starts: dict[str, list[float]] = collections.defaultdict(list)
    for entries in runs.values():
        for entry in entries:
            worker, _, at = entry.decode().partition(" ")
            starts[worker].append(float(at))
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
