"""A sharded queue on the 3-primary cluster, drained by worker processes (docs/sharding.md):
every task runs once, and the queue's keys live on every primary."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import redis.asyncio

from segue import App, TaskStatus
from segue._keys import queue_of
from segue._shards import shard_names
from tests._support import Engine, ledger
from tests._workers import ROOT, Fleet
from tests.apps import rolling
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


async def test_an_old_worker_serves_the_base_only_and_leaves_the_shards_to_new_ones(
    segue_valkey: Engine, queue_name: str, previous_release: Path
) -> None:
    """A worker of the previous release on a sharded queue (docs/sharding.md, "Rolling
    deploys"): it knows no shard, serves the queue's base, and takes nothing from a shard."""
    app = rolling.app  # this process imports the new code
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
    }
    try:
        with Fleet(
            "tests.apps.rolling:app", segue_valkey.url, queue_name, concurrency=2, lease=1.0
        ) as fleet:
            async with app:
                # enqueued before the count exists: into the base, as an old producer would
                in_base = await rolling.measure.enqueue("base")
                await app.queue(queue_name, shards=4).create()
                in_shards = [await rolling.measure.enqueue("x" * n) for n in range(8)]
                assert {queue_of(h.id) for h in in_shards} == set(shard_names(queue_name, 4))
                old = fleet.start(env=old_env)
                assert await in_base.result(timeout=20) == 4
                # the old worker keeps serving; the shards' tasks wait for a new one
                await fleet.ready(old)
                await asyncio.sleep(1.0)  # ten of the old worker's polls
                assert {await h.status() for h in in_shards} == {TaskStatus.QUEUED}
                new = fleet.start(env={"ROLLING_CODE": "new"})
                assert [await h.result(timeout=20) for h in in_shards] == list(range(8))
                infos = [await h.info() for h in in_shards]
                base_info = await in_base.info()
    finally:
        app.settings = saved
    assert base_info.worker_id.startswith(old.id_prefix)  # type: ignore[union-attr]
    assert all(i.tries == 1 and i.worker_id.startswith(new.id_prefix) for i in infos)  # type: ignore[union-attr]
