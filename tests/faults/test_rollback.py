"""R2 data rollback (RELIABILITY §8 B): the server's machine crashes and comes back with an
older copy of its data (an OS crash losing the page cache, a restore from a backup).

Simulated by copying the server's AOF directory at a time T (after a BGREWRITEAOF), running
on, then SIGKILLing the server, putting the copy back and starting it again on its port.
What was acknowledged before T survives; what happened after T is gone from the server, so
the tasks enqueued after T are lost (expected: the figure is reported) and the tasks finished
after T run again. The workers must notice the rollback (their generation marks went back)
within a reconcile cycle, and nothing may be left queued or running without a lease."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from segue import BrokerError, TaskStatus
from segue._keys import Keyspace
from tests._support import ACL_PASSWORD, ACL_USER, Server, add_acl_user
from tests._workers import Fleet
from tests.apps import faults, journal, signals
from tests.faults.checker import check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import History, Ledger, LedgerServer
from tests.faults.test_cascade_crashes import half_walked, statuses, sub_ids
from tests.integration.conftest import eventually

APP = "tests.apps.faults:app"
JOURNAL_APP = "tests.apps.journal:app"
SIGNALS_APP = "tests.apps.signals:app"
RECONCILE = 0.5  # reconcile_seconds of the workers
OFFLOAD = 16 * 1024  # offload_bytes of the first run
LEASE = 2.0


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Server]:
    directory = tmp_path / "server"
    directory.mkdir()
    s = Server(directory)
    s.start()
    add_acl_user(s.port)
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


def _snapshot(server: Server, to: Path) -> None:
    """Rewrite the AOF, wait for the rewrite to end, and copy the data directory."""
    client: Any = redis.Redis(port=server.port)
    try:
        client.bgrewriteaof()
        deadline = time.monotonic() + 20
        while True:
            info = client.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            assert time.monotonic() < deadline, "BGREWRITEAOF did not end"
            time.sleep(0.01)
    finally:
        client.close()
    shutil.copytree(server.dir, to)


def _restore(server: Server, copy: Path) -> None:
    shutil.rmtree(server.dir)
    shutil.copytree(copy, server.dir)


def disagreements(client: Any, ks: Keyspace) -> list[str]:
    """Task records whose structure lost them: running without a lease entry, queued in no
    queued list (what the reconciler exists to repair). Read in one transaction, so a
    claim between two reads is not mistaken for a disagreement."""
    prefix = ks.base + "task:"
    ids = [k.decode()[len(prefix) :] for k in client.scan_iter(match=prefix + "*", count=1000)]
    pipe = client.pipeline(transaction=True)
    pipe.zrange(ks.leases, 0, -1)
    for key in ks.pending:
        pipe.lrange(key, 0, -1)
    for task_id in ids:
        pipe.hget(prefix + task_id, "s")
    leases, *rest = pipe.execute()
    lists, statuses = rest[: len(ks.pending)], rest[len(ks.pending) :]
    leased = {m.decode() for m in leases}
    listed = {m.decode() for members in lists for m in members}
    found = []
    for task_id, status in zip(ids, statuses, strict=True):
        if status == b"running" and task_id not in leased:
            found.append(f"running without lease: {task_id}")
        elif status == b"queued" and task_id not in listed:
            found.append(f"queued but not listed: {task_id}")
    return found


async def test_a_server_restored_from_an_older_copy_is_detected_and_nothing_is_stuck(
    aof_server: Server,
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """R2: two workers drain what a producer enqueues in batches; at T the data directory
    is copied, the run goes on for about two seconds, then the server is killed, the copy
    restored and the server restarted. Every task acknowledged before T applies its effect
    (once: the ledger's SET NX) and succeeds; nothing is left queued or running; both
    workers log the rollback and a queue.rollback event is written within a reconcile
    cycle of the restart; the tasks enqueued after T that never ran are reported lost."""
    n = fault_scale.pick(1_000, 2_000)
    batch = 25
    batches = n // batch
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    admin_url = f"redis://127.0.0.1:{aof_server.port}/0"
    app = faults.app
    saved = app.settings
    # the first task of each batch carries an argument stored by reference: its chunks
    # must be kept with their record or expire, however the data went back
    app.settings = saved.replace(
        redis_url=url, queue=queue_name, poll_seconds=0.2, offload_bytes=OFFLOAD
    )
    history = History(app, queue_name)
    ks = Keyspace("segue", queue_name)
    env = {
        **fault_ledger.env(),
        "SEGUE_RECONCILE_SECONDS": str(RECONCILE),
        "SEGUE_OFFLOAD_BYTES": str(OFFLOAD),
    }
    fleet = Fleet(APP, url, queue_name, lease=LEASE, env=env, log_dir=tmp_path / "workers")
    copy = tmp_path / "copy"
    gap = 0.05
    at_t = fault_rng.randrange(batches // 3, 2 * batches // 3)
    admin: Any = redis.Redis(port=aof_server.port)
    try:
        async with app:
            with fleet:
                # four runs at a time per worker, 20-60 ms each: slower than the producer,
                # so a backlog is queued and runs are in flight at T and at the kill
                fleet.start(4)
                fleet.start(4)
                await fleet.ready()
                t_copy = 0.0
                for b in range(batches):
                    if b == at_t:
                        t_copy = time.time()
                        await asyncio.to_thread(_snapshot, aof_server, copy)
                    calls = [
                        (
                            faults.blob.call("b" * (OFFLOAD + 100))
                            if i == 0
                            else faults.sleep.call(fault_rng.randrange(20, 61)),
                            f"{b}.{i}",
                        )
                        for i in range(batch)
                    ]
                    await history.enqueue_many(calls)
                    await asyncio.sleep(gap)
                assert history.counts() == {"ok": n, "fail": 0, "ambiguous": 0}
                await asyncio.sleep(fault_rng.uniform(0.3, 0.8))
                before_t = {o.task_id for o in history.ops if (o.completed or 0) < t_copy}
                after_t = set(history.ids("ok")) - before_t
                done_before_kill = set((await Ledger(fault_ledger, queue_name).read()).effects)

                killed = time.time()
                aof_server.kill()
                _restore(aof_server, copy)
                aof_server.start()
                add_acl_user(aof_server.port)
                up = time.time()

                async def rollback_events() -> list[tuple[int, dict[bytes, bytes]]]:
                    entries = admin.xrange(ks.events, min=int(killed * 1000) - 60_000)
                    return [
                        (int(e.decode().split("-")[0]), f)
                        for e, f in entries
                        if f[b"e"] == b"queue.rollback"
                    ]

                async def both_saw_it() -> bool:
                    return len(await rollback_events()) >= 2

                await eventually(both_saw_it, timeout=10, interval=0.02)
                seen_at = [ms for ms, _ in await rollback_events()]
                # the reconciler's bound: two intervals after the restart, every record is
                # where its status says (a margin for a cycle delayed on a loaded machine)
                await asyncio.sleep(max(0.0, up + 2 * RECONCILE + 0.5 - time.time()))
                broken_after_2p = disagreements(admin, ks)

                async def settled() -> bool:
                    c = await app.queue_counts(queue_name)
                    return c["queued"] + c["running"] + c["scheduled"] == 0

                await eventually(settled, timeout=60, interval=0.1)
                settled_at = time.time()

                # no kept chunks without a record that names them, once a reconcile cycle
                # ran (those still pending expire within PENDING_SECONDS by themselves)
                async def no_orphan_chunks() -> bool:
                    return kept_orphan_chunks(admin, ks) == []

                await eventually(no_orphan_chunks, timeout=4 * RECONCILE + 2)
                effects = await Ledger(fault_ledger, queue_name).read()
                verdict = await check(
                    history=history,
                    effects=effects,
                    admin_url=admin_url,
                    queue=queue_name,
                    leaks=True,
                )
            logs = {s.name: " ".join(fleet.log(s).split()) for s in fleet.slots}  # unwrapped
    finally:
        app.settings = saved
        admin.close()

    lost_after_t = sorted(set(verdict.lost) & after_t)
    rerun = sum(1 for i in done_before_kill if len(effects.executions.get(i, [])) > 1)
    repairs = sum(log.count("repaired") for log in logs.values())
    detection_ms = [ms - up * 1000 for ms in seen_at]
    fault_report.add(
        n=n,
        workers=2,
        lease_s=LEASE,
        reconcile_s=RECONCILE,
        acked_before_t=len(before_t),
        acked_after_t=len(after_t),
        post_t_lost=len(lost_after_t),
        rerun_after_rollback=rerun,
        rollback_detection_ms=round(max(detection_ms), 1),
        rollback_detection_ms_first=round(min(detection_ms), 1),
        disagreements_after_2_intervals=len(broken_after_2p),
        repairs=repairs,
        settle_after_restart_s=round(settled_at - up, 3),
        down_s=round(up - killed, 3),
        **verdict.figures(),
    )
    assert before_t and after_t
    # the copy was older than what the workers had done: tasks they finished after T ran
    # again, and tasks enqueued after T that had not run are gone
    assert rerun > 0 and lost_after_t
    assert set(verdict.lost) <= after_t, "a task acknowledged before the copy was lost"
    assert before_t <= set(effects.effects)
    assert set(verdict.not_succeeded) & before_t == set()
    assert verdict.dup_effect == [] and verdict.phantom == []
    assert verdict.stuck == [], f"tasks left neither ended nor dead: {verdict.stuck[:10]}"
    assert verdict.leaks is not None
    assert verdict.leaks.queued == verdict.leaks.running == 0
    assert broken_after_2p == [], broken_after_2p
    # each worker noticed, and said so, within one reconcile cycle of the restart (plus
    # its reconnection)
    assert all("went back in time" in log for log in logs.values()), logs
    assert max(detection_ms) <= (RECONCILE + 1.0) * 1000


def kept_orphan_chunks(admin: Any, ks: Keyspace) -> list[str]:
    """Offloaded values' chunk keys kept (no TTL) whose record is gone or does not name
    them (lib/blobs.lua): what the reconciler must not leave."""
    found = []
    for raw in admin.scan_iter(match=ks.blob("*", "*"), count=1000):
        key = raw.decode()
        if admin.pttl(key) != -1:
            continue
        task_id, _, name = key[len(ks.base) + len("blob:") :].rpartition(":")
        off = admin.hget(ks.task(task_id), "off")
        if off is None or name not in off.decode().split():
            found.append(key)
    return found


def _journal_counts(directory: Path, n: int) -> list[int]:
    """How many times each step's effect happened (tests/apps/journal.py, one line each)."""
    out = []
    for i in range(n):
        f = directory / f"step-{i}"
        out.append(len(f.read_text().splitlines()) if f.exists() else 0)
    return out


async def test_a_sleeping_task_and_a_journal_survive_a_rollback_and_the_reconcilers_repair(
    aof_server: Server, queue_name: str, tmp_path: Path
) -> None:
    """R2 with durable functions: at T one task sleeps (SUSPENDED, due in the schedule) after
    a journaled step and another is part way through journaled steps. The server comes back
    from the copy taken at T, and the sleeping task's schedule entry is gone too (an index
    lost under segue: what the reconciler repairs). The sleeping task wakes at its due time
    and neither task runs a step journaled before T again."""
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    app = journal.app
    saved = app.settings
    app.settings = saved.replace(redis_url=url, queue=queue_name, poll_seconds=0.1)
    ks = Keyspace("segue", queue_name)
    sleeper_dir, steps_dir = tmp_path / "sleeper", tmp_path / "steps"
    sleeper_dir.mkdir()
    steps_dir.mkdir()
    n, gap = 8, 0.3
    env = {"SEGUE_RECONCILE_SECONDS": str(RECONCILE), "SEGUE_SLEEP_INLINE_SECONDS": "0.2"}
    fleet = Fleet(JOURNAL_APP, url, queue_name, lease=LEASE, env=env, log_dir=tmp_path / "w")
    admin: Any = redis.Redis(port=aof_server.port)
    try:
        async with app:
            with fleet:
                fleet.start(2)
                await fleet.ready()
                sleeping = await journal.sleeper.enqueue(str(sleeper_dir), 6.0)
                stepping = await journal.slow_steps.enqueue(str(steps_dir), n, gap)

                async def both_in_progress() -> bool:
                    s = await sleeping.status()
                    return s is TaskStatus.SUSPENDED and _journal_counts(steps_dir, n)[1] > 0

                await eventually(both_in_progress, timeout=15, interval=0.02)
                due = float(admin.zscore(ks.scheduled, sleeping.id)) / 1000
                journaled = {
                    k.decode()
                    for k in admin.hkeys(ks.base + f"state:{stepping.id}")
                    if k.startswith(b"~j:")
                }
                await asyncio.to_thread(_snapshot, aof_server, tmp_path / "copy")
                await asyncio.sleep(2 * gap)  # steps journaled after T, gone with the copy
                aof_server.kill()
                _restore(aof_server, tmp_path / "copy")
                aof_server.start()
                add_acl_user(aof_server.port)
                admin.zrem(ks.scheduled, sleeping.id)  # the index lost under segue
                woke = await sleeping.result(timeout=30)
                total = await stepping.result(timeout=30)
                info = await sleeping.info()
            log = " ".join(fleet.log(fleet.slots[0]).split())
    finally:
        app.settings = saved
        admin.close()
    assert f"repaired scheduled_not_indexed of task {sleeping.id}" in log, log[-2000:]
    # at its due time: the repair put it back at the due the record holds, and the run
    # that woke replayed past the sleep (a restarted sleep would wake 6 s after the repair)
    assert due - 0.05 <= woke <= due + 2 * RECONCILE + 1.0
    assert _journal_counts(sleeper_dir, 2) == [1, 1]
    assert info.tries == 1
    assert total == sum(range(n))
    counts = _journal_counts(steps_dir, n)
    assert journaled and all(counts[int(k.split("-")[1])] == 1 for k in journaled), counts
    assert min(counts) >= 1


async def test_a_cascade_under_way_at_the_copy_is_walked_again_and_the_tree_ends_cancelled(
    aof_server: Server, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R2 with a cascade to sub-tasks: at T the cancel of a tree is half walked (its client
    and the worker that took the walk on both stopped mid-walk, test_cascade_crashes.py).
    After T another worker finishes the walk; then the machine goes down (server and worker
    killed) and the server comes back from the copy taken at T, with the walk's marker lost
    too (a key lost under segue: what the reconciler repairs, from the root's record). The
    restarted worker's reconciler puts the marker back, the walk runs again, and the whole
    tree ends cancelled, nothing left queued, scheduled or running, no marker left."""
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=url, queue=queue_name, poll_seconds=0.2)
    ks = Keyspace("segue", queue_name)
    env = {"SEGUE_RECONCILE_SECONDS": str(RECONCILE)}
    fleet = Fleet(APP, url, queue_name, lease=1.0, env=env, log_dir=tmp_path / "w")
    admin: Any = redis.asyncio.Redis(port=aof_server.port)
    try:
        async with app:
            with fleet:
                root, _ = await half_walked(app, fleet, admin, ks, tmp_path / "hits", monkeypatch)
                subs = sub_ids(root.id)
                left = await statuses(admin, ks, subs)
                assert "scheduled" in left and "cancelled" in left  # T: under way
                await asyncio.to_thread(_snapshot, aof_server, tmp_path / "copy")
                finisher = fleet.start(2)

                async def tree_cancelled() -> bool:
                    return set(await statuses(admin, ks, subs)) == {"cancelled"}

                await eventually(tree_cancelled, timeout=20)
                fleet.kill(finisher)
                aof_server.kill()
                _restore(aof_server, tmp_path / "copy")
                aof_server.start()
                add_acl_user(aof_server.port)
                assert await statuses(admin, ks, subs) == left  # the walk after T is gone
                assert await admin.hdel(ks.base + "cascade", root.id) == 1
                fleet.restart(finisher)
                await fleet.line_with(finisher, f"repaired cascade_lost of task {root.id}")
                await eventually(tree_cancelled, timeout=20)
                assert await root.status() is TaskStatus.CANCELLED
                assert await admin.hlen(ks.base + "cascade") == 0
                assert await admin.hget(ks.task(root.id), "cw") is None
                sync_admin: Any = redis.Redis(port=aof_server.port)
                try:
                    assert disagreements(sync_admin, ks) == []
                finally:
                    sync_admin.close()
                counts = await app.queue_counts(queue_name)
                assert counts["queued"] + counts["running"] + counts["scheduled"] == 0
    finally:
        app.settings = saved
        await admin.aclose()


async def test_a_wait_for_a_signal_survives_a_rollback_and_its_lost_deadline_is_repaired(
    aof_server: Server, queue_name: str, tmp_path: Path
) -> None:
    """R2 with a wait for a signal: at T a task WAITS (its deadline in the queue's `sigdue`
    index). A signal sent after T is gone with the copy (the rollback's expected loss), and
    the deadline's index entry is lost under segue too: the reconciler puts it back from the
    record, and the wait times out at its first deadline."""
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    app = signals.app
    saved = app.settings
    app.settings = saved.replace(redis_url=url, queue=queue_name, poll_seconds=0.1)
    ks = Keyspace("segue", queue_name)
    env = {"SEGUE_RECONCILE_SECONDS": str(RECONCILE)}
    fleet = Fleet(SIGNALS_APP, url, queue_name, lease=LEASE, env=env, log_dir=tmp_path / "w")
    admin: Any = redis.Redis(port=aof_server.port)
    try:
        async with app:
            with fleet:
                fleet.start(2)
                await fleet.ready()
                h = await signals.deadline.enqueue(4.0, 0.0)
                await eventually(lambda: _is(h, TaskStatus.WAITING), timeout=15)
                due = float(admin.zscore(ks.signal_due, h.id)) / 1000
                await asyncio.to_thread(_snapshot, aof_server, tmp_path / "copy")
                await h.signal("never", "after T")  # accepted, then lost with the rollback
                await h.wait_for(TaskStatus.SUCCEEDED, timeout=10)
                aof_server.kill()
                _restore(aof_server, tmp_path / "copy")
                aof_server.start()
                add_acl_user(aof_server.port)
                admin.zrem(ks.signal_due, h.id)  # the index lost under segue
                with contextlib.suppress(BrokerError):  # its connection went with the server
                    await h.status()
                assert await h.status() is TaskStatus.WAITING  # the signal went with it
                woke = await h.result(timeout=30)
            log = " ".join(fleet.log(fleet.slots[0]).split())
    finally:
        app.settings = saved
        admin.close()
    assert f"repaired signal_deadline_not_indexed of task {h.id}" in log, log[-2000:]
    assert due - 0.05 <= woke <= due + 2 * RECONCILE + 1.0


async def _is(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)
