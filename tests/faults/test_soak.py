"""★L2 (RELIABILITY §8 F): leaks after a run with light chaos.

Two worker subprocesses drain a few thousand tasks whose records live 2 s, while one
worker is SIGKILLed (and restarted) and every client connection is cut once. Once the
queue drained and the records' lifetime is over, the server must hold nothing of the run
but the documented structural keys (RELIABILITY §5.6: every per-task key has a TTL or is
deleted), its memory must be back near where it started, and the workers' memory must not
have grown with the number of tasks. A few parents of sub-tasks are cancelled under load, so
the check covers cascades: no marker left, the parents' journals gone with their records,
the sub-tasks' records (kept an hour by design) with a TTL. Some tasks stream output, so
the check covers output streams and their end markers: none left after its linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App, InvalidTransition
from segue._keys import Keyspace, queues_key
from tests._support import Engine, start_server, stop
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import STRUCTURAL, check
from tests.faults.conftest import Report, Scale
from tests.faults.events import EventTally
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP, assert_sound
from tests.integration.conftest import eventually

# alone, not pairable: beside another test on a heavily loaded machine its server's
# used_memory grew 13 %, past the 10 % leak bound, with every key check passing
pytestmark = pytest.mark.slow

TTL = 2.0
OFFLOAD = 64 * 1024  # offload_bytes of the run
PREFIX = "segue"  # the least-privilege user's; the server is the test's own


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Engine]:
    """A server of this test's own: its memory is this run's alone."""
    engine, proc = start_server("valkey", tmp_path / "server")
    yield engine
    stop(proc)


async def drained(app: App, ledger: Ledger, expected: int, timeout: float) -> float:
    """Wait until `expected` tasks applied their effect and nothing is queued or running
    (the records' counts cannot tell: they expire within the run); returns when."""

    async def ended() -> bool:
        c = await app.queue_counts()
        if c["queued"] + c["running"] + c["scheduled"]:
            return False
        return len((await ledger.read()).effects) >= expected

    await eventually(ended, timeout=timeout, interval=0.25)
    return time.time()


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS, kB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def memory_without_events(admin: Any, ks: Keyspace) -> tuple[int, int]:
    """`used_memory`, and the part of it the queue's event stream takes (it keeps its
    last ~10,000 events by design: structural, bounded, not a per-task leak)."""
    info = await admin.info("memory")
    events = await admin.memory_usage(ks.events) or 0
    return int(info["used_memory"]), int(events)


async def test_no_leaks_after_a_run_with_light_chaos(
    own_server: Engine,
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★L2: after drain + the records' 2 s lifetime, SCAN finds only structural keys,
    none without a TTL outside them, nothing queued or running; `used_memory` (less the
    capped event stream) is within 10 % of its value before the run; each worker process
    that lived through the run grew by less than 20 MB."""
    n = fault_scale.pick(3_000, 100_000)
    warmup = 50
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(
        redis_url=own_server.url,
        queue=queue_name,
        prefix=PREFIX,
        poll_seconds=0.2,
        offload_bytes=OFFLOAD,
    )
    ks = Keyspace(PREFIX, queue_name)
    admin: Any = redis.asyncio.Redis.from_url(own_server.admin_url)
    fleet = Fleet(
        APP,
        own_server.url,
        queue_name,
        prefix=PREFIX,
        lease=2.0,
        poll=0.2,
        env={
            **fault_ledger.env(),
            "SEGUE_SLEEP_INLINE_SECONDS": "0",  # every sleep ends a run
            # below the records' ttl: a stream goes with its record (max of the two)
            "SEGUE_STREAM_LINGER_SECONDS": "0.5",
            # payloads over OFFLOAD go by reference: their chunks must go with their records
            "SEGUE_OFFLOAD_BYTES": str(OFFLOAD),
        },
        log_dir=tmp_path / "logs",
    )
    history = History(app, queue_name)
    ledger = Ledger(fault_ledger, queue_name)
    durations = [fault_rng.randrange(0, 21) for _ in range(n)]
    # every tenth task is a durable function: it journals steps and sleeps (SUSPENDED, a run
    # of its own), so its journal (in the state hash) must go with its record too
    durable = {k for k in range(n) if k % 10 == 0}
    # and every tenth (another one) waits for a signal: half of them are sent one (before
    # their wait, during it, or after they timed out and ended), the rest time out, so the
    # buffers, accepted ids and deadlines of signals must go with their records too
    waiting = {k for k in range(n) if k % 10 == 5}
    poked = sorted(k for k in waiting if k % 20 == 5)
    # and every tenth (another one) streams output: its stream, with the end marker the
    # server adds (or a restart marker first, for a try after a SIGKILL), must go too
    streaming = {k for k in range(n) if k % 10 == 3}
    # every 50th (none of the above) carries an argument stored by reference (its chunks
    # must go with its record)
    offloaded = {k for k in range(n) if k % 50 == 7}

    def call(k: int, ms: int) -> Any:
        if k in offloaded:
            return faults.blob.call("b" * (OFFLOAD + 1000)).options(ttl=TTL)
        if k in waiting:
            return faults.signalled.call(ms + 200).options(ttl=TTL)
        if k in streaming:
            return faults.streamed.call(ms).options(ttl=TTL)
        task = faults.durable if k in durable else faults.sleep
        # a sleep far longer than the step before it takes, even on a loaded machine: under
        # load a 0.1 s sleep was over before the run could end to sleep, and ran inline
        return task.call(ms + 1_000 if k in durable else ms).options(ttl=TTL)

    # the records expire within the run: each task's end is counted from the event stream
    # as it grows (it keeps only its last ~10,000 events)
    tally = EventTally(admin, queue_name, prefix=PREFIX)
    try:
        async with app, tally:
            with fleet:
                slots = [fleet.start(8) for _ in range(2)]
                await fleet.ready()

                # a warm-up batch loads the scripts and the workers' code paths first, so
                # the baseline holds what any running deployment holds
                def warm(k: int) -> Any:
                    if k < 4:
                        return faults.signalled.call(50)
                    return faults.streamed.call(0) if k < 8 else faults.sleep.call(0)

                await history.enqueue_many(
                    [(warm(k).options(ttl=TTL), f"w{k}") for k in range(warmup)]
                )
                with contextlib.suppress(InvalidTransition):  # the signal scripts, loaded
                    await (await app.task_handle(history.task_id("w0"))).signal("poke", 1)
                await drained(app, ledger, warmup, timeout=30)
                memory_before, events_before = await memory_without_events(admin, ks)
                rss_before = {s.pid: rss_kb(s.pid) for s in slots}
                began = time.time()
                # parents of cascades, cancelled once their sub-tasks exist (one queued or
                # running, two delayed): the walk's markers, the sub-tasks' records and the
                # parents' journals must all go too. Half wait for their sub-tasks
                # (WAITING), half run on (RUNNING: their end walks again, from a worker).
                trees = [
                    await faults.tree.options(ttl=TTL).enqueue(2, running=1, ttl=TTL, wait=w)
                    for w in [True, False] * fault_scale.pick(3, 6)
                ]
                for i in range(0, n, 1_000):
                    batch = enumerate(durations[i : i + 1_000], start=i)
                    await history.enqueue_many([(call(k, ms), str(k)) for k, ms in batch])
                assert history.counts() == {"ok": n + warmup, "fail": 0, "ambiguous": 0}
                subtasks = [f"{t.id}.{k}" for t in trees for k in (1, 2, 3)]

                async def trees_built() -> bool:
                    return all([await admin.exists(ks.task(i)) for i in subtasks])

                await eventually(trees_built, timeout=30)
                for tree in trees:
                    await tree.cancel(reason="soak")
                for k in poked:
                    handle = await app.task_handle(history.task_id(str(k)))
                    with contextlib.suppress(InvalidTransition):  # it timed out and ended
                        await handle.signal("poke", k)
                # the chaos: a SIGKILL (restarted 0.5 s later) and a cut of every connection
                chaos = fault_scale.pick(1, 10)
                client_kills = 0
                for _ in range(chaos):
                    await asyncio.sleep(fault_rng.uniform(0.3, 0.8))
                    # always the same one: the other lives through the run, for its RSS
                    fleet.kill(victim := slots[0])
                    await asyncio.sleep(0.5)
                    fleet.restart(victim)
                    await asyncio.sleep(fault_rng.uniform(0.3, 0.8))
                    await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                    client_kills += 1
                survivors = [pid for pid in rss_before if any(s.pid == pid for s in slots)]
                done_at = await drained(
                    app, ledger, n + warmup, timeout=fault_scale.seconds(90, 1_800)
                )
                rss_after = {pid: rss_kb(pid) for pid in survivors}
                verdict = await check(
                    history=history,
                    effects=await ledger.read(),
                    admin_url=own_server.admin_url,
                    queue=queue_name,
                    prefix=PREFIX,
                    kills=fleet.signals,
                    leaks=True,
                    retention=TTL,
                    outlive=subtasks,
                )
                memory_after, events_after = await memory_without_events(admin, ks)
                keys = {
                    k.decode(): await admin.pttl(k)
                    async for k in admin.scan_iter(match=f"{PREFIX}:*", count=1_000)
                }
    finally:
        app.settings = saved
        await admin.aclose()

    # beyond the queue's keys (the checker's part): the registry of queues, and the worker
    # registry (records and index, all with a TTL)
    outside_queue = {k: ttl for k, ttl in keys.items() if not k.startswith(ks.base)}
    no_ttl_outside = sorted(
        k for k, ttl in outside_queue.items() if ttl == -1 and k != queues_key(PREFIX)
    )
    # sub-tasks' records are kept at least an hour by design (a parent finds its sub-tasks'
    # results again when it runs again), whatever their ttl: checked to have a TTL
    subtask_keys = {ks.task(i) for i in subtasks}
    structural_left = sorted(
        {
            k[len(ks.base) :].split(":", 1)[0]
            for k in keys
            if k.startswith(ks.base) and k not in subtask_keys
        }
    )
    adjusted_before = memory_before - events_before
    adjusted_after = memory_after - events_after
    figures = verdict.figures()
    # these read the task records, which expired before the check: not measured here
    for name in ("not_succeeded", "lease_losses", "in_flight_killed", "recovery_ms_p50"):
        figures[name] = None
    figures.pop("recovery_ms_p99")
    figures.pop("recovery_ms_max")
    growth_kb = {pid: rss_after[pid] - rss_before[pid] for pid in survivors}
    fault_report.add(
        n=n,
        workers=2,
        ttl_s=TTL,
        worker_kills=chaos,
        cascade_trees=len(trees),
        client_kills=client_kills,
        drain_s=round(done_at - began, 3),
        keys_left=len(keys),
        queue_kinds_left=structural_left,
        keys_without_ttl_outside_structural=len(verdict.leaks.no_ttl if verdict.leaks else [])
        + len(no_ttl_outside),
        used_memory_before=memory_before,
        used_memory_after=memory_after,
        events_stream_bytes=[events_before, events_after],
        used_memory_delta_pct=round(100 * (adjusted_after - adjusted_before) / adjusted_before, 2),
        worker_rss_growth_kb=growth_kb,
        **figures,
    )
    assert_sound(verdict)
    succeeded = [tally.of(i, "task.succeeded") for i in history.ids("ok")]
    assert succeeded == [1] * (n + warmup)  # each task succeeded, once
    # the durable functions slept as a run of their own (each resumed and replayed a step)
    assert all(tally.of(history.task_id(str(k)), "task.suspended") >= 1 for k in durable)
    # each cascade reached every sub-task: cancelled once, none ran to its end
    for task_id in [t.id for t in trees] + subtasks:
        assert tally.of(task_id, "task.cancelled") == 1, (task_id, tally.counts[task_id])
        assert tally.of(task_id, "task.succeeded") == 0, task_id
    assert verdict.dup_exec <= 8 * chaos  # at most what a killed worker had running
    assert verdict.leaks is not None and verdict.leaks.clean, verdict.leaks
    assert set(structural_left) <= STRUCTURAL | {"gen", "claim"}, structural_left
    assert no_ttl_outside == []
    assert all(0 < keys[k] <= 3_600_000 for k in subtask_keys if k in keys)  # an hour at most
    assert adjusted_after <= 1.10 * adjusted_before, (memory_before, memory_after)
    assert survivors, "every worker was killed: no process lived through the run"
    assert max(growth_kb.values()) < 20 * 1024, growth_kb
