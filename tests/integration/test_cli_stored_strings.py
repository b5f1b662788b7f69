"""Strings a task's writer chose (its name, its error) are shown by the CLI as inert text:
escape sequences are written out visibly, and brackets are not read as Rich markup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from segue import App

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "\x1b[2J\x1b]0;pwned\x07 boom [bold]x[/bold]"


def _segue(*args: str, terminal: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    if terminal:
        env["FORCE_COLOR"] = "1"  # Rich draws tables, as for a person at a terminal
    return subprocess.run(
        [sys.executable, "-m", "segue", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


async def test_info_and_tasks_show_hostile_names_and_errors_as_text(
    segue_valkey: Any, queue_name: str
) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="report[/x]", max_tries=1)
    async def report() -> None:
        raise RuntimeError(HOSTILE)

    async with app:
        handle = await report.enqueue()
        await app.drain()
    url = segue_valkey.url
    for terminal in (False, True):
        for args in (
            ("info", handle.id, "--url", url),
            ("tasks", "--url", url, "--queue", queue_name, "--status", "failed"),
        ):
            done = _segue(*args, terminal=terminal)
            assert done.returncode == 0, done.stderr
            assert "report[/x]" in done.stdout
            assert "\x1b[2J" not in done.stdout and "\x1b]0;" not in done.stdout
            assert "\x07" not in done.stdout
        assert "\\x1b[2J" in _segue("info", handle.id, "--url", url, terminal=terminal).stdout
