"""Every connection of a producer and a worker reset at once (a proxy or load balancer
restarting, a network blip): the next call of each kind succeeds without the user seeing an
error, and a running task can still be cancelled through the reconnected pub/sub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from segue import App, Context, TaskStatus
from tests._support import Engine
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import serving


async def test_after_every_connection_is_reset_each_kind_of_call_goes_on(
    segue_valkey: Engine, queue_name: str
) -> None:
    with FaultProxy.for_url(segue_valkey.admin_url) as proxy:
        # a long lease: the cancel below can only arrive through pub/sub, not a renewal
        options: dict[str, Any] = {"queue": queue_name, "poll_seconds": 0.2, "lease_seconds": 60.0}
        app = App("resets", redis_url=proxy.url_for(segue_valkey.url), **options)
        operator = App("resets", redis_url=segue_valkey.url, queue=queue_name)

        @app.task(name="resets.long")
        async def long(ctx: Context) -> None:
            await asyncio.sleep(30)

        @app.task(name="resets.quick")
        async def quick(x: int) -> int:
            return x

        async with app, operator:
            async with serving(app):
                running = await long.enqueue()
                deadline = time.monotonic() + 10
                while await running.status() != TaskStatus.RUNNING:
                    assert time.monotonic() < deadline, "the long task did not start"
                    await asyncio.sleep(0.05)
                assert proxy.reset() >= 3  # fast path, redis-py pool, pub/sub, lease, ...

                # none of these raises: each reconnects by itself
                counts = await app.queue_counts()
                assert counts["running"] == 1
                done = await quick.enqueue(7)
                assert await done.result(timeout=10) == 7

                handle = await operator.task_handle(running.id)
                await handle.cancel()
                deadline = time.monotonic() + 5
                while await handle.status() != TaskStatus.CANCELLED:
                    assert time.monotonic() < deadline, "the cancel did not reach the task"
                    await asyncio.sleep(0.05)
            # the worker's stop removed its record through a connection that was reset
            # (other tests' SIGKILLed workers may still have records on this server)
            assert [w for w in await operator.workers() if queue_name in w.queues] == []
