"""Keyed flow control: what keys cost a drain, and how long a quiet key waits behind a flood.

    python bench/fair_bench.py [--n 20000] [--keys 1000] [--runs 3] [--flood 20000]

Drain (runs interleaved, plain then keyed, median of each): `--n` no-op tasks drained by one
worker process (`segue worker fair_bench:app --concurrency 32`) on a fresh valkey-server,
  plain  tasks without a limit key (today's path);
  keyed  the same tasks spread over `--keys` distinct keys, each under a per-key
         concurrency limit of 5 and a per-key rate limit of 1000/s;
reported as tasks per second, keyed as a share of plain, and script calls per task
drained (each claim or finish is one call; a call claims or finishes a batch).

Starvation: key A enqueues `--flood` tasks, then key B enqueues 20; a worker of
concurrency 1 drains them. For each B task, the number of tasks started between B's
enqueue and its start (A's and B's alike): the figure the fairness scheme bounds (two
active keys of weight 1 take turns, so B's k-th task starts by the 2k-th start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from segue import App, Limit

HERE = Path(__file__).resolve().parent
app = App("fair", redis_url=os.environ.get("BENCH_URL"), queue="fair")
QUEUE = "fair"


@app.task(name="fair.plain")
async def plain(i: int) -> int:
    return i


@app.task(
    name="fair.keyed",
    concurrency=Limit(5, key="tenant"),
    rate_limit=Limit("1000/s", key="tenant", burst=100),
)
async def keyed(tenant: str, i: int) -> int:
    return i


@app.task(name="fair.flood", concurrency=Limit(1000, key="tenant"))
async def flood(tenant: str, i: int) -> int:
    client = redis.Redis.from_url(os.environ["BENCH_URL"])
    client.rpush("fair:order", f"{tenant} {i}")
    client.close()
    return i


def script_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_") in ("evalsha", "eval")
    )


async def enqueue(kind: str, n: int, keys: int) -> None:
    async with app:
        for start in range(0, n, 1000):
            rows = range(start, min(n, start + 1000))
            if kind == "plain":
                await app.enqueue_many([plain.call(i) for i in rows])
            elif kind == "keyed":
                await app.enqueue_many([keyed.call(f"t{i % keys}", i) for i in rows])
            else:
                await app.enqueue_many([flood.call(kind, i) for i in rows])


def worker(url: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "segue", "worker", "fair_bench:app", "--queues", QUEUE]
    cmd += ["--concurrency", str(concurrency), "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=HERE, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def wait_done(client: Any, n: int, what: str) -> None:
    deadline = time.monotonic() + 600
    while int(client.zcard(f"segue:{{{QUEUE}}}:done:succeeded")) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not drained")
        time.sleep(0.005)


def drain(kind: str, n: int, keys: int) -> tuple[float, float]:
    from _server import server

    with server() as url:
        os.environ["BENCH_URL"] = url
        app.settings = app.settings.replace(redis_url=url)
        asyncio.run(enqueue(kind, n, keys))
        client = redis.Redis.from_url(url)
        calls0 = script_calls(client)
        t0 = time.monotonic()
        proc = worker(url, 32)
        try:
            wait_done(client, n, kind)
            took = time.monotonic() - t0
            calls = script_calls(client) - calls0
        finally:
            stop(proc)
            client.close()
    return n / took, calls / n


def starvation(flood_n: int, few: int = 20) -> list[int]:
    from _server import server

    with server() as url:
        os.environ["BENCH_URL"] = url
        app.settings = app.settings.replace(redis_url=url)
        asyncio.run(enqueue("A", flood_n, 1))
        asyncio.run(enqueue("B", few, 1))
        client = redis.Redis.from_url(url)
        proc = worker(url, 1)
        try:
            wait_done(client, flood_n + few, "starvation")
        finally:
            stop(proc)
        order = [r.decode().split()[0] for r in client.lrange("fair:order", 0, -1)]
        client.close()
    return [k for k, t in enumerate(order) if t == "B"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flood", type=int, default=20_000)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "keyed": []}
    calls: dict[str, list[float]] = {"plain": [], "keyed": []}
    for _ in range(args.runs):
        for kind in ("plain", "keyed"):
            rate, per = drain(kind, args.n, args.keys)
            rates[kind].append(rate)
            calls[kind].append(per)
            print(f"  {kind}: {rate:,.0f} tasks/s, {per:.3f} script calls/task", flush=True)
    p, k = statistics.median(rates["plain"]), statistics.median(rates["keyed"])
    print(f"drain of {args.n:,} tasks (median of {args.runs}):")
    print(f"  plain {p:,.0f}/s, {statistics.median(calls['plain']):.3f} script calls/task")
    print(
        f"  {args.keys:,} keys, per-key limits: {k:,.0f}/s ({100 * k / p:.0f} % of plain), "
        f"{statistics.median(calls['keyed']):.3f} script calls/task"
    )
    positions = starvation(args.flood)
    waits = [at + 1 for at in positions]
    worst = max(at - 2 * k for k, at in enumerate(positions, start=1))
    print(
        f"starvation: B's 20 tasks behind A's {args.flood:,} started at starts {waits}; "
        f"first B task after {waits[0]} start(s); bound 2k held: {worst < 1}"
    )


if __name__ == "__main__":
    main()
