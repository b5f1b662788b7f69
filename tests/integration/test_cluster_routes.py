"""A cluster's hot path: the script calls of one round go out on one pipelined connection
per primary (src/segue/_clusterconn.py), so a batch that spans queues on every primary is
one round trip per primary, and each call lands on the primary that owns its slot."""

from __future__ import annotations

from typing import Any

import redis
from redis.crc import key_slot

from segue import App
from tests._support import Engine


def _queue_per_primary(engine: Engine, prefix: str) -> list[str]:
    """A queue name of this test on each primary of the cluster fixture."""
    with redis.Redis(port=engine.ports[0]) as admin:
        ranges = [(r[0], r[1]) for r in admin.execute_command("CLUSTER", "SLOTS")]
    names = []
    for low, high in sorted(ranges):
        i = 0
        while not low <= key_slot(f"segue:{{{prefix}{i}}}:q".encode()) <= high:
            i += 1
        names.append(f"{prefix}{i}")
    return names


def _scripts_run(engine: Engine) -> list[int]:
    """Script calls each primary has run so far."""
    counts = []
    for port in engine.ports:
        with redis.Redis(port=port) as admin:
            stats: dict[str, Any] = admin.info("commandstats")
        counts.append(int(stats.get("cmdstat_evalsha", {}).get("calls", 0)))
    return counts


async def test_a_batch_over_every_primary_lands_on_each_queues_primary(
    segue_cluster: Engine, queue_name: str
) -> None:
    queues = _queue_per_primary(segue_cluster, queue_name.replace("_", ""))
    assert len(queues) == len(segue_cluster.ports) == 3
    app = App("test", redis_url=segue_cluster.url, queue=queues[0], poll_seconds=0.2)

    @app.task(name="routes.echo")
    async def echo(q: str, i: int) -> str:
        return f"{q}:{i}"

    async with app:
        # the first calls load the scripts (each primary answers NOSCRIPT once)
        first = await app.enqueue_many([echo.call(q, -1).options(queue=q) for q in queues])
        before = _scripts_run(segue_cluster)
        # one enqueue_many: one script call per queue, sent together
        handles = await app.enqueue_many(
            [echo.call(q, i).options(queue=q) for i in range(20) for q in queues]
        )
        after = _scripts_run(segue_cluster)
        # each primary ran its queue's enqueue (and nothing was sent to the wrong one: a
        # MOVED would have been resent through the cluster client, one more call)
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
        assert await app.drain(queues=queues) == 63
        assert [await h.result(timeout=10) for h in first + handles] == [
            f"{q}:-1" for q in queues
        ] + [f"{q}:{i}" for i in range(20) for q in queues]
