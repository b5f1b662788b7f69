"""segue under the bench workloads. Worker: `python -m segue worker segue_bench:app`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import Hooks, run

from segue import App, TaskHandle

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="bench")


@app.task(name="bench.work")
async def work(i: int, sleep: float) -> int:
    if sleep:
        await asyncio.sleep(sleep)
    return i


async def setup() -> None:
    await app.connect()


async def teardown() -> None:
    await app.close()


async def enqueue_one(i: int, sleep: float) -> TaskHandle[int]:
    return await work.enqueue(i, sleep)


async def enqueue_batch(n: int, sleep: float) -> None:
    await app.enqueue_many([work.call(i, sleep) for i in range(n)])


async def wait_result(h: Any) -> Any:
    return await h.result(timeout=10)


if __name__ == "__main__":
    run(Hooks(setup, teardown, enqueue_one, enqueue_batch, wait_result))
