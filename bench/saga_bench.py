"""Sagas: what a compensation costs, against a worker process.

    python bench/saga_bench.py [--steps 200] [--width 1000]

  chain        a chain of N no-op steps, each with a compensation, that succeeds
               (the saga plan is written, nothing is compensated)
  undo chain   the same chain ending in a step that fails: N compensations, one after the
               other (reverse order), enqueue to the workflow's end
  plain chain  the failing chain without compensations (the baseline of `undo chain`)
  undo group   a group of W steps with compensations and a failing merge: W compensations
               at once
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

from segue import App, TaskStatus

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="saga")


@app.task(name="bench.step")
async def step(x: int) -> int:
    return x + 1


@app.task(name="bench.undo")
async def undo(x: int) -> None:
    return None


@app.task(name="bench.fail", max_tries=1)
async def fail(x: Any) -> None:
    raise RuntimeError("the last step fails")


def _calls(admin: redis.Redis) -> tuple[int, int]:
    stats: dict[str, Any] = admin.info("commandstats")
    evalsha = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    total = sum(int(v.get("calls", 0)) for v in stats.values())
    return evalsha, total


async def main(steps: int, width: int) -> None:
    with server() as url:
        os.environ["BENCH_URL"] = url
        mod = importlib.import_module("saga_bench")
        admin = redis.Redis.from_url(url)
        with worker("saga_bench:app", url, concurrency=32, queues="saga"):
            async with mod.app:
                await (await mod.step.enqueue(0)).result(timeout=30)  # warm up

                async def measure(label: str, n: int, run: Any) -> float:
                    e0, c0 = _calls(admin)
                    t0 = time.perf_counter()
                    await run()
                    took = time.perf_counter() - t0
                    e1, c1 = _calls(admin)
                    print(
                        f"{label}: {took:.2f} s, {1000 * took / n:.2f} ms per step, "
                        f"{(e1 - e0) / n:.2f} script calls and {(c1 - c0) / n:.0f} server "
                        "commands (counting those inside scripts) per step"
                    )
                    return took

                def chain(compensated: bool, failing: bool) -> Any:
                    first = mod.step.call(0)
                    wf = first.options(compensate=mod.undo.call()) if compensated else first
                    for _ in range(steps - 1):
                        nxt = (
                            mod.step.options(compensate=mod.undo.call())
                            if compensated
                            else mod.step
                        )
                        wf = wf | nxt
                    return wf | mod.fail if failing else wf

                async def ok_chain() -> None:
                    h = await chain(True, False).enqueue()
                    assert await h.result(timeout=600) == steps

                async def undo_chain() -> None:
                    h = await chain(True, True).enqueue()
                    assert await h.wait_ended(timeout=600) is TaskStatus.FAILED

                async def plain_chain() -> None:
                    h = await chain(False, True).enqueue()
                    assert await h.wait_ended(timeout=600) is TaskStatus.FAILED

                async def undo_group() -> None:
                    members = (
                        mod.step.call(i).options(compensate=mod.undo.call()) for i in range(width)
                    )
                    h = await (mod.app.group(members) | mod.fail).enqueue()
                    assert await h.wait_ended(timeout=600) is TaskStatus.FAILED

                await measure(f"chain of {steps}, compensations not run", steps, ok_chain)
                u = await measure(f"chain of {steps} + failing step, undone", steps, undo_chain)
                p = await measure(f"chain of {steps} + failing step, plain", steps, plain_chain)
                print(f"  a compensation (run in sequence) costs {1000 * (u - p) / steps:.2f} ms")
                await measure(f"group of {width} + failing merge, undone", width, undo_group)
        admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=1000)
    ns = parser.parse_args()
    asyncio.run(main(ns.steps, ns.width))
