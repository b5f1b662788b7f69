"""Worker heartbeats: the registry, app.workers(), app.check() and `segue check`."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from segue import App, TaskStatus, WorkerInfo
from segue._keys import WorkerKeys
from segue.testing import AppFactory, worker
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import health
from tests.integration.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()


async def find(app: App, worker_id: str) -> WorkerInfo | None:
    return next((w for w in await app.workers() if w.id == worker_id), None)


async def test_a_worker_registers_beats_and_leaves_on_graceful_stop(
    make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(heartbeat_seconds=0.1, home=tmp_path)

    @app.task(name="hb.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        async with worker(app, concurrency=3) as w:
            first = await find(app, w.id)
            assert first is not None
            described = (first.app, first.host, first.pid, first.queues, first.concurrency)
            assert described == ("test", HOST, os.getpid(), (app.settings.queue,), 3)
            assert first.heartbeat_seconds == 0.1
            assert not first.stale
            assert first.started_at <= first.last_beat_at
            h = await add.enqueue(2, 3)
            assert await h.result(timeout=5) == 5

            async def counted() -> bool:
                now = await find(app, w.id)
                return (
                    now is not None and now.finished == 1 and now.last_beat_at > first.last_beat_at
                )

            await eventually(counted, timeout=5)  # later beats carry the counts
            alive = await app.check(w.id)
            assert alive.ok, alive.reason
            assert alive.worker is not None and alive.worker.id == w.id
            assert alive.reason.startswith(f"worker {w.id} is alive: last heartbeat ")
            assert alive.reason.endswith("running 0/3, 1 finished")
            assert (await app.check()).ok  # no id, no pid file: the freshest of this host
        assert await find(app, w.id) is None
        gone = await app.check(w.id)
        assert not gone.ok
        assert (
            gone.reason == f"no worker {w.id} is registered: it stopped, or its heartbeat expired"
        )


async def test_beats_prune_the_entries_of_workers_whose_record_expired(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    ghost, live = f"ghost-{uuid.uuid4().hex}", f"live-{uuid.uuid4().hex}"
    async with app:
        broker = await app._client.broker()
        wk = WorkerKeys(app.settings.prefix)
        now, started = await broker.beat(wk, ghost, 50, 60_000, 0, {"host": "elsewhere"})
        assert started == now  # the first beat dates the start
        assert (await broker.beat(wk, ghost, 50, 60_000, started, {}))[1] == started
        _, rows = await broker.reads.worker_records(wk, ghost)
        assert rows[0][2][b"host"] == b"elsewhere"

        async def record_gone() -> bool:
            _, rows = await broker.reads.worker_records(wk, ghost)
            return rows[0][2] == {}

        await eventually(record_gone, timeout=5)
        _, rows = await broker.reads.worker_records(wk, ghost)
        assert rows[0][1] is not None  # the entry still dates the last beat
        # another worker's beat that keeps gone workers 1 ms prunes it, and only it
        await broker.beat(wk, live, 10_000, 1, 0, {"host": "here"})
        await broker.beat(wk, live, 10_000, 1, 0, {"host": "here"})
        _, rows = await broker.reads.worker_records(wk, ghost)
        assert rows == [(ghost, None, {})]
        _, rows = await broker.reads.worker_records(wk, live)
        assert rows[0][2][b"host"] == b"here"
        await broker.unregister_worker(wk, live)
        _, rows = await broker.reads.worker_records(wk, live)
        assert rows == [(live, None, {})]


async def test_check_without_an_id_takes_the_pid_file_or_a_worker_of_this_host(
    segue_valkey: Engine, queue_name: str, tmp_path: Path
) -> None:
    # the admin user, for a prefix of this test's own: no other test's workers in sight
    prefix = f"hb{uuid.uuid4().hex[:8]}"
    app = App(
        "t",
        redis_url=segue_valkey.admin_url,
        prefix=prefix,
        queue=queue_name,
        heartbeat_seconds=0.1,
        home=tmp_path,
    )
    default = tmp_path / ".segue" / "worker.pid"
    async with app:
        nobody = await app.check()
        assert not nobody.ok
        assert nobody.reason == (
            f"no worker of host {HOST} is registered (and no pid file at {default})"
        )
        own = tmp_path / "w.pid"
        w = app.worker(pid_file=own)
        serving = asyncio.create_task(w.run())
        await asyncio.wait_for(w.ready.wait(), 10)
        assert own.read_text().strip() == w.id  # written once registered
        assert (await app.check(pid_file=own)).worker.id == w.id  # type: ignore[union-attr]
        assert (await app.check()).ok  # default pid file absent: any worker of this host
        w.stop()
        await serving
        assert not own.exists()  # removed on a graceful stop
        missing = await app.check(pid_file=own)
        assert missing.reason == f"no pid file at {own} (start the worker with --pid-file {own})"


# --- `segue check` against worker processes ------------------------------------------------


def segue(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segue", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def worker_env(segue_valkey: Engine, segue_queue: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SEGUE_REDIS_URL": segue_valkey.url,
        "SEGUE_QUEUE": segue_queue,
        "SEGUE_HEARTBEAT_SECONDS": "0.2",
        "SEGUE_POLL_SECONDS": "0.2",
        "SEGUE_SHUTDOWN_GRACE_SECONDS": "0.5",
        "SEGUE_HOME": str(tmp_path),  # `segue check` finds .segue/worker.pid here
    }


@pytest.fixture
def workers(segue_valkey: Engine, segue_queue: str, tmp_path: Path) -> Iterator[Fleet]:
    """`segue worker tests.apps.health:app` subprocesses, beating every 0.2 s."""
    env = {"SEGUE_HEARTBEAT_SECONDS": "0.2", "SEGUE_HOME": str(tmp_path)}
    app = "tests.apps.health:app"
    with Fleet(app, segue_valkey.url, segue_queue, lease=None, env=env) as fleet:
        yield fleet


async def wait_for_file(path: Path) -> str:
    async def written() -> bool:
        return await asyncio.to_thread(path.exists)

    await eventually(written, timeout=15)
    return (await asyncio.to_thread(path.read_text)).strip()


@pytest.mark.slow
async def test_segue_check_follows_a_worker_alive_wedged_and_killed(
    segue_app: AppFactory,
    worker_env: dict[str, str],
    workers: Fleet,
    tmp_path: Path,
) -> None:
    client = segue_app(health.app, heartbeat_seconds=0.2, home=tmp_path)
    pid_file = tmp_path / ".segue" / "worker.pid"  # the default path of `segue check`
    slot = workers.start(args=["--pid-file", str(pid_file)])
    async with client:
        worker_id = await wait_for_file(pid_file)
        alive = segue(worker_env, "check", "tests.apps.health:app")
        assert alive.returncode == 0, alive.stderr
        assert one_line(alive.stdout).startswith(f"worker {worker_id} is alive: last heartbeat")

        async def stale() -> bool:
            return not (await client.check(worker_id, max_age=1.0)).ok

        async def fresh() -> bool:
            return (await client.check(worker_id, max_age=1.0)).ok

        # a task blocks the worker's event loop: its heartbeat goes stale, its lease does not
        release = tmp_path / "release"
        h = await health.wedge.enqueue(str(release))
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        await eventually(stale, timeout=10)
        wedged = segue(worker_env, "check", "tests.apps.health:app", "--max-age", "1")
        assert wedged.returncode == 1
        line = one_line(wedged.stderr)
        # (past six beats its record has expired too; the index still dates its last beat)
        stale_line = rf"worker {worker_id} is stale: last heartbeat \d+\.\d s ago \(limit 1 s\)"
        assert re.fullmatch(stale_line + "(; its record expired)?", line), line
        assert await h.status() is TaskStatus.RUNNING  # leases renew in their own thread
        release.touch()
        assert await h.result(timeout=10) == "released"
        await eventually(fresh, timeout=10)

        workers.kill(slot)
        await eventually(stale, timeout=10)
        dead = segue(worker_env, "check", "tests.apps.health:app", "--max-age", "1")
        assert dead.returncode == 1
        assert f"worker {worker_id} is stale: last heartbeat" in one_line(dead.stderr)
        # its record expires a few beats later: gone from workers(), still dated by check

        async def expired() -> bool:
            return await find(client, worker_id) is None

        await eventually(expired, timeout=10)
        last = await client.check(worker_id)
        # no --max-age: three of the client's intervals (the worker's own record is gone)
        limit = r"\(limit 0.6 s\); its record expired"
        assert re.fullmatch(rf"worker {worker_id} is stale: .* ago {limit}", last.reason)


@pytest.mark.slow
async def test_a_worker_stopped_by_sigterm_leaves_no_record_and_no_pid_file(
    segue_app: AppFactory,
    worker_env: dict[str, str],
    workers: Fleet,
    tmp_path: Path,
) -> None:
    client = segue_app(health.app, home=tmp_path)
    pid_file = tmp_path / "run" / "w.pid"
    slot = workers.start(args=["--pid-file", str(pid_file)])
    async with client:
        worker_id = await wait_for_file(pid_file)
        assert any(w.id == worker_id for w in await client.workers())
        workers.terminate(slot)
        assert await asyncio.to_thread(workers.wait_exit, slot, 15) == 0
        assert not pid_file.exists()
        assert all(w.id != worker_id for w in await client.workers())


@pytest.mark.slow
def test_segue_check_says_why_in_one_line(worker_env: dict[str, str], tmp_path: Path) -> None:
    app = "tests.apps.health:app"
    nobody = segue(worker_env, "check", app, "--worker-id", "nosuch-1")
    assert nobody.returncode == 1
    expected = "no worker nosuch-1 is registered: it stopped, or its heartbeat expired"
    assert one_line(nobody.stderr) == expected
    missing = tmp_path / "missing.pid"
    no_file = segue(worker_env, "check", app, "--pid-file", str(missing))
    assert no_file.returncode == 1
    assert one_line(no_file.stderr).startswith(f"no pid file at {missing}")

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {**worker_env, "SEGUE_REDIS_URL": f"redis://segue:secret-pw@127.0.0.1:{port}/0"}
    unreachable = segue(down, "check", app, "--worker-id", "any-1")
    assert unreachable.returncode == 1
    line = one_line(unreachable.stderr)
    assert line.startswith(f"server unreachable: redis://127.0.0.1:{port}/0: "), line
    assert "secret-pw" not in line
