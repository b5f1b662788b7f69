"""`segue worker --reload` picks up an edited task module, and the embedded server it uses
stays up across the restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TASKS = """
from segue import App

app = App("reload")


@app.task(name="reload.version")
async def version() -> str:
    return {value!r}
"""

ASK = """
import asyncio
from tasks import app, version


async def main() -> None:
    async with app:
        print(await (await version.enqueue()).result(timeout=30))


asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "ask.py").write_text(ASK)
    yield tmp_path
    state = tmp_path / ".segue" / "server.json"
    if state.exists():
        pids = json.loads(state.read_text())
        for key in ("watchdog_pid", "server_pid"):
            if _alive(int(pids[key])):
                os.kill(int(pids[key]), signal.SIGTERM)


def interrupt(parent: subprocess.Popen[bytes], log: Path, within: float = 60.0) -> None:
    """Ctrl-C to a `segue worker --reload`: it stops its worker (up to the shutdown grace
    and 5 s), then releases the embedded server. Past `within` seconds the test fails with
    the log and what is still running in the group, which is then killed so that nothing
    outlives the test."""
    parent.send_signal(signal.SIGINT)
    try:
        parent.wait(timeout=within)
    except subprocess.TimeoutExpired:
        group = subprocess.run(
            ["ps", "-o", "pid,stat,etime,args", "-g", str(parent.pid)],
            capture_output=True,
            text=True,
        ).stdout
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        raise AssertionError(
            f"segue worker --reload still ran {within:.0f} s after Ctrl-C\n{group}\n"
            + log.read_text()[-3000:]
        ) from None


def test_reload_picks_up_an_edited_task_module(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    (project / "tasks.py").write_text(TASKS.format(value="v1"))
    log = project / "worker.log"

    def ask() -> str:
        done = subprocess.run(
            [sys.executable, "ask.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr + log.read_text()
        return done.stdout.strip()

    with log.open("w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-m", "segue", "worker", "tasks:app", "--reload"],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while " started queues=" not in log.read_text():
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        server_pid = json.loads((project / ".segue" / "server.json").read_text())["server_pid"]
        assert ask() == "v1"
        (project / "tasks.py").write_text(TASKS.format(value="v2"))
        deadline = time.monotonic() + 30
        while log.read_text().count(" started queues=") < 2:
            assert parent.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "tasks.py changed; restarting the worker" in log.read_text()
        assert ask() == "v2"
        # the same embedded server throughout: the restart did not stop it
        now = json.loads((project / ".segue" / "server.json").read_text())["server_pid"]
        assert now == server_pid
    finally:
        interrupt(parent, log)
    assert "Traceback" not in log.read_text()
