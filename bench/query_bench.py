"""Queries: the round trip of `handle.query` (from the call to the answer in hand, p50/p99)
against a worker process, beside the same client's `handle.status()` (one plain read) as the
floor; sequential queries to one task, then `--parallel` askers at once over 8 running tasks,
then one task busy on the CPU between awaits (a handler waits for the task's next await).

    python bench/query_bench.py [--n 2000] [--parallel 16] [--cluster]

`--cluster`: against a 3-primary Valkey cluster (bench/cluster_bench.py's), instead of one
standalone Valkey.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import time
from typing import TYPE_CHECKING, Any

from _server import percentiles, server, worker

from segue import App, Context, TaskStatus, UnknownQuery

if TYPE_CHECKING:
    from collections.abc import Iterator

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="queries")


@app.task(name="bench.queried")
async def queried(ctx: Context, seconds: float, busy_ms: float) -> int:
    """Runs for `seconds`, answering "progress" (sync) and "echo" (async); between awaits it
    spends `busy_ms` on the CPU (0: it sits in short sleeps)."""
    rounds = 0

    async def echo(value: Any) -> Any:
        return value

    ctx.on_query("progress", lambda: {"rounds": rounds})
    ctx.on_query("echo", echo)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if busy_ms:
            spin = time.perf_counter() + busy_ms / 1000
            while time.perf_counter() < spin:
                pass
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.01)
        rounds += 1
    return rounds


async def _ready(h: Any) -> None:
    await h.wait_for(TaskStatus.RUNNING, timeout=20)
    while True:
        try:
            await h.query("progress")
            return
        except UnknownQuery:
            await asyncio.sleep(0.01)


async def _timed(call: Any) -> float:
    t0 = time.perf_counter()
    await call
    return time.perf_counter() - t0


def _line(label: str, samples: list[float]) -> str:
    p50, p99 = percentiles(samples)
    return f"{label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(samples)} samples)"


@contextlib.contextmanager
def _servers(on_cluster: bool) -> Iterator[str]:
    if not on_cluster:
        with server() as url:
            yield url
        return
    from cluster_bench import cluster

    with cluster() as (url, _):
        yield url


async def main(n: int, parallel: int, on_cluster: bool) -> None:
    with _servers(on_cluster) as url:
        os.environ["BENCH_URL"] = url
        # imported again under its own name, now that the App's URL is known
        mod = importlib.import_module("query_bench")
        with worker("query_bench:app", url, concurrency=8):
            async with mod.app:
                handles = [await mod.queried.enqueue(120.0, 0.0) for _ in range(8)]
                for h in handles:
                    await _ready(h)
                one = handles[0]
                for _ in range(100):  # warm-up: connections, script load, subscriptions
                    await one.query("progress")
                    await one.status()
                reads, sync_q, async_q = [], [], []
                for i in range(n):
                    reads.append(await _timed(one.status()))
                    sync_q.append(await _timed(one.query("progress")))
                    async_q.append(await _timed(one.query("echo", {"i": i})))
                print(_line("handle.status() (one read, the floor)", reads))
                print(_line("handle.query, sync handler, one asker", sync_q))
                print(_line("handle.query, async handler, one asker", async_q))

                together: list[float] = []

                async def asker(k: int) -> None:
                    for i in range(n // parallel):
                        h = handles[(k + i) % len(handles)]
                        together.append(await _timed(h.query("progress")))

                t0 = time.perf_counter()
                await asyncio.gather(*(asker(k) for k in range(parallel)))
                took = time.perf_counter() - t0
                print(
                    _line(f"handle.query, {parallel} askers over 8 running tasks", together)
                    + f"; {len(together) / took:.0f} queries/s"
                )
                for h in handles:
                    await h.cancel()

                busy = await mod.queried.enqueue(60.0, 5.0)
                await _ready(busy)
                spun = [await _timed(busy.query("progress")) for _ in range(n // 4)]
                print(_line("handle.query, task busy 5 ms on the CPU between awaits", spun))
                await busy.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--cluster", action="store_true", help="a 3-primary cluster")
    ns = parser.parse_args()
    asyncio.run(main(ns.n, ns.parallel, ns.cluster))
