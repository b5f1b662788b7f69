"""Structured logs: every line emitted inside a task carries its id and name."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from segue import App, SyncContext
from segue._logging import (
    BatchedHandler,
    JsonFormatter,
    LeanRecord,
    PlainFormatter,
    TaskFields,
)
from segue._settings import mask_url
from tests._workers import Fleet

ROOT = Path(__file__).resolve().parents[2]


async def test_lines_logged_inside_tasks_carry_the_task_fields(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskFields())
    user = logging.getLogger("user.code")
    user.addHandler(handler)
    user.setLevel(logging.INFO)

    @app.task(name="log.async")
    async def in_async() -> None:
        user.info("from an async task")

    @app.task(name="log.sync")
    def in_sync(ctx: SyncContext) -> None:
        user.info("from a sync task")

    try:
        async with app:
            a = await in_async.enqueue()
            s = await in_sync.enqueue()
            await app.drain()
            user.info("outside any task")
    finally:
        user.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert by_message["from an async task"]["task_id"] == a.id
    assert by_message["from an async task"]["task_name"] == "log.async"
    assert by_message["from a sync task"]["task_id"] == s.id
    assert "task_id" not in by_message["outside any task"]
    assert by_message["from a sync task"]["level"] == "info"


@pytest.fixture
def worker_logging() -> Any:
    """The logging `segue worker` sets up for a file (its handler alone on the root, its
    record factory), on a stream the test reads; the process's own logging restored after.
    The test installs the handler itself: pytest adds its capture handlers after fixtures."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = BatchedHandler(stream)
    handler.setFormatter(PlainFormatter())
    handler.addFilter(TaskFields())
    root.setLevel(logging.INFO)
    logging.setLogRecordFactory(LeanRecord)
    try:
        yield handler, stream
    finally:
        root.handlers[:], level, factory = saved
        root.setLevel(level)
        logging.setLogRecordFactory(factory)


async def test_a_handler_of_yours_on_segue_loggers_gets_the_worker_lines(
    make_app: Callable[..., App], worker_logging: Any
) -> None:
    # the worker writes its task lines straight to its own handler when nothing else would
    # see them; a handler you add must still get them, as records, and the file its line
    handler, stream = worker_logging
    logging.getLogger().handlers[:] = [handler]
    app = make_app()

    @app.task(name="log.quiet")
    async def quiet() -> None:
        pass

    @app.task(name="log.silent", silent=True)
    async def hushed() -> None:
        pass

    records: list[logging.LogRecord] = []

    class Yours(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    yours = Yours()
    segue_log = logging.getLogger("segue")
    async with app:
        before = await quiet.enqueue()
        await app.drain()
        segue_log.addHandler(yours)
        try:
            after = await quiet.enqueue()
            silent = await hushed.enqueue()
            await app.drain()
        finally:
            segue_log.removeHandler(yours)
    handler.flush()
    mine = [r.getMessage() for r in records if r.name == "segue.worker"]
    assert f"task {after.id} started name=log.quiet try=1" in mine
    assert f"task {after.id} succeeded" in mine
    assert not [m for m in mine if before.id in m or silent.id in m]
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO segue\.worker: "
    for task in (before, after):  # the same line by either path
        assert [line for line in lines if re.fullmatch(stamp + f"task {task.id} succeeded", line)]
    assert not [line for line in lines if silent.id in line]


@pytest.mark.slow
def test_a_worker_logs_json_lines(segue_valkey: Any, queue_name: str) -> None:
    env = {**os.environ, "SEGUE_REDIS_URL": segue_valkey.url, "SEGUE_QUEUE": queue_name}
    enqueue = (
        "import asyncio\n"
        "from tests.apps.procs import app, nap\n"
        "async def main():\n"
        "    async with app:\n"
        "        await nap.enqueue(0.01)\n"
        "asyncio.run(main())\n"
    )
    env["LEDGER_URL"] = segue_valkey.admin_url
    subprocess.run([sys.executable, "-c", enqueue], cwd=ROOT, env=env, check=True, timeout=60)
    app, ledger = "tests.apps.procs:app", {"LEDGER_URL": segue_valkey.admin_url}
    fleet = Fleet(
        app,
        segue_valkey.url,
        queue_name,
        lease=None,
        poll=None,
        grace=None,
        env=ledger,
        log_level="info",
    )
    with fleet:
        worker = fleet.start(args=["--burst", "--log-format", "json"])
        assert fleet.wait_exit(worker, timeout=60) == 0, fleet.log(worker)
        log = fleet.log(worker)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    started = [line for line in lines if "started name=procs.nap" in line["message"]]
    assert started and started[0]["task_name"] == "procs.nap"
    assert started[0]["task_id"].startswith(f"{queue_name}:")


@pytest.mark.slow
def test_a_worker_writing_to_a_file_logs_one_plain_line_per_record(
    segue_valkey: Any, queue_name: str, tmp_path: Path
) -> None:
    env = {**os.environ, "SEGUE_REDIS_URL": segue_valkey.url, "SEGUE_QUEUE": queue_name}
    env["LEDGER_URL"] = segue_valkey.admin_url
    enqueue = (
        "import asyncio\n"
        "from tests.apps.procs import app, nap\n"
        "async def main():\n"
        "    async with app:\n"
        "        await app.enqueue_many([nap.call(0.01) for _ in range(20)])\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", enqueue], cwd=ROOT, env=env, check=True, timeout=60)
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:  # as systemd, Docker or a CI log would take it
        done = subprocess.run(
            [sys.executable, "-m", "segue", "worker", "tests.apps.procs:app", "--burst"],
            cwd=ROOT,
            env={**env, "COLUMNS": "80"},
            stderr=stderr,
            timeout=60,
        )
    assert done.returncode == 0, log.read_text()
    first, *records, last = log.read_text().splitlines()
    assert first == f"server: {mask_url(segue_valkey.url)}"
    assert last == "burst worker finished 20 runs"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: "
    assert all(re.match(stamp, line) for line in records), records  # none wrapped or split
    assert len([r for r in records if " started name=procs.nap try=1" in r]) == 20
    assert len([r for r in records if r.endswith(" succeeded")]) == 20
