"""A sharded queue on the 3-primary cluster, drained by worker processes (docs/sharding.md):
every task runs once, and the queue's keys live on every primary."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import redis.asyncio

from segue import App
from segue._keys import queue_of
from segue._shards import shard_names
from tests._support import Engine, ledger
from tests._workers import Fleet
from tests.apps import shards as shards_app

pytestmark = pytest.mark.slow


async def drain_sharded_queue(
    cluster: Engine, ledger_url: str, queue: str, tasks: int, shards: int = 16
) -> float:
    """`tasks` tasks from 2 producers into a queue of `shards` shards, drained by 3 worker
    processes; checks each ran once and the keys spread over the primaries. Seconds taken."""
    producers = [App("shards", redis_url=cluster.url, queue=queue) for _ in range(2)]
    for app in producers:
        app.task(name="shards.note")(shards_app.note.fn)
    async with producers[0] as first, producers[1] as second:
        assert await first.queue(queue, shards=shards).create() == shards
        with Fleet(
            "tests.apps.shards:app",
            cluster.url,
            queue,
            concurrency=16,
            env={"LEDGER_URL": ledger_url},
        ) as fleet:
            for _ in range(3):
                fleet.start()
            await fleet.ready()
            started = time.monotonic()

            async def produce(app: App, base: int) -> list[str]:
                note = app.registry["shards.note"]
                ids = []
                for i in range(0, tasks // 2, 500):
                    batch = [note.call(base + n) for n in range(i, min(i + 500, tasks // 2))]
                    ids += [h.id for h in await app.enqueue_many(batch)]
                return ids

            a, b = await asyncio.gather(produce(first, 0), produce(second, tasks))
            ids = a + b
            assert len(set(ids)) == tasks
            # round-robin from each producer: every shard holds its share
            per_shard = Counter(queue_of(i) for i in ids)
            assert set(per_shard) == set(shard_names(queue, shards))
            assert max(per_shard.values()) - min(per_shard.values()) <= 2

            deadline = time.monotonic() + 60 + tasks / 40  # seconds
            while True:
                rows = await ledger(ledger_url, queue)
                if len(rows) >= tasks or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            took = time.monotonic() - started
            runs = Counter(r[0] for r in rows)
            assert set(runs) == set(ids), f"{len(set(ids) - set(runs))} tasks never ran"
            assert set(runs.values()) == {1}
            # every worker process took work from the shards
            assert len({r[1] for r in rows}) == 3
            counts = await first.queue(queue).counts()
            assert counts["succeeded"] == tasks
        nodes = 0
        for port in cluster.ports:
            node = redis.asyncio.Redis(host="127.0.0.1", port=port)
            try:
                found = [k async for k in node.scan_iter(match=f"segue:{{{queue}#*", count=1000)]
            finally:
                await node.aclose()
            nodes += bool(found)
        assert nodes == len(cluster.ports) == 3
    return took


async def test_a_16_shard_queue_on_the_cluster_runs_each_task_once(
    segue_cluster: Engine, segue_valkey: Engine, queue_name: str
) -> None:
    await drain_sharded_queue(segue_cluster, segue_valkey.admin_url, queue_name, 2000)
