"""What a worker does for sharded queues (docs/sharding.md): the shards it serves, the
order it claims from them in, and the watch that follows a reshard.

A worker serves each of its queues as the group of that queue's shards: the base (the
queue's own name), the shards of its count, and, while a reshard drains, those of the
count before. Claims go through a group in a rotation that starts after the shard that
filled the worker's free slots last time, so no shard waits behind the others for more
than one round. The groups themselves are served in the order given, as queues are.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from segue import _clock
from segue._errors import BrokerError
from segue._services import Service
from segue._shardmap import REFRESH_SECONDS
from segue._shards import ShardCount, shard_count_of, shard_names

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from segue._broker import Broker
    from segue._keys import Keyspace

log = logging.getLogger("segue.worker")

# how long old shards must stay empty before their count is forgotten: every process has
# read the count again by then, so none still routes a key by the old count
DRAIN_GRACE_SECONDS = 2 * REFRESH_SECONDS
_UNFINISHED = ("queued", "scheduled", "running", "paused", "waiting")


@dataclass
class ShardGroup:
    """One queue of a worker: its shards' keyspaces and the rotation's next start."""

    queue: str
    count: ShardCount
    spaces: list[Keyspace]
    start: int = 0
    drained_since: float | None = field(default=None, repr=False)

    def divisor(self, ks: Keyspace) -> int:
        """How many ways a task-wide limit is split for this shard (docs/sharding.md)."""
        n = shard_count_of(ks.queue)
        return n if n > 1 else self.count.count


async def shard_groups(broker: Broker, queues: list[str]) -> list[ShardGroup]:
    groups = []
    for q in queues:
        sc = await broker.shards.read(q)
        groups.append(ShardGroup(q, sc, [broker.keyspace(n) for n in sc.serving(q)]))
    return groups


class ClaimOrder:
    """The order a worker's claim rounds go through its groups' shards.

    A rotation per group, and the shards of sharded queues that found nothing to claim,
    left out of the rounds until a wake token on them, their next due task or
    `poll_seconds` (what a rate limit's refill waits for), so idle shards cost nothing."""

    def __init__(self, groups: list[ShardGroup], poll_seconds: float) -> None:
        self.groups = groups
        self._poll = poll_seconds
        self._sharded = {ks for g in groups if len(g.spaces) > 1 for ks in g.spaces}
        self._idle_until: dict[Keyspace, float] = {}

    def order(self, *, skip_idle: bool) -> list[Keyspace]:
        out: list[Keyspace] = []
        for g in self.groups:
            s = g.start % len(g.spaces)
            out += g.spaces[s:] + g.spaces[:s]
        if skip_idle and self._idle_until:
            now = _clock.monotonic()
            out = [ks for ks in out if self._idle_until.get(ks, 0.0) <= now] or out[:1]
        return out

    def stopped(self, last: Keyspace | None) -> None:
        """A round ended after claiming from `last` (None: it went through them all)."""
        for g in self.groups:
            if last is not None and last in g.spaces:
                g.start = g.spaces.index(last) + 1
            elif len(g.spaces) > 1:
                g.start += 1

    def claimed(self, ks: Keyspace, runs: int, next_due_ms: int, now_ms: int) -> None:
        """A claim from `ks` leased `runs` tasks; the next one of it is due at
        `next_due_ms` (-1: none)."""
        if ks not in self._sharded:
            return
        if runs:
            self._idle_until.pop(ks, None)
            return
        rest = self._poll
        if next_due_ms >= 0:
            rest = min(rest, max(0.0, (next_due_ms - now_ms) / 1000))
        self._idle_until[ks] = _clock.monotonic() + rest

    def woken(self, ks: Keyspace) -> None:
        """A wake token arrived on `ks`: back in the rounds."""
        self._idle_until.pop(ks, None)

    def added(self, group: ShardGroup) -> None:
        """The group gained shards (a reshard)."""
        if len(group.spaces) > 1:
            self._sharded.update(group.spaces)


class ShardWatcher(Service):
    """Reads the shard counts of the worker's queues every REFRESH_SECONDS: a reshard adds
    the new shards to what the worker serves (`added`), and once a reshard's old shards
    stayed empty for DRAIN_GRACE_SECONDS, forgets their count (keyed enqueues then route by
    the new one)."""

    name = "shard watcher"

    def __init__(
        self,
        broker: Broker,
        groups: list[ShardGroup],
        added: Callable[[ShardGroup, list[Keyspace]], Awaitable[None]],
    ) -> None:
        self._broker = broker
        self._groups = groups
        self._added = added

    async def run(self) -> None:
        unchecked = set(range(len(self._groups)))
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                for i, g in enumerate(self._groups):
                    await self.check(g, first=i in unchecked)
                    unchecked.discard(i)
            except BrokerError as exc:
                log.warning("could not read the shard counts (%s); retrying", exc)

    async def check(self, g: ShardGroup, first: bool = False) -> None:
        broker = self._broker
        sc = await broker.shards.read(g.queue)
        new = [broker.keyspace(n) for n in sc.serving(g.queue)]
        more = [ks for ks in new if ks not in g.spaces]
        g.count = sc
        if more:
            log.info("queue %s has %d shards now; serving them too", g.queue, sc.count)
            g.spaces.extend(more)
            await self._added(g, more)
        if more or (first and len(g.spaces) > 1):
            await self.release_held(g, more or g.spaces)
        if not sc.old:
            g.drained_since = None
            return
        old = [broker.keyspace(n) for n in shard_names(g.queue, sc.old)]
        left = 0
        for ks in old:
            counts = await broker.reads.count(ks)
            left += sum(counts[k] for k in _UNFINISHED)
        now = _clock.monotonic()
        if left:
            g.drained_since = None
        elif g.drained_since is None:
            g.drained_since = now
        elif now - g.drained_since >= DRAIN_GRACE_SECONDS:
            await broker.shards.drained(g.queue, sc.old)
            log.info("queue %s: the shards of its old count %d drained", g.queue, sc.old)
            g.drained_since = None

    async def release_held(self, g: ShardGroup, spaces: list[Keyspace]) -> None:
        """Clear the pause flags a reshard set on its new shards (`pr`), unless the queue is
        paused: a reshard that died before it released them would leave them paused for
        good. Checked for every shard once as the worker starts, and for new ones as they
        are found. The base's flag is read after the count that named the shards, so a
        pause racing this either flagged the base first (nothing released) or finds the
        shards in its count and clears `pr` as it flags them (the release keeps its flag)."""
        broker = self._broker
        if await broker.reads.queue_paused(broker.keyspace(g.queue)):
            return
        for ks in spaces:
            if ks.queue != g.queue:
                await broker.shards.release(ks.queue)
