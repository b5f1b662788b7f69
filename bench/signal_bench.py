"""Signals: the latency from `handle.signal()` returning to `ctx.wait_signal()` returning in
the woken task (p50/p99), beside the same run's enqueue-to-start latency (from `enqueue()`
returning to the task's first line), against a worker process. The two are interleaved, so
both see the same load.

    python bench/signal_bench.py [--n 300]

A waiting task holds no slot: the signal queues it again, a worker claims it, and its run
replays up to the wait (one read of its journal) which returns the journaled signal. So a
wake-up costs an enqueue-to-start plus that read. The task records the wall-clock instant
its wait returned (or it started) in a Redis list; both clocks are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
from typing import Any

import redis.asyncio
from _server import percentiles, server, worker

from segue import App, Context, TaskStatus

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="signals")
WOKE = "bench:woke"
STARTED = "bench:started"
IDLE_SECONDS = 0.005  # before each signal and enqueue: the worker waits for work again
_side: Any = None


def _redis() -> Any:
    global _side
    if _side is None:
        _side = redis.asyncio.Redis.from_url(os.environ["BENCH_URL"])
    return _side


@app.task(name="bench.waiter")
async def waiter(ctx: Context) -> None:
    await ctx.wait_signal("go")
    await _redis().rpush(WOKE, repr(time.time()))


@app.task(name="bench.starter")
async def starter() -> None:
    await _redis().rpush(STARTED, repr(time.time()))


async def _wake_ups(mod: Any, side: Any, n: int) -> tuple[list[float], list[float]]:
    wakes: list[float] = []
    starts: list[float] = []
    for _ in range(n):
        h = await mod.waiter.enqueue()
        await h.wait_for(TaskStatus.WAITING, timeout=10)
        await asyncio.sleep(IDLE_SECONDS)
        await h.signal("go")
        t0 = time.time()
        _, woke = await side.blpop([WOKE], timeout=10) or (None, b"nan")
        wakes.append(float(woke) - t0)
        await h.result(timeout=10)
        # as before the signal (the waiter had gone WAITING), the worker is idle again: a
        # start right after the waiter ended would ride on its finish's claim instead
        await asyncio.sleep(IDLE_SECONDS)
        await mod.starter.enqueue()
        t0 = time.time()
        _, started = await side.blpop([STARTED], timeout=10) or (None, b"nan")
        starts.append(float(started) - t0)
    return wakes, starts


async def main(n: int) -> None:
    with server() as url:
        os.environ["BENCH_URL"] = url
        # imported again under its own name, now that the App's URL is known
        mod = importlib.import_module("signal_bench")
        side = redis.asyncio.Redis.from_url(url)
        with worker("signal_bench:app", url, concurrency=8):
            async with mod.app:
                await _wake_ups(mod, side, 20)  # warm-up: scripts loaded, connections open
                wakes, starts = await _wake_ups(mod, side, n)
        await side.aclose()
    w50, w99 = percentiles(wakes)
    s50, s99 = percentiles(starts)
    print(
        f"signal to wake-up: p50 {w50:.2f} ms, p99 {w99:.2f} ms; the same run's enqueue to "
        f"start: p50 {s50:.2f} ms, p99 {s99:.2f} ms (wake/start p50 {w50 / s50:.2f}x, "
        f"p99 {w99 / s99:.2f}x; {n} of each, interleaved, worker concurrency 8)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    asyncio.run(main(parser.parse_args().n))
