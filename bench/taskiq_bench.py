"""taskiq + taskiq-redis under the bench workloads.

Worker: `taskiq worker --workers 1 --max-async-tasks C --max-prefetch C taskiq_bench:broker`.
taskiq has no batch enqueue: the batch workload sends `kiq` calls concurrently (64 at a time).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import Hooks, run
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

URL = os.environ.get("BENCH_URL", "redis://127.0.0.1:6379")
broker = RedisStreamBroker(URL).with_result_backend(
    RedisAsyncResultBackend(URL, result_ex_time=3600)
)


@broker.task
async def work(i: int, sleep: float) -> int:
    if sleep:
        await asyncio.sleep(sleep)
    return i


async def setup() -> None:
    await broker.startup()


async def teardown() -> None:
    await broker.shutdown()


async def enqueue_one(i: int, sleep: float) -> Any:
    return await work.kiq(i, sleep)


async def enqueue_batch(n: int, sleep: float) -> None:
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await work.kiq(i, sleep)

    await asyncio.gather(*(one(i) for i in range(n)))


async def wait_result(task: Any) -> Any:
    # taskiq polls the result backend; poll fast so latency is not the poll interval
    return await task.wait_result(check_interval=0.0002, timeout=10)


if __name__ == "__main__":
    run(Hooks(setup, teardown, enqueue_one, enqueue_batch, wait_result))
