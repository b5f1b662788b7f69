"""Durable functions across real worker processes killed at the step journal's fault
points (segue._faults.STEP_POINTS), and a durable sleep across a worker SIGKILL.

A step's side effect is a line in a file of its own (tests/apps/journal.py), so each step's
effect is counted outside segue: exactly once when the kill falls after its journal write,
twice for the one step whose journal write a kill cut off.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskStatus
from tests._support import ACL_PASSWORD, ACL_USER, Engine, Server, add_acl_user
from tests._workers import Fleet
from tests.apps import journal
from tests.faults.conftest import Scale
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow

LEASE = 1.0
# bounds only a failure: a worker subprocess reaching its fault point on a loaded machine
REACHED_S = 60


# the cluster variants run in full mode: the same kills on one slot of a cluster, where the
# single server already checks every rule in quick mode
@pytest.fixture(params=["segue_valkey", pytest.param("segue_cluster", marks=pytest.mark.full_only)])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def client_app(engine: Engine, queue_name: str) -> Iterator[App]:
    app = journal.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue_name, poll_seconds=0.1)
    yield app
    app.settings = saved


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    add_acl_user(s.port)  # ACL users are not in the AOF: added again after each start
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


def counts(directory: Path, n: int) -> list[int]:
    out = []
    for i in range(n):
        f = directory / f"step-{i}"
        out.append(len(f.read_text().splitlines()) if f.exists() else 0)
    return out


def fleet(engine: Engine, queue: str, hits: Path) -> Fleet:
    env = {"SEGUE_FAULTPOINT_ONCE": "1", "SEGUE_FAULTPOINT_LOG": str(hits)}
    return Fleet("tests.apps.journal:app", engine.url, queue, concurrency=1, lease=LEASE, env=env)


@pytest.mark.pairable  # invariants, not timings: scripts/test runs it beside another one
async def test_kills_after_journal_writes_run_each_step_once_and_spend_no_try(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path, fault_scale: Scale
) -> None:
    n = 20
    kills = fault_scale.pick(3, n - 1)  # in full mode, a kill after every step but the last
    hits = tmp_path / "hits"
    point = {"SEGUE_FAULTPOINT": "after_journal_write:kill"}
    with fleet(engine, queue_name, hits) as workers:
        async with client_app:
            h = await journal.steps.enqueue(str(tmp_path), n)
            slot = workers.start(env=point)
            for k in range(kills):
                # each process journals one step (a new one) and is SIGKILLed right after
                await eventually(lambda: _true(_hit_count(hits) > k), timeout=REACHED_S)  # noqa: B023
                slot.proc.wait(timeout=10)
                if k < kills - 1:
                    workers.restart(slot)
            workers.start()  # a worker with no fault point finishes it
            assert await h.result(timeout=30) == sum(range(n))
            info = await h.info()
    assert counts(tmp_path, n) == [1] * n  # every effect exactly once
    assert info.tries == 1  # the kills made progress: no try spent, not worker_lost
    assert [s.name for s in info.steps] == [f"step-{i}" for i in range(n)]


@pytest.mark.pairable  # invariants, not timings: scripts/test runs it beside another one
async def test_a_kill_between_a_steps_effect_and_its_journal_write_reruns_only_that_step(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    n = 6
    hits = tmp_path / "hits"
    with fleet(engine, queue_name, hits) as workers:
        async with client_app:
            h = await journal.steps.enqueue(str(tmp_path), n)
            # first a run that journals step 0 and dies right after...
            first = workers.start(env={"SEGUE_FAULTPOINT": "after_journal_write:kill"})
            await eventually(lambda: _true(hits.exists()), timeout=REACHED_S)
            first.proc.wait(timeout=10)
            # ...then one that replays step 0, does step 1's effect and dies before writing it
            workers.restart(first, env={"SEGUE_FAULTPOINT": "after_step_effect:kill"})
            await eventually(
                lambda: _true("after_step_effect kill" in hits.read_text()), timeout=REACHED_S
            )
            first.proc.wait(timeout=10)
            workers.start()
            assert await h.result(timeout=30) == sum(range(n))
            info = await h.info()
    assert counts(tmp_path, n) == [1, 2, 1, 1, 1, 1]
    # the second run made no progress before it died: its loss counts as a try
    assert info.tries == 2


@pytest.mark.pairable  # invariants, not timings: scripts/test runs it beside another one
async def test_step_failed_is_replayed_then_the_step_runs_again_on_the_next_try(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    with fleet(engine, queue_name, tmp_path / "hits") as workers:
        workers.start()
        async with client_app:
            h = await journal.payer.enqueue(str(tmp_path))
            assert await h.result(timeout=30) == "paid"
            info = await h.info()
    caught = (tmp_path / "caught").read_text().splitlines()
    # on the first run and on its replay after the Pause, without calling pay again
    assert caught == ["1 ValueError card declined"] * 2
    assert counts(tmp_path, 1) == [2]  # the failing call, then the call of the second try
    assert info.tries == 2
    assert [(s.name, s.ok) for s in info.steps] == [("pay", False), ("pay", True)]


async def test_a_durable_sleep_survives_a_worker_kill_and_frees_its_slot(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    hits = tmp_path / "hits"
    env = {"SEGUE_SLEEP_INLINE_SECONDS": "0.5"}
    with fleet(engine, queue_name, hits) as workers:
        slots = [workers.start(env=env), workers.start(env=env)]  # each of concurrency 1
        await workers.ready(*slots)
        async with client_app:
            h = await journal.sleeper.enqueue(str(tmp_path), 2.0)
            await eventually(lambda: _status(h, TaskStatus.SUSPENDED), timeout=15)
            history = (await h.info()).history
            started = history[-1].at.timestamp()
            ran = next(t.reason for t in reversed(history) if t.status is TaskStatus.RUNNING)
            sleeper_slot = next(s for s in slots if ran.startswith(s.id_prefix))
            workers.kill(sleeper_slot)  # the worker that ran it is gone while it sleeps
            # the other worker's one slot runs another task meanwhile
            ran_at = await (await journal.other.enqueue()).result(timeout=15)
            woke = await h.result(timeout=15)
            info = await h.info()
    assert ran_at < started + 2.0 < woke + 0.05
    assert woke <= started + 2.0 + 0.2  # resumed within 200 ms of due
    assert counts(tmp_path, 2) == [1, 1]
    assert info.tries == 1


async def test_a_durable_sleep_resumes_after_a_server_restart_with_aof(
    aof_server: Server, queue_name: str, tmp_path: Path
) -> None:
    assert aof_server.proc is not None
    engine = Engine(
        url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0",
        kind="valkey",
        admin_url=f"redis://127.0.0.1:{aof_server.port}/0",
        pids=(aof_server.proc.pid,),
    )
    app = journal.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue_name, poll_seconds=0.1)
    env = {"SEGUE_SLEEP_INLINE_SECONDS": "0.5"}
    try:
        with fleet(engine, queue_name, tmp_path / "hits") as workers:
            slot = workers.start(env=env)
            await workers.ready(slot)
            async with app:
                h = await journal.sleeper.enqueue(str(tmp_path), 2.0)
                await eventually(lambda: _status(h, TaskStatus.SUSPENDED), timeout=15)
                due = (await h.info()).history[-1].at.timestamp() + 2.0
            aof_server.kill()
            aof_server.start()
            add_acl_user(aof_server.port)
            back = time.time()
            async with app:
                woke = await h.result(timeout=30)
                info = await h.info()
    finally:
        app.settings = saved
    # due, or (if the restart took longer) within 2 s of the server being back, the
    # bound in which the fault suite's workers claim again after a restart
    assert woke <= max(due + 0.2, back + 2.0)
    assert counts(tmp_path, 2) == [1, 1]
    assert info.tries == 1


@pytest.mark.parametrize("point", ["after_journal_write", "after_complete_before_ack"])
async def test_a_kill_around_a_durable_sleep_neither_restarts_nor_loses_it(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path, point: str
) -> None:
    # after_journal_write: the sleep's due is journaled, the run not yet SUSPENDED (the
    # next run finds the due and sleeps only the rest); after_complete_before_ack: finish.lua's
    # sleep verb recorded the SUSPENDED task, the worker died before reading the reply
    hits = tmp_path / "hits"
    env = {"SEGUE_SLEEP_INLINE_SECONDS": "0.5"}
    with fleet(engine, queue_name, hits) as workers:
        async with client_app:
            enqueued = time.time()
            h = await journal.napper.enqueue(str(tmp_path), 3.0)
            slot = workers.start(env={**env, "SEGUE_FAULTPOINT": f"{point}:kill"})
            await eventually(lambda: _true(_hit_count(hits) > 0), timeout=15)
            killed_by = time.time()  # the kill happened before this
            slot.proc.wait(timeout=10)
            workers.start(env=env)
            woke = await h.result(timeout=30)
            info = await h.info()
    assert f"{point} kill" in hits.read_text()
    # one sleep, journaled by the run that was killed, and due 3 s after that: not cut
    # short, and not restarted (a restart would sleep 3 s from a run that began once the
    # 1 s lease lapsed)
    assert [s.name for s in info.steps] == ["sleep#1", "after"]
    slept_at = info.steps[0].started_at.timestamp()
    assert enqueued <= slept_at <= killed_by
    assert slept_at + 3.0 - 0.05 <= woke < slept_at + 3.0 + 0.9
    assert counts(tmp_path, 2) == [0, 1]
    assert info.tries == 1  # a lost run that journaled, or a recorded sleep: no try spent


async def test_a_kill_right_after_claiming_a_woken_sleeper_resumes_past_the_sleep(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    # the run that wakes is claimed and lost at once (after_claim): the next run, once
    # its lease lapsed, still replays past the sleep instead of sleeping again
    hits = tmp_path / "hits"
    env = {"SEGUE_SLEEP_INLINE_SECONDS": "0.5"}
    seconds = 4.0
    with fleet(engine, queue_name, hits) as workers:
        async with client_app:
            first = workers.start(env=env)
            h = await journal.napper.enqueue(str(tmp_path), seconds)
            await eventually(lambda: _status(h, TaskStatus.SUSPENDED), timeout=15)
            due = (await h.info()).history[-1].at.timestamp() + seconds
            workers.kill(first)
            # only this worker is there when it wakes: it claims it and dies right after
            killer = workers.start(env={**env, "SEGUE_FAULTPOINT": "after_claim:kill"})
            await eventually(lambda: _true(_hit_count(hits) > 0), timeout=15)
            killed_by = time.time()
            killer.proc.wait(timeout=10)
            workers.start(env=env)
            woke = await h.result(timeout=30)
            info = await h.info()
    # back once the lost run's lease (1 s) lapsed and a worker started (a restarted sleep
    # would add its 4 s after that)
    assert due <= woke < due + LEASE + 2.5
    assert counts(tmp_path, 2) == [0, 1]
    assert [s.name for s in info.steps] == ["sleep#1", "after"]
    assert info.steps[0].started_at.timestamp() < due - seconds + 0.5 < killed_by
    assert info.tries == 2  # the lost run had made no progress of its own: a try spent


def _hit_count(hits: Path) -> int:
    return len(hits.read_text().splitlines()) if hits.exists() else 0


async def _true(value: bool) -> bool:
    return value


async def _status(h: object, status: TaskStatus) -> bool:
    return bool(await h.status() is status)  # type: ignore[attr-defined]
