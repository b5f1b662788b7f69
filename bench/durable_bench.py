"""Durable tasks: the cost of `ctx.state.set` and of a journaled `ctx.step` (p50/p99, the two
interleaved in one run), the throughput of a 100-step durable function, and how long a pause
and a cancel take from the call to the task being stopped (p50/p99 over N tries), against a
worker process.

    python bench/durable_bench.py [--n 200]

The task records the wall-clock instant it stops (in a `finally`, so an interruption counts
too) in a Redis list; the latency is that instant minus the instant `pause()`/`cancel()` was
called, both on this machine's clock.
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

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="durable")
STOPS = "bench:stops"
STARTED = "bench:started"


@app.task(name="bench.state_writer")
async def state_writer(ctx: Context, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await ctx.state.set(i=i, note="checkpoint")
    return (time.perf_counter() - t0) / n


def noop(i: int) -> int:
    return i


async def anoop(i: int) -> int:
    return i


@app.task(name="bench.step_vs_state")
async def step_vs_state(ctx: Context, n: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of ctx.state.set and of ctx.step (a journaled step of a function
    that returns at once), interleaved so that both see the same load."""
    await ctx.step("warm-up", anoop, -1)  # the run's one read of the journal
    states: list[float] = []
    steps: list[float] = []
    for i in range(n):
        # which goes first alternates: neither gets the warmer connection every time
        for first in (i % 2 == 0, i % 2 == 1):
            t0 = time.perf_counter()
            if first:
                await ctx.state.set(i=i)
                states.append(time.perf_counter() - t0)
            else:
                await ctx.step(f"s{i}", anoop, i)
                steps.append(time.perf_counter() - t0)
    return states, steps


@app.task(name="bench.hundred_steps")
async def hundred_steps(ctx: Context) -> int:
    total = 0
    for i in range(100):
        total += await ctx.step(f"step-{i}", noop if i % 2 else anoop, i)
    return total


@app.task(name="bench.checkpointing")
async def checkpointing(ctx: Context) -> None:
    """Loops on short awaits with a checkpoint after each, as a well-behaved long task."""
    side = redis.asyncio.Redis.from_url(os.environ["BENCH_URL"])
    await side.rpush(STARTED, ctx.task_id)
    try:
        while True:
            await asyncio.sleep(0.005)
            await ctx.checkpoint()
    finally:
        await side.rpush(STOPS, repr(time.time()))
        await side.aclose()


@app.task(name="bench.awaiting")
async def awaiting(ctx: Context) -> None:
    """Sits in one long await: only a cancel (or the pause grace period) stops it."""
    side = redis.asyncio.Redis.from_url(os.environ["BENCH_URL"])
    await side.rpush(STARTED, ctx.task_id)
    try:
        await asyncio.sleep(3600)
    finally:
        await side.rpush(STOPS, repr(time.time()))
        await side.aclose()


async def _stop_latency(mod: Any, side: redis.asyncio.Redis, n: int, kind: str) -> list[float]:
    task = mod.checkpointing if kind != "cancel-await" else mod.awaiting
    samples: list[float] = []
    for _ in range(n):
        h = await task.enqueue()
        await side.blpop([STARTED], timeout=10)
        t0 = time.time()
        if kind == "pause":
            await h.pause()
        else:
            await h.cancel()
        _, stopped = await side.blpop([STOPS], timeout=10) or (None, b"nan")
        samples.append(float(stopped) - t0)
        if kind == "pause":
            await h.wait_for(TaskStatus.PAUSED, timeout=10)
            await h.cancel()
    return samples


async def _journal_figures(mod: Any) -> None:
    h = await mod.step_vs_state.enqueue(1000)
    states, steps = await h.result(timeout=120)
    s50, s99 = percentiles(states)
    j50, j99 = percentiles(steps)
    print(
        f"journaled ctx.step: p50 {j50 * 1e3:.0f} us, p99 {j99 * 1e3:.0f} us; the same run's "
        f"ctx.state.set: p50 {s50 * 1e3:.0f} us, p99 {s99 * 1e3:.0f} us "
        f"(step/state p50 {j50 / s50:.2f}x, p99 {j99 / s99:.2f}x; 1,000 of each, interleaved)"
    )
    functions = 40
    t0 = time.perf_counter()
    handles = [await mod.hundred_steps.enqueue() for _ in range(functions)]
    for handle in handles:
        await handle.result(timeout=120)
    took = time.perf_counter() - t0
    print(
        f"100-step durable function: {functions / took:.1f} functions/s, "
        f"{functions * 100 / took:.0f} steps/s ({functions} functions, worker concurrency 8)"
    )


async def main(n: int) -> None:
    with server() as url:
        os.environ["BENCH_URL"] = url
        # imported again under its own name, now that the App's URL is known
        mod = importlib.import_module("durable_bench")
        side = redis.asyncio.Redis.from_url(url)
        with worker("durable_bench:app", url, concurrency=8):
            async with mod.app:
                h = await mod.state_writer.enqueue(2000)
                per_call = await h.result(timeout=60)
                print(f"ctx.state.set: {per_call * 1e6:.0f} us per call (2,000 calls, 2 keys)")
                await _journal_figures(mod)
                for kind, label in (
                    ("pause", "pause, task checkpointing every 5 ms"),
                    ("cancel", "cancel, task checkpointing every 5 ms"),
                    ("cancel-await", "cancel, task in one long await"),
                ):
                    samples = await _stop_latency(mod, side, n, kind)
                    p50, p99 = percentiles(samples)
                    print(f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({n} tries)")
        await side.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    asyncio.run(main(parser.parse_args().n))
