"""Workflows: the overhead of a chain step and of a wide group, against a worker process.

    python bench/workflow_bench.py [--steps 1000] [--width 10000]

  chain        a chain of N no-op steps, enqueue to result
  cross chain  the same chain, its steps alternating between two queues (every step a
               crossing: one outbox entry forwarded to the other queue)
  sequential   N plain no-op tasks, each enqueued after the previous one's result (what a
               chain step replaces)
  independent  N plain no-op tasks enqueued at once, drained at full concurrency
  group        a group of W no-op steps and a merge step that gets the W results, versus W
               independent tasks
Server round trips are counted from the server's command statistics (EVALSHA calls and
all commands) over each workload.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time
from typing import Any

import redis
from _server import server, worker

from segue import App

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="wf")


@app.task(name="bench.step")
async def step(x: int) -> int:
    return x + 1


@app.task(name="bench.leaf")
async def leaf(i: int) -> int:
    return i


@app.task(name="bench.merge")
async def merge(values: list[int]) -> int:
    return len(values)


def _calls(admin: redis.Redis) -> tuple[int, int]:
    stats: dict[str, Any] = admin.info("commandstats")
    evalsha = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    total = sum(int(v.get("calls", 0)) for v in stats.values())
    return evalsha, total


async def main(steps: int, width: int) -> None:
    with server() as url:
        os.environ["BENCH_URL"] = url
        mod = importlib.import_module("workflow_bench")
        admin = redis.Redis.from_url(url)
        with worker("workflow_bench:app", url, concurrency=32, queues="wf,wf2"):
            async with mod.app:
                await (await mod.step.enqueue(0)).result(timeout=30)  # warm up

                async def measure(label: str, n: int, run: Any) -> float:
                    e0, c0 = _calls(admin)
                    t0 = time.perf_counter()
                    await run()
                    took = time.perf_counter() - t0
                    e1, c1 = _calls(admin)
                    print(
                        f"{label}: {took:.2f} s, {1000 * took / n:.2f} ms per task, "
                        f"{(e1 - e0) / n:.2f} script calls and {(c1 - c0) / n:.0f} server commands "
                        "(counting those inside scripts) per task"
                    )
                    return took

                async def chain() -> None:
                    wf = mod.step.call(0)
                    for _ in range(steps - 1):
                        wf = wf | mod.step
                    h = await wf.enqueue()
                    assert await h.result(timeout=600) == steps

                async def cross_chain() -> None:
                    wf = mod.step.call(0)
                    for n in range(steps - 1):
                        wf = wf | (mod.step.options(queue="wf2") if n % 2 == 0 else mod.step)
                    h = await wf.enqueue()
                    assert await h.result(timeout=600) == steps

                async def sequential() -> None:
                    x = 0
                    for _ in range(steps):
                        x = await (await mod.step.enqueue(x)).result(timeout=30)

                async def independent() -> None:
                    hs = await mod.app.enqueue_many([mod.step.call(i) for i in range(steps)])
                    for h in hs:
                        await h.result(timeout=60)

                async def group() -> None:
                    wf = mod.app.group(mod.leaf.call(i) for i in range(width)) | mod.merge
                    t0 = time.perf_counter()
                    h = await wf.enqueue()
                    print(f"  group enqueue ({width + 1} steps): {time.perf_counter() - t0:.2f} s")
                    assert await h.result(timeout=600) == width

                async def wide() -> None:
                    hs = await mod.app.enqueue_many([mod.leaf.call(i) for i in range(width)])
                    await hs[-1].result(timeout=600)
                    for h in hs:
                        await h.result(timeout=60)

                c = await measure(f"chain of {steps}", steps, chain)
                x = await measure(f"cross-queue chain of {steps}", steps, cross_chain)
                print(f"  a crossing costs {1000 * (x - c) / steps:+.2f} ms vs a step on one queue")
                s = await measure(f"{steps} sequential tasks", steps, sequential)
                await measure(f"{steps} independent tasks", steps, independent)
                print(f"  a chain step costs {1000 * (c - s) / steps:+.2f} ms vs a sequential task")
                await measure(f"group of {width} + merge", width, group)
                await measure(f"{width} independent tasks", width, wide)
        admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--width", type=int, default=10000)
    ns = parser.parse_args()
    asyncio.run(main(ns.steps, ns.width))
