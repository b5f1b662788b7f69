"""A server restart (AOF kept) loses nothing acknowledged, and workers carry on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskStatus
from tests._support import Server
from tests._workers import Fleet
from tests.apps import procs
from tests.integration.conftest import serving

pytestmark = pytest.mark.slow


@pytest.fixture
def server_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        s.kill()


async def test_worker_survives_a_server_kill_and_restart(server: Server) -> None:
    app = App(
        "restart",
        redis_url=f"redis://127.0.0.1:{server.port}/0",
        poll_seconds=0.2,
        lease_seconds=2.0,
    )

    @app.task(name="inc")
    async def inc(n: int) -> int:
        return n + 1

    async with app:
        before = await app.enqueue_many([inc.call(i) for i in range(200)])
        async with serving(app, concurrency=8):
            assert await before[-1].result(timeout=10) == 200
            server.kill()
            await asyncio.sleep(0.3)
            server.start()
            # enqueue may hit the reconnect: the client retries it safely (idempotent by id)
            after = await app.enqueue_many([inc.call(i) for i in range(200, 400)])
            results = [await h.result(timeout=20) for h in before + after]
            assert results == list(range(1, 401))
        assert (await app.queue_counts())["succeeded"] == 400
        assert await before[0].status() is TaskStatus.SUCCEEDED


def _workers(url: str, queue: str) -> Fleet:
    """Workers of tests.apps.procs with the App's own lease, poll and grace, logging JSON."""
    env = {"LEDGER_URL": url}
    app = "tests.apps.procs:app"
    return Fleet(app, url, queue, lease=None, poll=None, grace=None, env=env)


async def test_a_worker_started_before_its_server_waits_for_it(server_dir: Path) -> None:
    server = Server(server_dir)  # not started yet: a supervisor brought the worker up first
    url = f"redis://127.0.0.1:{server.port}/0"
    try:
        with _workers(url, "early") as workers:
            # an outage is logged every two heartbeats: 1 s here
            worker = workers.start(
                args=["--log-format", "json"], env={"SEGUE_HEARTBEAT_SECONDS": "0.5"}
            )
            line = await workers.line_with(worker, "the worker waits for it")
            assert f"127.0.0.1:{server.port}" in line
            line = await workers.line_with(worker, "still waiting for")
            assert f"still waiting for {url} (" in line
            server.start()
            assert "reachable again after" in await workers.line_with(worker, "reachable again")
            procs.app.settings = procs.app.settings.replace(redis_url=url, queue="early")
            async with procs.app:
                h = await procs.count.enqueue(7)
                assert await h.result(timeout=20) == 7
            assert worker.alive()
    finally:
        if server.proc is not None:
            server.kill()


def test_a_worker_refused_by_the_server_exits_with_the_reason(server: Server) -> None:
    url = f"redis://nobody:wrong@127.0.0.1:{server.port}/0"
    with _workers(url, "refused") as workers:
        worker = workers.start(args=["--log-format", "json"])
        assert workers.wait_exit(worker, timeout=30) != 0  # a wrong password is not waited out
        assert "error:" in workers.log(worker)


# timing-sensitive: it counts the lines of a 4 s outage against heartbeats, so it runs in
# the serial phase, where no other test's load stretches the worker's loops
@pytest.mark.serial
async def test_an_outage_is_logged_when_it_starts_now_and_then_and_when_it_ends(
    server: Server,
) -> None:
    app = App("outage", redis_url=f"redis://127.0.0.1:{server.port}/0", heartbeat_seconds=1.0)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("segue")
    logger.addHandler(handler)
    try:
        async with app, serving(app, concurrency=4) as worker:
            await asyncio.wait_for(worker.ready.wait(), 10)
            server.kill()
            await asyncio.sleep(4.0)  # four heartbeats, two outage periods
            server.start()
            deadline = time.monotonic() + 10
            while not any("reachable again" in r.getMessage() for r in records):
                assert time.monotonic() < deadline, [r.getMessage() for r in records]
                await asyncio.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    # one line when it starts, one per two heartbeats, one when it ends; the heartbeat's own
    # failures at most once a beat: about 10 in all where each retry logged (70 in 10 s)
    assert len(lines) <= 12, lines
    assert sum(line.startswith("server unavailable") for line in lines) == 1, lines
    assert sum(line.startswith("server still unavailable after") for line in lines) >= 1
