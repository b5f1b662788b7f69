"""Workload drivers shared by the per-queue bench modules: each module supplies hooks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


@dataclass
class Hooks:
    """What a queue library must provide to be benchmarked."""

    setup: Callable[[], Awaitable[None]]
    teardown: Callable[[], Awaitable[None]]
    enqueue_one: Callable[[int, float], Awaitable[Any]]
    enqueue_batch: Callable[[int, float], Awaitable[None]]
    wait_result: Callable[[Any], Awaitable[Any]]


async def _main(hooks: Hooks, ns: argparse.Namespace) -> dict[str, Any]:
    await hooks.setup()
    try:
        if ns.workload == "enqueue-one":
            t0 = time.perf_counter()
            for i in range(ns.n):
                await hooks.enqueue_one(i, ns.sleep)
            return {"rate": ns.n / (time.perf_counter() - t0)}
        if ns.workload == "enqueue-batch":
            t0 = time.perf_counter()
            await hooks.enqueue_batch(ns.n, ns.sleep)
            return {"rate": ns.n / (time.perf_counter() - t0)}
        if ns.workload == "prepare":
            await hooks.enqueue_batch(ns.n, ns.sleep)
            return {"enqueued": ns.n}
        if ns.workload == "latency":
            for i in range(20):  # warm up connections and the worker
                await hooks.wait_result(await hooks.enqueue_one(i, 0.0))
            lat = []
            for i in range(ns.n):
                t0 = time.perf_counter()
                await hooks.wait_result(await hooks.enqueue_one(i, 0.0))
                lat.append(time.perf_counter() - t0)
            lat.sort()
            return {
                "p50_ms": 1000 * lat[len(lat) // 2],
                "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            }
        if ns.workload == "one":
            await hooks.wait_result(await hooks.enqueue_one(0, 0.0))
            return {"done": 1}
        raise SystemExit(f"unknown workload {ns.workload}")
    finally:
        await hooks.teardown()


def run(hooks: Hooks) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=0.0)
    ns = parser.parse_args()
    # BENCH_LOOP=uvloop: the producer's side on uvloop (the worker reads SEGUE_EVENT_LOOP)
    if os.environ.get("BENCH_LOOP") == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            print(json.dumps(runner.run(_main(hooks, ns))))
        return
    print(json.dumps(asyncio.run(_main(hooks, ns))))
