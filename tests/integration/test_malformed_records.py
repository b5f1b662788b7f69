"""Records written by anyone with write access: a task record whose fields segue cannot read
ends that task FAILED (undecodable) and dead-lettered, alone. The worker stays up and the
tasks claimed with it run (docs/guarantees.md: malformed records are dead-lettered)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio

from segue import App, TaskStatus
from tests.integration.conftest import serving

pytestmark = pytest.mark.slow

# field → a value another client could have written
CORRUPTIONS = {
    "t": b"abc",
    "mt": b"abc",
    "exp": b"abc",
    "to": b"abc",
    "d": b"1.5",
    "g": b"nan",
    "n": b"\xff\xfe not utf-8",
    "hd": b"[1, 2]",
}


@pytest.mark.parametrize("field", sorted(CORRUPTIONS))
async def test_a_malformed_record_fails_alone_and_the_worker_goes_on(
    segue_valkey: Any, queue_name: str, field: str
) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)

    @app.task(name="m.job", max_tries=1)
    async def job(i: int) -> int:
        return i

    raw: Any = redis.asyncio.Redis.from_url(segue_valkey.url)
    async with app:
        before = [await job.enqueue(i) for i in range(3)]
        bad = await job.enqueue(99)
        after = [await job.enqueue(i) for i in range(3, 6)]
        broker = await app._client.broker()
        await raw.hset(broker.keyspace(queue_name).task(bad.id), field, CORRUPTIONS[field])
        async with serving(app, concurrency=8):
            for h in before + after:
                assert await asyncio.wait_for(h.result(), 20) is not None
            info = await asyncio.wait_for(_ended(bad), 20)
            assert info.status is TaskStatus.FAILED
            assert info.error is not None and info.error.reason == "undecodable"
            assert bad.id in await broker.reads.dead_ids(broker.keyspace(queue_name), 0, 100)
            # still serving: a task enqueued now runs
            assert await asyncio.wait_for((await job.enqueue(7)).result(), 20) == 7
    await raw.aclose()


async def _ended(handle: Any) -> Any:
    while True:
        info = await handle.info()
        if info.status.is_final:
            return info
        await asyncio.sleep(0.05)
