"""A server restart (AOF kept) loses nothing acknowledged, and workers carry on."""

from __future__ import annotations

import asyncio
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
            worker = workers.start(args=["--log-format", "json"])
            line = await workers.line_with(worker, "the worker waits for it")
            assert f"127.0.0.1:{server.port}" in line
            server.start()
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
