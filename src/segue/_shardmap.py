"""The shard counts of queues as this process knows them (docs/sharding.md).

The count lives on the server, in the queue's base meta hash (shards.lua), so that every
producer routes the same way. A process reads it at its first enqueue to (or worker start
on) a queue and again once `REFRESH_SECONDS` passed, so a reshard reaches every process
within that time; in between, routing costs a dict lookup. A count declared in the code
(`app.queue(name, shards=N)`) is stored by the first process that meets an unset one; a
declaration that disagrees with the server is warned about once, and the server wins.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from segue import _calls, _clock
from segue._errors import SegueError, ServerOutOfMemory
from segue._faults import faultpoint
from segue._shards import Router, ShardCount, check_shards, shard_names

if TYPE_CHECKING:
    from segue._transport import Transport

log = logging.getLogger("segue.shards")

REFRESH_SECONDS = 5.0
UNSHARDED = ShardCount()


class ReshardRefused(SegueError):
    """A reshard asked for while the previous one's old shards still drain."""


class ShardMap:
    """Counts by queue, read from the server and kept `REFRESH_SECONDS`."""

    def __init__(self, broker: Transport, declared: dict[str, int]) -> None:
        self._broker = broker
        self.declared = declared  # the Client's: app.queue(name, shards=N) calls
        self._known: dict[str, tuple[ShardCount, float]] = {}
        self._warned: set[str] = set()
        self.router = Router()

    def cached(self, queue: str) -> ShardCount | None:
        """The count as last read (None: never read); routing uses it without a round trip."""
        got = self._known.get(queue)
        return got[0] if got is not None else None

    def cached_serving(self, queue: str) -> tuple[str, ...]:
        """The shards a worker of `queue` serves, by the count last read (the queue alone
        before any read)."""
        return (self.cached(queue) or UNSHARDED).serving(queue)

    async def get(self, queue: str) -> ShardCount:
        """The count, read again when the last read is older than REFRESH_SECONDS."""
        got = self._known.get(queue)
        if got is not None and got[1] > _clock.monotonic():
            return got[0]
        return await self.read(queue)

    async def read(self, queue: str) -> ShardCount:
        want = self.declared.get(queue)
        sc: ShardCount | None = None
        if want is not None and want > 1:
            try:
                sc, _ = await self._call(queue, "create", want)
            except ServerOutOfMemory:
                # a full server refuses the write, not the read: workers must start all the
                # same (they are what frees it), and enqueues fail on their own writes
                log.warning("queue %s: the server is full; its declared count is not stored", queue)
        if sc is None:
            sc, _ = await self._call(queue, "read")
        if want is not None and want != sc.count and queue not in self._warned:
            self._warned.add(queue)
            log.warning(
                "queue %s is declared with shards=%d here, but the server holds %d shards: "
                "the server's count is used (change it with `segue queue reshard`)",
                queue,
                want,
                sc.count,
            )
        return sc

    async def create(self, queue: str, count: int) -> ShardCount:
        """Store `count` unless the server holds one already; the count in force."""
        check_shards(count)
        self.declared[queue] = count
        return await self.read(queue)

    async def reshard(self, queue: str, count: int) -> ShardCount:
        """Make `count` the queue's count; the old count's shards drain (docs/sharding.md).

        The new shards are held paused until the count is written: the script reads the
        base's pause flag in the same step, so a pause racing the reshard (it flags the base
        first, then reads the count) either sees the new count and flags the new shards
        itself, or is seen here and the new shards stay paused."""
        check_shards(count)
        before, _ = await self._call(queue, "read")
        if before.old:
            raise self._refused(queue, before.old)
        new = [] if count == before.count else [n for n in shard_names(queue, count) if n != queue]
        for shard in new:
            await self._hold(shard, "hold")
        faultpoint("after_reshard_hold")
        sc, done, paused = await self._reshard(queue, count)
        faultpoint("after_reshard_count")
        if done < 0 or not paused:
            for shard in new:
                await self.release(shard)
        if done < 0:
            raise self._refused(queue, sc.old)
        self.declared.pop(queue, None)
        return sc

    @staticmethod
    def _refused(queue: str, old: int) -> ReshardRefused:
        return ReshardRefused(
            f"queue {queue} is still draining the shards of its count before the last "
            f"reshard ({old}); reshard again once they are empty"
        )

    async def _hold(self, shard: str, action: str) -> None:
        """Flag a new shard paused for a reshard, or clear that flag (shards.lua)."""
        call = _calls.shards(self._broker.keyspace(shard), action)
        await self._broker.run_calls([call], retry=True)

    async def release(self, shard: str) -> None:
        """Clear a shard's pause flag if a reshard set it (`pr`); a pause's flag stays.
        Only once the base was read unpaused after the count naming the shard."""
        await self._hold(shard, "release")

    async def _reshard(self, queue: str, count: int) -> tuple[ShardCount, int, bool]:
        call = _calls.shards(self._broker.keyspace(queue), "reshard", count)
        reply = (await self._broker.run_calls([call], retry=True))[0]
        sc = self._keep(queue, int(reply[0]), int(reply[1]))
        return sc, int(reply[2]), len(reply) > 3 and int(reply[3]) == 1

    async def drained(self, queue: str, old: int) -> ShardCount:
        """Forget the old count `old` (its shards hold nothing unfinished any more)."""
        sc, _ = await self._call(queue, "drained", old)
        return sc

    async def _call(self, queue: str, action: str, count: int = 0) -> tuple[ShardCount, int]:
        call = _calls.shards(self._broker.keyspace(queue), action, count)
        reply = (await self._broker.run_calls([call], retry=True))[0]
        return self._keep(queue, int(reply[0]), int(reply[1])), int(reply[2])

    def _keep(self, queue: str, n: int, old: int) -> ShardCount:
        sc = ShardCount(n, old) if (n, old) != (1, 0) else UNSHARDED
        self._known[queue] = (sc, _clock.monotonic() + REFRESH_SECONDS)
        return sc
