"""A reshard killed between its writes (segue._faults.RESHARD_POINTS): the process running
`segue queue reshard` is SIGKILLed after it held the new shards paused (the count is not
written), or after it wrote the count (the new shards are not released yet). Either way
no task is lost, every task runs once, no key lives in two shards, and the new shards do
not stay paused: workers release a reshard's held shards of a queue that is not paused
(ShardWatcher.release_held), within one refresh of starting or of finding them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from segue import App, Context
from segue._faults import RESHARD_POINTS
from segue._keys import queue_of
from segue._shards import shard_names
from tests._support import Engine
from tests.integration.conftest import serving

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

ROOT = Path(__file__).resolve().parents[2]


def killed_reshard(url: str, queue: str, count: int, point: str) -> int:
    """`segue queue reshard` in a process of its own, killed at `point`: its exit code."""
    env = {**os.environ, "SEGUE_FAULTPOINT": f"{point}:kill", "SEGUE_FAULTPOINT_ONCE": "1"}
    args = ["queue", "reshard", queue, str(count), "--url", url]
    done = subprocess.run(
        [sys.executable, "-m", "segue", *args], capture_output=True, timeout=60, cwd=ROOT, env=env
    )
    return done.returncode


@pytest.mark.parametrize("point", RESHARD_POINTS)
async def test_a_reshard_killed_between_its_writes_loses_nothing(
    segue_valkey: Engine, queue_name: str, point: str
) -> None:
    app = App("reshard-crash", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)
    ran: Counter[str] = Counter()

    @app.task
    async def job(ctx: Context, n: int) -> int:
        ran[ctx.task_id] += 1
        return n

    async with app:
        q = app.queue(queue_name, shards=2)
        await q.create()
        before = [await job.enqueue(i) for i in range(20)]
        keyed = [await job.options(key=f"k{i}").enqueue(i) for i in range(6)]
        assert killed_reshard(segue_valkey.url, queue_name, 4, point) == -9
        broker = await app._client.broker()
        sc = await broker.shards.read(queue_name)
        written = point != "after_reshard_hold"
        assert (sc.count, sc.old) == ((4, 2) if written else (2, 0))
        after = [await job.enqueue(i) for i in range(20)]
        if written:
            # new enqueues go to the new shards, held paused by the dead reshard
            assert {queue_of(h.id) for h in after} == set(shard_names(queue_name, 4))
        # the same keys: the same tasks, in the same shards (by the old count)
        again = [await job.options(key=f"k{i}").enqueue(i) for i in range(6)]
        assert [h.id for h in again] == [h.id for h in keyed]
        async with serving(app, concurrency=8):
            # the worker releases the held shards within a refresh (5 s) of starting
            results = [await h.result(timeout=30) for h in [*before, *keyed, *after]]
        assert results == [*range(20), *range(6), *range(20)]
        assert len(ran) == 46 and set(ran.values()) == {1}
        assert not await q.is_paused()

        async def paused(names: tuple[str, ...]) -> list[bool]:
            return [await broker.reads.queue_paused(broker.keyspace(s)) for s in names]

        assert not any(await paused(sc.serving(queue_name)))
        if not written:
            # the shards held for a count never written stay held (no task is routed there)
            # until the reshard is asked again: it goes through, and they run tasks
            assert all(await paused(shard_names(queue_name, 4)))
            assert await q.reshard(4) == 4
            assert not any(await paused(shard_names(queue_name, 4)))
            h = await job.enqueue(99)
            assert queue_of(h.id) in shard_names(queue_name, 4)
            async with serving(app):
                assert await h.result(timeout=15) == 99
