"""Huey under the bench workloads. Worker: `huey_consumer huey_bench.huey -k thread -w C`.

Huey is synchronous: the hooks call it directly (one caller, so nothing else waits on the
loop). It has no batch enqueue (`task.map` enqueues one by one), so enqueue-batch is a loop.
`notify_result=True` makes `result(blocking=True)` wait on a BLPOP instead of polling.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import Hooks, run
from huey import RedisHuey

huey = RedisHuey(
    "bench", url=os.environ.get("BENCH_URL", "redis://127.0.0.1:6379"), notify_result=True
)


@huey.task()
def work(i: int, sleep: float) -> int:
    if sleep:
        time.sleep(sleep)
    return i


async def setup() -> None:
    pass


async def teardown() -> None:
    pass


async def enqueue_one(i: int, sleep: float) -> Any:
    return work(i, sleep)


async def enqueue_batch(n: int, sleep: float) -> None:
    work.map((i, sleep) for i in range(n))


async def wait_result(result: Any) -> Any:
    return result.get(blocking=True, timeout=10)


if __name__ == "__main__":
    # Huey names a task after its module: enqueue through the module the consumer imports
    import huey_bench as m

    run(Hooks(m.setup, m.teardown, m.enqueue_one, m.enqueue_batch, m.wait_result))
