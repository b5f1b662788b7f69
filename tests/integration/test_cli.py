"""The `segue` command as a user runs it: the demo over the embedded server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_tasks_and_leaves_no_server(tmp_path: Path) -> None:
    env = {**os.environ, "SEGUE_HOME": str(tmp_path), "COLUMNS": "100"}
    env.pop("SEGUE_REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "segue", "demo", "--tasks", "40"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "tasks in" in out.stdout
    assert "demo.flaky" in out.stdout and "demo.report" in out.stdout
    assert "delayed task: report 'daily (delayed 2 s)'" in out.stdout
    assert not (tmp_path / ".segue" / "server.json").exists()  # the server stopped with it
    assert list((tmp_path / ".segue").glob("appendonly*"))


def test_worker_with_a_bad_app_path_says_what_is_wrong(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "segue", "worker", "nosuchmodule:app"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "cannot import module 'nosuchmodule'" in out.stderr
