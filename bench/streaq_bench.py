"""streaQ under the bench workloads. Worker: `streaq run [--burst] streaq_bench:worker`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import Hooks, run
from streaq import Worker

worker = Worker(
    redis_url=os.environ.get("BENCH_URL", "redis://127.0.0.1:6379"),
    concurrency=int(os.environ.get("BENCH_CONCURRENCY", "32")),
    queue_name="bench",
)


@worker.task()
async def work(i: int, sleep: float) -> int:
    if sleep:
        await asyncio.sleep(sleep)
    return i


async def setup() -> None:
    await worker.__aenter__()


async def teardown() -> None:
    await worker.__aexit__(None, None, None)


async def enqueue_one(i: int, sleep: float) -> Any:
    return await work.enqueue(i, sleep)


async def enqueue_batch(n: int, sleep: float) -> None:
    await worker.enqueue_many([work.enqueue(i, sleep) for i in range(n)])


async def wait_result(task: Any) -> Any:
    return await task.result(timeout=10)


if __name__ == "__main__":
    run(Hooks(setup, teardown, enqueue_one, enqueue_batch, wait_result))
