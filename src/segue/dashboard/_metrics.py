"""`/metrics`: queue gauges and counters read from the server at each scrape, in Prometheus
text format.

The numbers are the server's, not this process's: any number of dashboards (or none) can
run, and each scrape says what the queues hold right now. The counters (runs started, tasks
ended by status) are kept on the server by the scripts, so they survive task records
expiring and any process restarting; one scrape target covers the deployment, even with no
worker running. docs/dashboard.md has the table of every metric.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from segue import _ops_reads
from segue._errors import SegueError
from segue._heartbeat import list_workers
from segue._queue import Queue

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client.metrics_core import Metric

    from segue._client import Client
    from segue._state import KeyCount

# the statuses Queue.counts() reports, in the order they are exported
STATUSES = (
    "queued",
    "scheduled",
    "running",
    "waiting",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
)


class _Snapshot(Collector):
    """Metric families read once for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """What one read of a queue says: counts by status, paused, dead letters, readiness
    (ready tasks and the oldest one's age) and the counters the scripts keep."""

    counts: dict[str, int]
    paused: bool
    dead: int
    ready: _ops_reads.Readiness
    stats: dict[str, int]
    keys: list[KeyCount]
    # a sharded queue's readiness by shard (docs/sharding.md); empty when unsharded
    shards: dict[str, _ops_reads.Readiness] = field(default_factory=dict)


async def queue_snapshot(client: Client, name: str) -> QueueSnapshot:
    queue = Queue(client, name)
    broker = await client.broker()
    reads = broker.reads
    spaces = [reads.keyspace(s) for s in (await broker.shards.read(name)).serving(name)]
    counts, paused, keys = await asyncio.gather(
        queue.counts(), queue.is_paused(), queue.key_counts(TOP_KEYS)
    )
    dead = 0
    stats: dict[str, int] = {}
    shards: dict[str, _ops_reads.Readiness] = {}
    for ks in spaces:
        dead += await reads.dead_count(ks)
        for k, v in (await _ops_reads.stats(reads, ks)).items():
            stats[k] = stats.get(k, 0) + v
        shards[ks.queue] = await _ops_reads.readiness(reads, ks)
    ready = _ops_reads.Readiness(
        sum(r.ready for r in shards.values()),
        max(r.oldest_age for r in shards.values()),
        all(r.exact for r in shards.values()),
    )
    return QueueSnapshot(
        counts, paused, dead, ready, stats, keys, shards if len(spaces) > 1 else {}
    )


# Queues read at once: each read takes a few pooled connections, and redis-py's pool
# refuses more than 100 ("Too many connections"), which a server with many queues exceeded.
_READ_AT_ONCE = 16
# Queues read per scrape at most (in name order; the rest are counted in
# segue_queues_not_exported): a scrape costs the server work that grows with every queue,
# and /metrics is open to anyone who reaches the port.
MAX_QUEUES = 2000
# Limit keys exported per queue: the busiest (waiting + running), so that a queue with a
# million tenants does not make a million series
TOP_KEYS = 10
# Seconds a scrape is served again from memory: parallel or rapid scrapes cost one read.
CACHE_SECONDS = 5.0


class ScrapeCache:
    """The last rendered scrape, reused for CACHE_SECONDS; concurrent scrapes wait for
    the one read in flight instead of each starting their own."""

    def __init__(self, client: Client, seconds: float = CACHE_SECONDS) -> None:
        self.client = client
        self.seconds = seconds
        self._body = b""
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        async with self._lock:
            if time.monotonic() - self._at >= self.seconds:
                self._body = await render(self.client)
                self._at = time.monotonic()
            return self._body


async def queue_snapshots(client: Client, names: list[str]) -> list[QueueSnapshot]:
    """queue_snapshot of many queues, a bounded number at a time, in the order of `names`."""
    gate = asyncio.Semaphore(_READ_AT_ONCE)

    async def one(name: str) -> QueueSnapshot:
        async with gate:
            return await queue_snapshot(client, name)

    return list(await asyncio.gather(*(one(n) for n in names)))


async def render(client: Client) -> bytes:
    up = GaugeMetricFamily("segue_up", "1 when the dashboard reached the server")
    tasks = GaugeMetricFamily(
        "segue_queue_tasks", "Tasks of a queue by status", labels=["queue", "status"]
    )
    paused = GaugeMetricFamily(
        "segue_queue_paused", "1 when the queue is paused (starts nothing new)", labels=["queue"]
    )
    dead = GaugeMetricFamily(
        "segue_queue_dead_letters", "Tasks of the queue that failed for good", labels=["queue"]
    )
    ready = GaugeMetricFamily(
        "segue_queue_ready",
        "Tasks a worker could start now: queued or due, not held by a limit, queue not paused",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "segue_queue_oldest_ready_seconds",
        "How long the oldest ready task has waited since it became queued (0 when none)",
        labels=["queue"],
    )
    started = CounterMetricFamily(
        "segue_runs_started", "Runs started (claims) on the queue", labels=["queue"]
    )
    retried = CounterMetricFamily(
        "segue_runs_retried", "Runs that ended in a retry of their task", labels=["queue"]
    )
    ended = CounterMetricFamily(
        "segue_tasks_ended", "Tasks that reached a final status", labels=["queue", "status"]
    )
    key_waiting = GaugeMetricFamily(
        "segue_key_waiting",
        f"Tasks of a limit key waiting to start (the {TOP_KEYS} busiest keys of each queue)",
        labels=["queue", "limit", "key"],
    )
    key_running = GaugeMetricFamily(
        "segue_key_running",
        f"Tasks of a limit key running (the {TOP_KEYS} busiest keys of each queue)",
        labels=["queue", "limit", "key"],
    )
    shard_ready = GaugeMetricFamily(
        "segue_shard_ready",
        "Ready tasks of one shard of a sharded queue (the queue's own name: its base)",
        labels=["queue", "shard"],
    )
    shard_oldest = GaugeMetricFamily(
        "segue_shard_oldest_ready_seconds",
        "How long the oldest ready task of one shard of a sharded queue has waited",
        labels=["queue", "shard"],
    )
    omitted = GaugeMetricFamily(
        "segue_queues_not_exported", f"Queues beyond the first {MAX_QUEUES}, not read"
    )
    families: list[Metric] = [up]
    try:
        names = sorted(await (await client.reads()).queues())
        omitted.add_metric([], max(0, len(names) - MAX_QUEUES))
        names = names[:MAX_QUEUES]
        snapshots = await queue_snapshots(client, names)
    except SegueError:
        # an unreachable server is a value to alert on, not a failed scrape
        up.add_metric([], 0)
    else:
        up.add_metric([], 1)
        for name, snap in zip(names, snapshots, strict=True):
            for status in STATUSES:
                tasks.add_metric([name, status], snap.counts.get(status, 0))
            paused.add_metric([name], 1 if snap.paused else 0)
            dead.add_metric([name], snap.dead)
            ready.add_metric([name], snap.ready.ready)
            oldest.add_metric([name], snap.ready.oldest_age)
            started.add_metric([name], snap.stats["started"])
            retried.add_metric([name], snap.stats["retried"])
            for status in ("succeeded", "failed", "cancelled", "expired"):
                ended.add_metric([name, status], snap.stats[status])
            for k in snap.keys:
                key_waiting.add_metric([name, k.limit, k.key], k.waiting)
                key_running.add_metric([name, k.limit, k.key], k.running)
            for shard, r in snap.shards.items():
                shard_ready.add_metric([name, shard], r.ready)
                shard_oldest.add_metric([name, shard], r.oldest_age)
        families += [tasks, paused, dead, ready, oldest, started, retried, ended]
        families += [key_waiting, key_running, shard_ready, shard_oldest, omitted]
        alive = GaugeMetricFamily("segue_workers", "Workers whose heartbeat is alive")
        alive.add_metric([], sum(not w.stale for w in await list_workers(client)))
        families.append(alive)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)
