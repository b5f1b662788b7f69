"""`segue workflow status|pause|resume|cancel ID` as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskStatus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _segue(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "segue", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


async def test_workflow_commands_follow_and_steer_a_workflow(
    segue_valkey: Any, queue_name: str
) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="cli.step")
    async def step(x: int) -> int:
        return x + 1

    async with app:
        h = await (step.call(1) | step | step).enqueue()
        url = segue_valkey.url
        shown = _segue("workflow", "status", h.id, "--url", url)
        assert shown.returncode == 0, shown.stderr
        assert f"workflow {h.id}: running" in shown.stdout
        assert shown.stdout.count("cli.step") == 3
        paused = _segue("workflow", "pause", h.id, "--url", url)
        assert paused.returncode == 0, paused.stderr
        assert "paused" in paused.stdout
        assert await h.status() is TaskStatus.PAUSED
        assert _segue("workflow", "resume", h.id, "--url", url).returncode == 0
        assert await h.status() is TaskStatus.RUNNING
        cancelled = _segue("workflow", "cancel", h.id, "--url", url)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        assert await h.status() is TaskStatus.CANCELLED
        again = _segue("workflow", "pause", h.id, "--url", url)
        assert again.returncode == 1
        assert "cannot pause workflow" in again.stderr
        missing = _segue("workflow", "status", f"{app.settings.queue}:wf-nosuch", "--url", url)
        assert missing.returncode == 1 and "no workflow" in missing.stderr
