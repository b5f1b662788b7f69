"""Durable tasks across real processes: worker SIGKILL and SIGTERM, a pause sent while no
worker runs the task, a server restart (AOF), the CLI commands, and key lifetimes.

Workers are `python -m segue worker tests.apps.durable:app` subprocesses; every processed
step is recorded in a ledger list (tests/apps/durable.py), read here to count executions.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskCancelled, TaskStatus
from tests._support import (
    ACL_PASSWORD,
    ACL_USER,
    Engine,
    Server,
    add_acl_user,
    admin_client,
    keys_of,
)
from tests._workers import Fleet
from tests.apps import durable
from tests.integration.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def ledger_key(queue: str) -> str:
    return f"ledger:{{{queue}}}"  # the queue's hash tag: one slot on the cluster too


def file_names(n: int) -> list[str]:
    return [f"file-{i}" for i in range(n)]


def total_of(files: list[str]) -> int:
    """What `durable.files` returns when each file was counted exactly once."""
    return sum(len(f) for f in files)


def fleet(url: str, queue: str, ledger_url: str, **settings: str) -> Fleet:
    """`segue worker tests.apps.durable:app` subprocesses recording to the queue's ledger;
    `settings` add SEGUE_* variables (e.g. max_deliveries="50")."""
    env = {"LEDGER_URL": ledger_url, "LEDGER_KEY": ledger_key(queue)}
    env |= {f"SEGUE_{k.upper()}": v for k, v in settings.items()}
    return Fleet("tests.apps.durable:app", url, queue, concurrency=4, lease=1.5, env=env)


@dataclass(frozen=True)
class Row:
    """One execution of one step, as recorded by the task."""

    task: str
    worker: str
    tries: int
    step: str


class Ledger:
    """Reads the ledger list of a queue through the admin connection."""

    def __init__(self, engine: Engine, queue: str) -> None:
        self.engine = engine
        self.key = ledger_key(queue)

    async def rows(self, task_id: str) -> list[Row]:
        client = admin_client(self.engine)
        try:
            raw = await client.lrange(self.key, 0, -1)
        finally:
            await client.aclose()
        rows = [Row(t, w, int(n), s) for t, w, n, s in (r.decode().split() for r in raw)]
        return [r for r in rows if r.task == task_id]

    async def wait_for_step(self, task_id: str, step: str, timeout: float = 10.0) -> None:
        async def recorded() -> bool:
            return any(r.step == step for r in await self.rows(task_id))

        await eventually(recorded, timeout=timeout, interval=0.01)


async def state_of(engine: Engine, app: App, task_id: str) -> dict[str, Any]:
    """The task's stored state, read directly from the server (not through segue)."""
    client = admin_client(engine)
    try:
        raw = await client.hgetall(
            f"{app.settings.prefix}:{{{app.settings.queue}}}:state:{task_id}"
        )
    finally:
        await client.aclose()
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def steps(rows: list[Row]) -> list[int]:
    return [int(r.step) for r in rows]


def use(app: App, url: str, queue: str) -> App:
    # the test's own App knows the tasks of the worker module (same names and types)
    app.settings = app.settings.replace(redis_url=url, queue=queue, poll_seconds=0.2)
    return app


@pytest.fixture
def workers(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    with fleet(segue_valkey.url, queue_name, segue_valkey.admin_url) as f:
        yield f


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> App:
    return use(durable.app, segue_valkey.url, queue_name)


@pytest.fixture
def ledger(segue_valkey: Engine, queue_name: str) -> Ledger:
    return Ledger(segue_valkey, queue_name)


# --- worker death -------------------------------------------------------------------------


async def test_a_sigkilled_file_job_is_finished_from_its_checkpoint_by_another_worker(
    workers: Fleet, client_app: App, ledger: Ledger
) -> None:
    files = file_names(20)
    first = workers.start()
    async with client_app:
        h = await durable.process_files.enqueue(files, 0.1)
        await ledger.wait_for_step(h.id, "7")
        workers.kill(first)
        second = workers.start()
        assert await h.result(timeout=15) == total_of(files)  # the total lived in the state
        rows = await ledger.rows(h.id)
        info = await h.info()
    in_first = [r for r in rows if r.worker.startswith(first.id_prefix)]
    in_second = [r for r in rows if r.worker.startswith(second.id_prefix)]
    assert in_first + in_second == rows  # nobody else ran it, and the first run came first
    done_first = steps(in_first)
    assert done_first == list(range(len(done_first))) and len(done_first) >= 8
    # the second run starts from the checkpoint: after the last file the first run
    # recorded, or at that file itself if the kill fell between its record and its
    # checkpoint (the one file in flight)
    start = steps(in_second)[0]
    assert start in (len(done_first) - 1, len(done_first))
    assert steps(in_second) == list(range(start, 20))
    runs = Counter(steps(rows))
    assert sorted(runs) == list(range(20))
    assert [s for s, n in runs.items() if n > 1] in ([], [done_first[-1]])
    assert {r.tries for r in in_first} == {1} and {r.tries for r in in_second} == {2}
    assert info.tries == 2  # the killed run counted as a try


async def test_operator_pause_in_one_worker_process_and_resume_in_another(
    workers: Fleet, client_app: App, ledger: Ledger, segue_valkey: Engine
) -> None:
    files = file_names(30)
    first = workers.start()
    async with client_app:
        h = await durable.process_files.enqueue(files, 0.1)
        await ledger.wait_for_step(h.id, "2")
        assert await h.pause(reason="ops: move to another worker") is TaskStatus.RUNNING
        assert await h.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
        at_pause = await ledger.rows(h.id)
        state = await state_of(segue_valkey, client_app, h.id)
        workers.terminate(first)
        assert workers.wait_exit(first, timeout=10) == 0
        assert await ledger.rows(h.id) == at_pause  # held: nothing ran while paused
        assert await h.status() is TaskStatus.PAUSED
        second = workers.start()
        assert await h.resume() is TaskStatus.QUEUED
        assert await h.result(timeout=15) == total_of(files)
        rows = await ledger.rows(h.id)
        info = await h.info()
    # the pause is carried out at the checkpoint that follows the state write of a step,
    # so the state names exactly the steps done: none runs twice, not even at the boundary
    k = len(at_pause)
    assert steps(at_pause) == list(range(k))
    assert state == {"current_index": k, "total": total_of(files[:k])}
    assert rows[:k] == at_pause
    assert all(r.worker.startswith(first.id_prefix) for r in at_pause)
    assert all(r.worker.startswith(second.id_prefix) for r in rows[k:])
    assert steps(rows) == list(range(30))
    assert {r.tries for r in rows} == {1} and info.tries == 1  # a pause spends no try
    paused = [t for t in info.history if t.status is TaskStatus.PAUSED]
    assert [t.reason for t in paused] == ["ops: move to another worker"]


async def test_commands_sent_while_the_worker_is_dead_are_carried_out_at_lease_expiry(
    workers: Fleet, client_app: App, ledger: Ledger, segue_valkey: Engine
) -> None:
    files = file_names(30)
    first = workers.start()
    async with client_app:
        h = await durable.process_files.enqueue(files, 0.1)
        c = await durable.process_files.enqueue(files, 0.1)
        await ledger.wait_for_step(h.id, "2")
        await ledger.wait_for_step(c.id, "2")
        workers.kill(first)
        before = await ledger.rows(h.id)
        c_before = await ledger.rows(c.id)
        # nobody knows yet that their worker died: the requests are stored for it
        assert await h.pause(reason="ops: hold it") is TaskStatus.RUNNING
        assert await c.cancel(reason="ops: drop it") is TaskStatus.RUNNING
        second = workers.start()
        assert await h.wait_for(TaskStatus.PAUSED, timeout=10) is TaskStatus.PAUSED
        assert await c.wait_for(TaskStatus.CANCELLED, timeout=10) is TaskStatus.CANCELLED
        info = await h.info()
        assert await ledger.rows(h.id) == before  # the second worker did not run it
        assert [t.status for t in info.history].count(TaskStatus.RUNNING) == 1
        assert info.history[-1].reason == "ops: hold it"
        assert info.worker_id is None
        assert await ledger.rows(c.id) == c_before
        assert (await c.info()).history[-1].reason == "ops: drop it"
        with pytest.raises(TaskCancelled):
            await c.result(timeout=1)
        assert await keys_of(segue_valkey, f"*state:{c.id}") == []
        assert await h.resume() is TaskStatus.QUEUED
        assert await h.result(timeout=15) == total_of(files)
        rows = await ledger.rows(h.id)
        info = await h.info()
    after = rows[len(before) :]
    assert rows[: len(before)] == before
    assert all(r.worker.startswith(second.id_prefix) for r in after)
    assert steps(after)[0] in (len(before) - 1, len(before))  # from the checkpoint
    assert steps(after) == list(range(steps(after)[0], 30))
    assert {r.tries for r in after} == {2} and info.tries == 2  # the killed run was a try


# --- server restart -----------------------------------------------------------------------


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    add_acl_user(s.port)  # ACL users are not in the AOF: added again after each start
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def test_paused_and_suspended_tasks_keep_status_and_state_across_a_server_restart(
    aof_server: Server, queue_name: str
) -> None:
    assert aof_server.proc is not None
    engine = Engine(
        url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0",
        kind="valkey",
        admin_url=f"redis://127.0.0.1:{aof_server.port}/0",
        pids=(aof_server.proc.pid,),
    )
    app = use(durable.app, engine.url, queue_name)
    ledger = Ledger(engine, queue_name)
    workers = fleet(engine.url, queue_name, engine.admin_url)
    files = file_names(30)
    try:
        first = workers.start()
        async with app:
            # long enough that the first worker stops before it is due again
            suspended = await durable.suspender.enqueue(4.0)
            paused = await durable.process_files.enqueue(files, 0.1)
            await ledger.wait_for_step(paused.id, "1")
            await paused.pause()
            assert await paused.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
            assert await suspended.status() is TaskStatus.SUSPENDED
            workers.terminate(first)
            assert workers.wait_exit(first, timeout=10) == 0
            before = {
                h.id: (await h.info(), await state_of(engine, app, h.id))
                for h in (suspended, paused)
            }
        assert before[suspended.id][0].status is TaskStatus.SUSPENDED
        assert before[suspended.id][0].due_at is not None
        assert before[suspended.id][1] == {"runs": 1, "saved": "kept across the pause"}
        assert before[paused.id][1]["current_index"] >= 2

        aof_server.kill()
        aof_server.start()
        add_acl_user(aof_server.port)

        async with app:
            for h in (suspended, paused):
                info = await h.info()
                old_info, old_state = before[h.id]
                assert (info.status, info.tries, info.due_at) == (
                    old_info.status,
                    old_info.tries,
                    old_info.due_at,
                )
                assert await state_of(engine, app, h.id) == old_state
            assert [i.id for i in await app.tasks(TaskStatus.PAUSED)] == [paused.id]
            second = workers.start()
            assert await paused.resume() is TaskStatus.QUEUED
            assert await suspended.result(timeout=15) == "kept across the pause (run 2)"
            assert await paused.result(timeout=15) == total_of(files)
            s_rows = await ledger.rows(suspended.id)
            p_rows = await ledger.rows(paused.id)
    finally:
        workers.stop_all()
    assert [r.step for r in s_rows] == ["run0", "run1"]
    assert s_rows[1].worker.startswith(second.id_prefix)
    assert steps(p_rows) == list(range(30))  # resumed from its state: no step twice
    k = before[paused.id][1]["current_index"]
    assert all(r.worker.startswith(second.id_prefix) for r in p_rows[k:])


# --- the CLI ------------------------------------------------------------------------------


async def segue_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "segue", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_pause_resume_and_cancel_of_running_tasks(
    workers: Fleet, client_app: App, ledger: Ledger, segue_valkey: Engine, queue_name: str
) -> None:
    # 6 s of work: the CLI's pause must reach it before it ends, and a CLI process starts
    # in over a second on a loaded machine
    files = file_names(60)
    url = segue_valkey.url
    workers.start()
    async with client_app:
        p = await durable.process_files.enqueue(files, 0.1)
        c = await durable.process_files.enqueue(file_names(300), 0.1)
        await ledger.wait_for_step(p.id, "1")
        await ledger.wait_for_step(c.id, "1")

        out = await segue_cli("pause", p.id, "--url", url, "--reason", "cli: hold on")
        assert (out.returncode, out.stdout) == (0, f"task {p.id}: running\n"), out.stderr
        assert await p.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
        out = await segue_cli("pause", p.id, "--url", url)  # a repeat: harmless
        assert (out.returncode, out.stdout) == (0, f"task {p.id}: paused\n"), out.stderr
        out = await segue_cli("resume", p.id, "--url", url)
        assert (out.returncode, out.stdout) == (0, f"task {p.id}: queued\n"), out.stderr

        # --app takes the App's settings (SEGUE_* of the environment) instead of --url
        settings_env = {"SEGUE_REDIS_URL": url, "SEGUE_QUEUE": queue_name}
        out = await segue_cli("cancel", c.id, "--app", "tests.apps.durable:app", env=settings_env)
        assert (out.returncode, out.stdout) == (0, f"task {c.id}: running\n"), out.stderr
        assert await c.wait_for(TaskStatus.CANCELLED, timeout=3) is TaskStatus.CANCELLED

        assert await p.result(timeout=30) == total_of(files)
        out = await segue_cli("resume", p.id, "--url", url)
        assert out.returncode != 0 and out.stdout == ""
        assert "cannot resume" in out.stderr and "succeeded" in out.stderr

        out = await segue_cli("cancel", c.id, "--url", url)  # cancelling an ended task
        assert (out.returncode, out.stdout) == (0, f"task {c.id}: cancelled\n"), out.stderr

        info = await p.info()
        assert [t.reason for t in info.history if t.status is TaskStatus.PAUSED] == ["cli: hold on"]
        assert steps(await ledger.rows(p.id)) == list(range(60))
        assert await keys_of(segue_valkey, f"*state:{c.id}") == []


# --- key lifetimes (every engine) ---------------------------------------------------------


async def test_a_paused_task_keeps_its_state_past_its_ttl_and_cancel_leaves_only_the_record(
    segue_engine: Engine, queue_name: str
) -> None:
    app = use(durable.app, segue_engine.url, queue_name)
    ledger = Ledger(segue_engine, queue_name)
    workers = fleet(segue_engine.url, queue_name, segue_engine.admin_url)
    prefix = f"{app.settings.prefix}:{{{queue_name}}}:"
    try:
        workers.start()
        async with app:
            h = await durable.process_files.options(ttl=1).enqueue(file_names(100), 0.05)
            record, state = f"{prefix}task:{h.id}", f"{prefix}state:{h.id}"
            await ledger.wait_for_step(h.id, "0")
            await h.pause()
            assert await h.wait_for(TaskStatus.PAUSED, timeout=3) is TaskStatus.PAUSED
            await asyncio.sleep(1.5)  # longer than the ttl of 1 s: it must not apply yet
            admin = admin_client(segue_engine)
            try:
                assert await h.status() is TaskStatus.PAUSED
                assert await keys_of(segue_engine, f"*{h.id}*") == sorted([record, state])
                assert await admin.ttl(state) == -1 and await admin.ttl(record) == -1
                assert (await state_of(segue_engine, app, h.id))["current_index"] >= 1

                assert await h.cancel() is TaskStatus.CANCELLED
                assert await keys_of(segue_engine, f"*{h.id}*") == [record]
                assert 0 < await admin.pttl(record) <= 1000  # the record lives for its ttl

                async def gone() -> bool:
                    return await keys_of(segue_engine, f"*{h.id}*") == []

                await eventually(gone, timeout=5)
            finally:
                await admin.aclose()
    finally:
        workers.stop_all()
