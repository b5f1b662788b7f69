"""The `segue` command as a user runs it: the demo over the embedded server."""

from __future__ import annotations

import os
import re
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
    # a queue of 4 shards: 10 tasks in each, all run by one worker
    assert re.search(
        r"sharding:\s+40\s+tasks\s+round-robin\s+over\s+the\s+4\s+shards\s+of\s+demo-events",
        out.stdout,
    )
    assert re.search(r"each\s+shard\s+in\s+turn\s+ran\s+40", out.stdout)
    assert "demo.flaky" in out.stdout and "demo.report" in out.stdout
    assert "delayed task: report 'daily (delayed 2 s)'" in out.stdout
    assert re.search(r"sent by name: report 'sent by name' .*\(max_tries, timeout", out.stdout)
    # durable tasks: an operator pauses a running task, which is held PAUSED, then resumed
    # from the step its ctx.state recorded; another running task is cancelled
    assert "operator: query demo.ingest 'progress' -> {'file':" in out.stdout
    assert "operator: query demo.ingest -> TaskNotRunning (paused)" in out.stdout
    assert "operator: pause demo.ingest at step" in out.stdout
    paused_at = re.search(r"demo\.ingest is PAUSED after step (\d+)", out.stdout)
    resumed_at = re.search(r"demo\.ingest resumed from step (\d+)", out.stdout)
    assert paused_at and resumed_at, out.stdout
    assert paused_at.group(1) == resumed_at.group(1)
    assert "app.tasks(PAUSED): 1" in out.stdout
    assert "operator: resume demo.ingest -> queued" in out.stdout
    assert "try 1: the pause spent none" in out.stdout
    assert "demo.ingest finished: 20 files, each processed once across the pause" in out.stdout
    assert "operator: cancel demo.export at chunk" in out.stdout
    assert "demo.export: CancelledError at its current await" in out.stdout
    assert "demo.export is CANCELLED" in out.stdout
    assert "demo.export: result() raised TaskCancelled" in out.stdout
    assert out.stdout.index("PAUSED after step") < out.stdout.index("resumed from step")
    # a workflow (chain, fan-out group, merge) paused between two steps: the next step is
    # held PAUSED until the operator resumes it, then the workflow ends with its result
    lines = [
        "workflow: demo.scan | group(4 x demo.thumbnails) | demo.contact_sheet | demo.publish "
        "(7 steps)",
        "operator: pause the workflow while 4 thumbnail steps run -> paused",
        "workflow paused between steps: 5/7 done, next step demo.contact_sheet is PAUSED",
        "operator: resume the workflow -> running",
        "workflow result: album-2026 published with a contact sheet of 12 thumbnails",
        "demo.contact_sheet history: waiting, paused (workflow paused), queued, running, succeeded",
        "demo.contact_sheet result: offloaded (400.4 KiB, over offload_bytes 256.0 KiB), handed "
        "to demo.publish by reference",
    ]
    at = [out.stdout.find(line) for line in lines]
    assert -1 not in at, out.stdout
    assert at == sorted(at), out.stdout
    assert "workflow operator failed" not in out.stdout
    # a saga: ship fails, the charge is refunded, then the stock released
    saga = [
        "demo.reserve succeeded -> demo.release succeeded: released: stock held for order-42",
        "demo.charge succeeded -> demo.refund succeeded: refunded: payment of 19.99 EUR",
        "demo.ship failed",
        "saga ended failed: compensated in reverse order",
    ]
    at = [out.stdout.find(line) for line in saga]
    assert -1 not in at and at == sorted(at), out.stdout
    assert "stream: demo.summarize says, live: Every task of this demo ran" in out.stdout
    assert "stream: 26 chunks, in order; the loop ended when the task did" in out.stdout
    assert "signal: demo.refund is waiting for signal:approval until " in out.stdout
    assert "refund of o-1 approved by ana" in out.stdout
    assert "cron: demo.tick fired 3 times, one per tick (1 s, 1 s apart)" in out.stdout
    assert "unique: 5 enqueues of demo.rebuild_index gave 1 task" in out.stdout
    rate = re.search(r"rate limit: 10 demo.geocode calls at 5/s took ([\d.]+) s", out.stdout)
    assert rate and 1.5 <= float(rate.group(1)) < 4.0, out.stdout
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
