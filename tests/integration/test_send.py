"""Enqueue by name (`app.send`): a producer without the task's code, real worker processes,
a single server and the cluster. What the producer cannot know comes from the worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._workers import Fleet
from tests.e2e.conftest import dashboard

FROM_WORKER = ("max_tries", "timeout", "version", "retry_backoff", "limits")
ROOT = Path(__file__).resolve().parents[2]


def segue(url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEGUE_QUEUE": queue, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "segue", *args, "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


async def failure(handle: Any, timeout: float = 15) -> TaskFailed:
    with pytest.raises(TaskFailed) as caught:
        await handle.result(timeout=timeout)
    return caught.value


@pytest.mark.slow
async def test_send_by_name_runs_checks_and_routes_on_worker_processes(
    segue_engine: Any, queue_name: str
) -> None:
    other = f"{queue_name}r"
    env = {"SEGUE_UNKNOWN_TASK_MAX_RELEASES": "1"}
    with Fleet("tests.apps.send:app", segue_engine.url, queue_name, env=env) as fleet:
        fleet.start(queues=[queue_name, other])
        async with App("producer", redis_url=segue_engine.url, queue=queue_name) as producer:
            assert producer.registry == {}  # no code of the tasks here
            known = await producer.send("reports.build", 2026, kwargs={"title": "q4"})
            routed = await producer.send("reports.build", 1, queue=other, priority="high")
            key = f"once-{queue_name}"
            first = await producer.send("reports.build", 7, key=key)
            again = await producer.send("reports.build", 8, key=key)
            later = await producer.send("reports.build", 3, delay=1.0)
            wrong_type = await producer.send("reports.build", "not a year")
            missing = await producer.send("reports.build")
            unexpected = await producer.send("reports.build", 1, kwargs={"colour": "red"})
            ghost = await producer.send("nobody.knows", 1)
            flaky = await producer.send("send.flaky")
            slow = await producer.send("send.slow", max_tries=1)
            await fleet.ready()

            got = await known.result(timeout=15)
            assert got == {"year": 2026, "title": "q4", "queue": queue_name, "tries": 1}
            assert (await routed.result(timeout=15))["queue"] == other
            assert (await routed.info()).priority == "high"
            assert again.id == first.id
            assert (await first.result(timeout=15))["year"] == 7
            assert (await later.result(timeout=15))["year"] == 3
            info = await later.info()
            assert info.started_at is not None and info.enqueued_at is not None
            assert (info.started_at - info.enqueued_at).total_seconds() >= 0.95
            assert info.from_worker == FROM_WORKER

            # the worker checks the arguments: no retry, the parameter named, dead-lettered
            for handle, named in (
                (wrong_type, "parameter 'year'"),
                (missing, "'year'"),
                (unexpected, "'colour'"),
            ):
                err = await failure(handle)
                assert err.reason == "bad_arguments", err
                assert named in err.message and "reports.build" in err.message
                assert (await handle.info()).tries == 1
            # an unknown name ends as an unknown task does
            err = await failure(ghost)
            assert err.reason == "unknown_task" and "nobody.knows" in err.message
            # max_tries and timeout from the worker's definition (the record holds 3, none)
            err = await failure(flaky)
            assert err.reason == "error"
            assert (await flaky.info()).tries == 2
            err = await failure(slow)
            assert err.reason == "timeout"
            assert (await slow.info()).from_worker == FROM_WORKER[1:]  # max_tries passed
            dead = {i.id for i in await producer.dead_letters()}
            assert {wrong_type.id, missing.id, unexpected.id, ghost.id} <= dead
            assert await known.status() is TaskStatus.SUCCEEDED
            # the dashboard marks what came from the worker
            async with dashboard(producer, auth=None) as client:
                page = (await client.get(f"/tasks/{known.id}")).text
            assert "enqueued by name: max_tries, timeout, version, retry_backoff, limits" in page


async def test_send_refuses_what_it_cannot_carry(make_app: Any) -> None:
    from segue import ConfigurationError

    app = make_app()
    async with app:
        with pytest.raises(ConfigurationError, match="unknown option"):
            await app.send("reports.build", 1, dely=5)
        with pytest.raises(ConfigurationError, match="task name"):
            await app.send("two words")
        with pytest.raises(ConfigurationError, match="queue"):
            await app.send("reports.build", queue="bad queue")


@pytest.mark.slow
async def test_segue_enqueue_from_a_shell(segue_engine: Any, queue_name: str) -> None:
    other = f"{queue_name}r"
    url = segue_engine.url
    with Fleet("tests.apps.send:app", url, queue_name) as fleet:
        fleet.start(queues=[queue_name, other])
        options = ["--queue", other, "--priority", "high", "--delay", "0.5", "--key", "k1"]
        args = ["enqueue", "reports.build", "[2026]", "--kwargs", '{"title": "q4"}', *options]
        done = segue(url, queue_name, *args)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip().splitlines()[-1]
        assert task_id == f"{other}:k:k1"
        bad = segue(url, queue_name, "enqueue", "reports.build", '"not a year"')
        assert bad.returncode == 0, bad.stderr
        bad_id = bad.stdout.strip().splitlines()[-1]
        refused = segue(url, queue_name, "enqueue", "reports.build", "[1", "--kwargs", "{}")
        assert refused.returncode != 0 and "not JSON" in refused.stderr + refused.stdout
        async with App("shell", redis_url=url, queue=queue_name) as app:
            handle = await app.task_handle(task_id)
            got = await handle.result(timeout=15)
            assert got == {"year": 2026, "title": "q4", "queue": other, "tries": 1}
            info = await handle.info()
            assert info.priority == "high" and info.from_worker == FROM_WORKER
            assert info.started_at is not None and info.enqueued_at is not None
            assert (info.started_at - info.enqueued_at).total_seconds() >= 0.45
            err = await failure(await app.task_handle(bad_id))
            assert err.reason == "bad_arguments" and "parameter 'year'" in err.message
