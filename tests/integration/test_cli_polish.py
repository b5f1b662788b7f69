"""The CLI at a person's terminal: ids never cut at 80 columns, a warning for a queue the
server does not know, and a pointer when a task id and a workflow id are mixed up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from segue import App, Fail

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def segue(*args: str, terminal: bool = False, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    if terminal:  # Rich draws for a terminal of 80 columns
        env["FORCE_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "segue", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        input=stdin,
    )


async def test_task_ids_are_never_cut_in_an_80_column_terminal(
    segue_valkey: Any, queue_name: str
) -> None:
    queue = f"{queue_name}-with-a-rather-long-name"
    app = App("polish", redis_url=segue_valkey.url, queue=queue)

    @app.task(name="polish.doomed", max_tries=1)
    async def doomed() -> None:
        raise Fail("a long explanation of why this task failed, which may be cut " * 3)

    async with app:
        h = await doomed.enqueue()
        await app.drain()
    for command in (("dead", "-q", queue), ("tasks", "-q", queue, "-s", "failed")):
        shown = segue(*command, "--url", segue_valkey.url, terminal=True)
        assert shown.returncode == 0, shown.stderr
        text = ANSI.sub("", shown.stdout)
        assert "┃" in text or "│" in text  # a table, as at a terminal
        assert max(len(line) for line in text.splitlines()) <= 80
        assert h.id in text, text  # whole, on one line: what `segue retry` needs


async def test_an_unknown_queue_is_warned_about_with_the_known_ones(
    segue_valkey: Any, queue_name: str
) -> None:
    app = App("polish", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="polish.noop")
    async def noop() -> None: ...

    async with app:
        await noop.enqueue()
    url = segue_valkey.url
    dead = segue("dead", "-q", f"{queue_name}-typo", "--url", url)
    assert dead.returncode == 0
    warning = next(line for line in dead.stderr.splitlines() if line.startswith("warning:"))
    assert f"no queue '{queue_name}-typo'" in warning and queue_name in warning
    purge = segue("purge", f"{queue_name}-typo", "--url", url, stdin="n\n")
    assert purge.returncode == 1  # answered no
    assert f"warning: this server has no queue '{queue_name}-typo'" in purge.stderr


async def test_a_task_id_and_a_workflow_id_mixed_up_are_pointed_out(
    segue_valkey: Any, queue_name: str
) -> None:
    app = App("polish", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="polish.inc")
    async def inc(x: int) -> int:
        return x + 1

    async with app:
        wf = await (inc.call(1) | inc).enqueue()
        task = await inc.enqueue(1)
    url = segue_valkey.url
    info = segue("info", wf.id, "--url", url)
    assert info.returncode == 1
    assert f"is a workflow id: segue workflow status {wf.id}" in info.stderr.splitlines()[-1]
    status = segue("workflow", "status", task.id, "--url", url)
    assert status.returncode == 1
    assert f"is a task id, not a workflow's: segue info {task.id}" in status.stderr
