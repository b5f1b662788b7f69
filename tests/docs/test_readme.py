"""The README's example, run as a newcomer would: a worker in one process, the script in
another, both on the embedded server of a fresh project directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), re.M | re.S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "pyproject.toml").write_text("")
    yield tmp_path
    state = tmp_path / ".segue" / "server.json"
    if state.exists():  # a failed test may leave the embedded server: stop it by its pid
        pids = json.loads(state.read_text())
        for key in ("watchdog_pid", "server_pid"):
            if _alive(int(pids[key])):
                os.kill(int(pids[key]), signal.SIGTERM)


def test_the_readme_example_works_as_written(project: Path) -> None:
    block = python_blocks(ROOT / "README.md")[0]
    assert block.startswith("# shop.py\n")
    (project / "shop.py").write_text(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    log_file = project / "worker.log"
    with log_file.open("w") as log_out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "segue", "worker", "shop:app"],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_out,
        )
    try:
        # "start the worker first": the script runs once the worker says it started
        deadline = time.monotonic() + 30
        while " started " not in log_file.read_text():
            assert worker.poll() is None, log_file.read_text()
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.05)
        script = subprocess.run(
            [sys.executable, "shop.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert script.returncode == 0, script.stderr
        assert script.stdout == "2\n"
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    log = log_file.read_text()
    assert worker.returncode == 0, log
    assert "Traceback" not in log
    deadline = time.monotonic() + 10  # the last user of the server stops it on the way out
    while (project / ".segue" / "server.json").exists():
        assert time.monotonic() < deadline, "the embedded server outlived the worker"
        time.sleep(0.05)
