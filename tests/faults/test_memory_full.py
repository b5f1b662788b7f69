"""R5 (RELIABILITY §8 B): the server runs out of memory (`maxmemory 20mb`, `noeviction`).

A producer fills the server until it refuses an enqueue; the server is then pushed further
over its limit, and the producer goes on hammering while two worker subprocesses drain the
queue, so the server stays full as they work (tasks running longer than their lease
included: their leases must still be renewed). Each refused
enqueue raises ServerOutOfMemory and leaves no trace (no record without its queue entry,
no entry without its record); the workers keep claiming and completing while the server
is full; once the producer stops and the backlog drains, enqueue works again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App, ServerOutOfMemory
from tests._support import Engine, start_server, stop
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

APP = "tests.apps.faults:app"
BATCH = 20
LONG = 4
TTL = 1.0  # seconds an ended task's record is kept


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Engine]:
    engine, proc = start_server("valkey", tmp_path, "--maxmemory", "20mb")
    yield engine
    stop(proc)


@pytest.fixture
def full_app(small_server: Engine, queue_name: str) -> Iterator[App]:
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=small_server.url, queue=queue_name, poll_seconds=0.2)
    yield app
    app.settings = saved


async def _partial_writes(admin: Any, queue: str) -> tuple[int, int]:
    """(records, records and queue entries that do not match): a task record must be in a
    queued list, and every queued entry must have its record."""
    base = f"segue:{{{queue}}}:"
    records = {k.decode()[len(base) + 5 :] async for k in admin.scan_iter(base + "task:*")}
    entries: set[str] = set()
    for level in ("high", "normal", "low"):
        entries |= {i.decode() for i in await admin.lrange(f"{base}q:{level}", 0, -1)}
    return len(records), len(records ^ entries)


async def test_a_full_server_refuses_enqueues_cleanly_while_workers_drain(
    small_server: Engine,
    full_app: App,
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_seed: int,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    size = fault_scale.pick(16_384, 1_024)  # bytes per task: fewer, bigger tasks when quick
    pressure = fault_scale.seconds(2.0, 10.0)  # how long the producer hammers a full server
    admin: Any = redis.asyncio.Redis.from_url(small_server.admin_url)
    history = History(full_app, queue_name)
    data = "x" * size
    refused_batches: list[list[str]] = []
    counter = iter(range(1 << 30))

    async def batch() -> bool:
        calls = [
            (faults.blob.options(ttl=TTL).call(data), f"r5-{next(counter)}") for _ in range(BATCH)
        ]
        ops = await history.enqueue_many(calls)
        if ops[0].outcome == "ok":
            return True
        assert ops[0].error is not None and ops[0].error.startswith("ServerOutOfMemory"), ops[0]
        refused_batches.append([op.task_id for op in ops])
        return False

    lease = 0.5
    fleet = Fleet(
        APP, small_server.url, queue_name, lease=lease, env=fault_ledger.env(), log_dir=tmp_path
    )
    async with full_app:
        # tasks that run three leases long, claimed first, while the server is full: their
        # leases must be renewed all the same, or other workers would run them again
        long_ms = int(lease * 3000)
        for i in range(LONG):
            await history.enqueue(faults.sleep.options(ttl=TTL).call(long_ms), f"long-{i}")
        # 1. fill until the server refuses
        started = time.monotonic()
        while await batch():
            assert time.monotonic() - started < 60, "the server never ran out of memory"
        fill_seconds = time.monotonic() - started
        # a request's own bytes count in the server's memory: these are larger than the
        # batch just refused, so they are refused too
        bulk = "y" * (512 * 1024)
        with pytest.raises(ServerOutOfMemory, match="is out of memory"):
            await faults.blob.options(ttl=TTL).enqueue(bulk)
        with pytest.raises(ServerOutOfMemory):
            await (faults.blob.call(bulk) | faults.blob.call()).enqueue()
        records, partial_full = await _partial_writes(admin, queue_name)
        assert records == len(history.ids("ok"))
        assert [k async for k in admin.scan_iter(f"segue:{{{queue_name}}}:wf:*")] == []

        # 2. the workers drain while the producer keeps the server full. The server is put
        # well over its limit first (as other data growing would), so that for a while every
        # write that may grow memory is refused, small ones (lease renewals) included: ended
        # tasks keep their records TTL seconds, so draining frees nothing before then
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", used - 3 * 1024 * 1024)
        with fleet:
            for _ in range(2):
                fleet.start(8)
            await fleet.ready()  # registering is a write: it works on a full server
            during = time.time()
            refused_during = 0
            until = time.monotonic() + pressure
            while time.monotonic() < until:
                if not await batch():
                    refused_during += 1
                    await asyncio.sleep(0.005)
            stopped = time.time()

            # 3. the producer stops: enqueue recovers once the backlog drains
            probe = 0
            while True:
                try:
                    await faults.blob.options(key=f"probe-{probe}", ttl=TTL).enqueue("p")
                    break
                except ServerOutOfMemory:
                    probe += 1
                    assert time.time() - stopped < 60, "enqueue never recovered"
                    await asyncio.sleep(0.01)
            recovered = time.time() - stopped
            acked = history.ids("ok")
            ledger = Ledger(fault_ledger, queue_name)
            deadline = time.monotonic() + 60
            while len((effects := await ledger.read()).effects) < len(acked) + 1:  # + probe
                assert time.monotonic() < deadline, "the workers did not drain the queue"
                await asyncio.sleep(0.1)

    refused = {i for b in refused_batches for i in b}
    ran = set(effects.executions)
    completed_while_full = sum(
        1
        for runs in effects.executions.values()
        for run in runs
        if run.ended_ms is not None and during * 1000 <= run.ended_ms <= stopped * 1000
    )
    lost = acked - set(effects.effects)
    dup_exec = sum(len(runs) - 1 for runs in effects.executions.values())
    deadline = time.monotonic() + 10
    while (records_left := (await _partial_writes(admin, queue_name))[0]) > 0:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await admin.aclose()
    fault_report.add(
        seed=fault_seed,
        task_bytes=size,
        long_tasks=LONG,
        long_task_ms=long_ms,
        lease_seconds=lease,
        fill_seconds=round(fill_seconds, 3),
        acked=len(acked),
        refused=len(refused),
        refused_batches_while_draining=refused_during,
        completed_while_full=completed_while_full,
        partial_writes=partial_full,
        refused_that_ran=len(refused & ran),
        lost=len(lost),
        dup_exec=dup_exec,
        recover_enqueue_seconds=round(recovered, 3),
        records_left=records_left,
    )
    assert partial_full == 0
    assert refused_during > 0, "the producer never found the server full while workers ran"
    assert completed_while_full > 0
    assert refused & ran == set()  # a refused enqueue left nothing that could run
    assert lost == set() and dup_exec == 0
    assert records_left == 0  # every record expired TTL seconds after its task ended
