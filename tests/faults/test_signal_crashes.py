"""Signals across real worker processes killed around a wait, a sender whose connection is
reset after its signal reached the server (so it sends again), and a server restart with
AOF: each signal is delivered exactly once to a wait, and a wait's deadline survives
re-runs (issue 18)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskStatus
from segue._keys import Keyspace
from tests._support import ACL_PASSWORD, ACL_USER, Engine, Server, add_acl_user, admin_client
from tests._workers import Fleet
from tests.apps import signals
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import eventually

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

LEASE = 1.0


# the cluster variant runs in full mode (scripts/faults --full): the same kills in one slot of
# a cluster, where the single server checks every rule in quick mode
@pytest.fixture(params=["segue_valkey", pytest.param("segue_cluster", marks=pytest.mark.full_only)])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def client_app(engine: Engine, queue_name: str) -> Iterator[App]:
    with _use(engine, queue_name) as app:
        yield app


@contextlib.contextmanager
def _use(engine: Engine, queue: str) -> Iterator[App]:
    """The worker module's App (the same tasks, so the same types), on this engine."""
    app = signals.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue, poll_seconds=0.1)
    try:
        yield app
    finally:
        app.settings = saved


def fleet(engine: Engine, queue: str, hits: Path) -> Fleet:
    env = {"SEGUE_FAULTPOINT_ONCE": "1", "SEGUE_FAULTPOINT_LOG": str(hits)}
    return Fleet("tests.apps.signals:app", engine.url, queue, concurrency=1, lease=LEASE, env=env)


async def _status(handle: Any, *wanted: TaskStatus) -> bool:
    return await handle.status() in wanted


async def _buffered(engine: Engine, queue: str, task_id: str) -> int:
    client = admin_client(engine)
    try:
        return int(await client.hget(Keyspace("segue", queue).signals(task_id), "c") or 0)
    finally:
        await client.aclose()


async def test_signals_before_during_and_while_the_worker_is_dead_arrive_once_each(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    hits = tmp_path / "hits"
    with fleet(engine, queue_name, hits) as workers:
        async with client_app:
            h = await signals.collect.enqueue(6, 0.1)
            await h.signal("item", 0)  # before the wait: buffered
            # the run takes item 0 (taken and journaled in one call) and dies right after
            first = workers.start(env={"SEGUE_FAULTPOINT": "after_signal_taken:kill"})
            # a bound on failure only: on a loaded machine a worker once took over 15 s to get here
            await eventually(lambda: _true(hits.exists()), timeout=60)
            first.proc.wait(timeout=10)
            assert await _buffered(engine, queue_name, h.id) == 0  # not left to take again
            await h.signal("item", 1)  # while no worker runs it: buffered
            others = [workers.start(), workers.start()]
            await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
            assert await h.signal("item", 2) is TaskStatus.QUEUED  # during the wait
            await eventually(lambda: _status(h, TaskStatus.RUNNING), timeout=15, interval=0.01)
            holder = str((await h.info()).worker_id)  # the run sleeps 0.1 s after each item
            # somewhere in the run that replays items 0-2: the other worker takes it over
            workers.kill(next(s for s in others if holder.startswith(s.id_prefix)))
            await h.signal("item", 3)
            await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
            await h.signal("item", 4, id="four")
            await h.signal("item", 4, id="four")  # a resend after a lost reply
            await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
            await h.signal("item", 5)
            assert await h.result(timeout=20) == [0, 1, 2, 3, 4, 5]
            info = await h.info()
    assert info.signals_dropped == 0
    assert info.tries <= 2  # waits spend none; the one kill without progress may
    assert [s.name for s in info.steps] == [f"signal:item#{i}" for i in range(1, 7)]


async def test_a_sender_whose_connection_is_reset_after_sending_delivers_once(
    segue_valkey: Engine, queue_name: str, tmp_path: Path
) -> None:
    n = 12
    with (
        _use(segue_valkey, queue_name) as app,
        fleet(segue_valkey, queue_name, tmp_path / "hits") as workers,
        FaultProxy.for_url(segue_valkey.admin_url) as proxy,
    ):
        sender = App("sender", redis_url=proxy.url_for(segue_valkey.url), queue=queue_name)
        workers.start()
        async with app, sender:
            h = await signals.collect.enqueue(n, 0.0)
            remote = await sender.task_handle(h.id)
            await remote.status()  # connected (the script loads before the drops)
            proxy.drop_reply_then_reset(0.5, match=b"EVALSHA", seed=7)
            for i in range(n):
                await remote.signal("item", i)  # each under its own id, resent
            proxy.heal()
            assert await h.result(timeout=20) == list(range(n))
            assert proxy.stats().dropped_replies > 0


async def test_waits_and_buffered_signals_survive_a_server_restart_with_aof(
    tmp_path: Path, queue_name: str
) -> None:
    server = Server(tmp_path, fsync="always")  # acknowledged means on disk: no waiting
    server.start()
    add_acl_user(server.port)  # ACL users are not in the AOF: added again after each start
    assert server.proc is not None
    engine = Engine(
        url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0",
        kind="valkey",
        admin_url=f"redis://127.0.0.1:{server.port}/0",
        pids=(server.proc.pid,),
    )
    try:
        with (
            _use(engine, queue_name) as app,
            fleet(engine, queue_name, tmp_path / "hits") as workers,
        ):
            workers.start()
            async with app:
                h = await signals.collect.enqueue(3, 0.0)
                await h.signal("item", 0, id="zero")
                await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
                deadline = await signals.deadline.enqueue(3600.0, 0.0)
                await eventually(lambda: _status(deadline, TaskStatus.WAITING), timeout=15)
                before = (await deadline.info()).waiting_for
            server.kill()
            server.start()
            add_acl_user(server.port)
            async with app:
                assert (await deadline.info()).waiting_for == before
                await h.signal("item", 0, id="zero")  # a resend: accepted before
                assert await h.status() is TaskStatus.WAITING
                await h.signal("item", 1)
                await h.signal("item", 2)
                assert await h.result(timeout=20) == [0, 1, 2]
                await deadline.cancel()
    finally:
        if server.proc.poll() is None:
            server.kill()


async def test_a_wait_keeps_its_first_deadline_across_pause_kill_and_re_run(
    segue_valkey: Engine, queue_name: str, tmp_path: Path
) -> None:
    ks = Keyspace("segue", queue_name)
    with (
        _use(segue_valkey, queue_name) as app,
        fleet(segue_valkey, queue_name, tmp_path / "hits") as workers,
    ):
        slot = workers.start()
        async with app:
            h = await signals.deadline.enqueue(60.0, 0.0)
            await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
            first = (await h.info()).waiting_for
            assert first is not None and first.startswith("signal:never until ")
            assert await h.pause() is TaskStatus.PAUSED
            workers.kill(slot)  # nothing runs it: nothing to lose
            workers.restart(slot)
            assert await h.resume() is TaskStatus.WAITING  # at once, no run
            assert (await h.info()).waiting_for == first
            # a re-run that reaches the wait again (an old release's resume queues it):
            # the deadline comes from the journal, not from the re-run's clock
            await h.pause()
            admin = admin_client(segue_valkey)
            try:
                await admin.zrem(ks.paused, h.id)
                await admin.hset(ks.task(h.id), "s", "queued")
                await admin.lpush(ks.pending[1], h.id)
                await admin.lpush(ks.wake, 1)
            finally:
                await admin.aclose()
            await eventually(lambda: _status(h, TaskStatus.WAITING), timeout=15)
            again = await h.info()
            assert again.history[-2].status is TaskStatus.RUNNING  # it did run again
            assert again.waiting_for == first
            assert await h.cancel() is TaskStatus.CANCELLED


async def _true(value: bool) -> bool:
    return value
