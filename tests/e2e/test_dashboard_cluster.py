"""The dashboard on a Redis Cluster: the overview, a task page, an action button and the
metrics, with two queues whose keys live on different primaries."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from segue import App, Context, TaskStatus
from tests._support import Engine
from tests.e2e.conftest import act, dashboard
from tests.integration.conftest import serving


def _other_primary(queue: str) -> str:
    """A second queue name whose hash tag maps to another third of the slots (another
    primary of the 3-primary test cluster, whose slots are split evenly)."""
    third = key_slot(queue.encode()) * 3 // 16384
    n = 0
    while key_slot(f"{queue}x{n}".encode()) * 3 // 16384 == third:
        n += 1
    return f"{queue}x{n}"


async def test_the_dashboard_reads_and_acts_across_cluster_primaries(
    segue_cluster: Engine, queue_name: str
) -> None:
    other = _other_primary(queue_name)
    app = App("dash", redis_url=segue_cluster.url, queue=queue_name, poll_seconds=0.2)

    @app.task(name="dc.crunch")
    async def crunch(ctx: Context, steps: int) -> int:
        for i in range(steps):
            await ctx.progress(i + 1, steps)
            await ctx.checkpoint()
            await asyncio.sleep(0.02)
        return steps

    async with app, serving(app, queues=[queue_name, other]), dashboard(app) as client:
        h = await crunch.enqueue(5_000)
        done = await crunch.options(queue=other).enqueue(1)
        assert await done.result(timeout=10) == 1
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        overview = await client.get("/")
        assert overview.status_code == 200
        assert queue_name in overview.text and other in overview.text
        page = await client.get(f"/tasks/{done.id}")
        assert page.status_code == 200 and '<span class="status s-succeeded">' in page.text
        await act(client, "task", id=h.id, action="pause", next=f"/tasks/{h.id}")
        assert await h.wait_for(TaskStatus.PAUSED, timeout=10) is TaskStatus.PAUSED
        metrics = (await client.get("/metrics")).text
        assert f'segue_queue_tasks{{queue="{queue_name}",status="paused"}} 1.0' in metrics
        assert f'segue_queue_tasks{{queue="{other}",status="succeeded"}} 1.0' in metrics
        await h.cancel()
