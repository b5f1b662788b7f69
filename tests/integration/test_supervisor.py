"""`segue worker --processes N`: a supervisor and its worker processes, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskStatus
from segue._procpool import _cgroup_quota, usable_cpus
from segue._supervisor import child_argv, parse_processes
from tests._support import free_port, ledger
from tests._workers import Fleet, Slot
from tests.apps import procs
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(segue_valkey: Any, queue_name: str) -> Iterator[Fleet]:
    with Fleet(
        "tests.apps.procs:app",
        segue_valkey.url,
        queue_name,
        lease=1.5,
        env={"LEDGER_URL": segue_valkey.admin_url},
    ) as fleet:
        yield fleet


@pytest.fixture
def client_app(segue_valkey: Any, queue_name: str) -> App:
    procs.app.settings = procs.app.settings.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2
    )
    return procs.app


def _scrape(port: int) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as reply:
            body: bytes = reply.read()
            return body
    except OSError:
        return b""


def _pid(worker_id: str) -> int:
    """The pid in a worker id `<host>-<pid>-<suffix>`."""
    return int(worker_id.removeprefix(f"{socket.gethostname()}-").split("-")[0])


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _parent(pid: int) -> int | None:
    """The parent pid of a running process (Linux), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


async def _children(
    fleet: Fleet, supervisor: Slot, n: int, exclude: frozenset[int] = frozenset()
) -> set[int]:
    """The pids of the supervisor's `n` registered worker processes (none of `exclude`)."""
    found: set[int] = set()

    async def registered() -> bool:
        nonlocal found
        assert supervisor.alive(), fleet.log(supervisor)
        found = {_pid(i) for i in await fleet.registered()} - exclude - {supervisor.pid}
        # the registry holds every worker of the server: keep this supervisor's children
        found = {pid for pid in found if _parent(pid) == supervisor.pid}
        return len(found) >= n

    await eventually(registered, timeout=30)
    return found


async def test_sigkilled_child_is_restarted_and_its_task_recovered(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    sup = workers.start(concurrency=1, args=["--processes", "2"])
    pids = await _children(workers, sup, 2)
    async with client_app:
        h = await procs.nap.enqueue(1.0)

        async def started() -> bool:
            return len(await ledger(segue_valkey.admin_url, queue_name)) == 1

        await eventually(started, timeout=10)
        victim = _pid((await ledger(segue_valkey.admin_url, queue_name))[0][1])
        assert victim in pids
        os.kill(victim, signal.SIGKILL)
        line = await workers.line_with(sup, "killed by SIGKILL")
        assert f"pid {victim}" in line and "restarting it in" in line
        await _children(workers, sup, 1, exclude=frozenset(pids))  # the restarted one registered
        assert await h.result(timeout=20) == "napped 1.0"
        info = await h.info()
        assert info.tries == 2
        assert [t.reason for t in info.history if t.status is TaskStatus.QUEUED][
            -1
        ] == "lease expired"
    assert sup.alive()


async def test_two_processes_take_tasks_and_sigterm_stops_both_within_the_grace(
    workers: Fleet, client_app: App, segue_valkey: Any, queue_name: str
) -> None:
    port = free_port()
    args = ["--processes", "2", "--metrics-port", str(port)]
    sup = workers.start(concurrency=1, args=args)
    pids = await _children(workers, sup, 2)
    for p in (port, port + 1):  # child i serves /metrics on the port + i

        async def served(p: int = p) -> bool:
            return b"segue_" in await asyncio.to_thread(_scrape, p)

        await eventually(served, timeout=15)
    async with client_app:
        long = [await procs.nap.enqueue(30.0) for _ in range(2)]

        async def both_started() -> bool:
            return len(await ledger(segue_valkey.admin_url, queue_name)) == 2

        await eventually(both_started, timeout=10)
        rows = await ledger(segue_valkey.admin_url, queue_name)
        assert {_pid(r[1]) for r in rows} == pids  # one run in each process (concurrency 1)
        workers.terminate(sup)
        # the fleet's grace is 0.5 s: far less than the naps, which are requeued
        assert workers.wait_exit(sup, timeout=10) == 0
        for pid in pids:
            assert not _exists(pid)  # the supervisor waited for (and reaped) each
        for h in long:
            info = await h.info()
            assert info.status is TaskStatus.QUEUED
            assert info.history[-1].reason == "worker shutdown"


def test_child_argv_gives_each_child_its_port_and_pid_file() -> None:
    argv = ["app:app", "--processes", "2", "--metrics-port=9100", "-c", "4", "--pid-file", "w.pid"]
    for processes in (["-p", "2"], ["-p2"], ["--processes=auto"]):
        assert child_argv(["app:app", *processes, "-q", "a"], 0, None, None) == [
            "app:app",
            "-q",
            "a",
        ]
    assert child_argv(argv, 1, 9100, Path("run/w.pid")) == [
        "app:app",
        "-c",
        "4",
        "--metrics-port",
        "9101",
        "--pid-file",
        "run/w-1.pid",
    ]


def test_processes_auto_counts_usable_cpus(tmp_path: Path) -> None:
    assert parse_processes("auto") == usable_cpus() >= 1
    assert parse_processes("3") == 3
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    with pytest.raises(Exception, match="auto"):
        parse_processes("0")


def test_reload_restarts_the_supervisor_and_its_processes(tmp_path: Path) -> None:
    """--reload with --processes: one reloader around one supervisor; the embedded server
    stays the same across the restart."""
    from tests.integration.test_reload import ASK, TASKS, interrupt

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "ask.py").write_text(ASK)
    (tmp_path / "tasks.py").write_text(TASKS.format(value="v1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    log = tmp_path / "worker.log"

    def ask() -> str:
        done = subprocess.run(
            [sys.executable, "ask.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr + log.read_text()
        return done.stdout.strip()

    def started(n: int) -> None:
        deadline = time.monotonic() + 40
        while log.read_text().count(" started queues=") < n:
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    command = [sys.executable, "-m", "segue", "worker", "tasks:app", "--reload", "-p", "2"]
    with log.open("w") as stderr:
        parent = subprocess.Popen(
            command, cwd=tmp_path, env=env, stderr=stderr, start_new_session=True
        )
    state = tmp_path / ".segue" / "server.json"
    try:
        started(2)
        server_pid = json.loads(state.read_text())["server_pid"]
        assert ask() == "v1"
        (tmp_path / "tasks.py").write_text(TASKS.format(value="v2"))
        started(4)
        assert ask() == "v2"
        assert json.loads(state.read_text())["server_pid"] == server_pid
    finally:
        interrupt(parent, log)
        pids = json.loads(state.read_text()) if state.exists() else {}
        for key in ("watchdog_pid", "server_pid"):
            if key in pids and _exists(int(pids[key])):
                os.kill(int(pids[key]), signal.SIGTERM)
    text = log.read_text()
    assert text.count("supervisor ") == 2 and "Traceback" not in text
