"""Queue: operations on one queue as a whole (pause, resume, counts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segue import _ops_actions
from segue._errors import ConfigurationError
from segue._keys import queue_of
from segue._options import check_limit_key
from segue._shards import check_shards

if TYPE_CHECKING:
    from collections.abc import Iterable

    from segue._broker import Broker
    from segue._client import Client
    from segue._keys import Keyspace
    from segue._state import KeyCount


class Queue:
    """One queue of an App: `await app.queue("default").pause()`.

    A paused queue starts nothing new (its tasks stay queued, due ones become queued as
    usual); tasks already running go on to their end. The flag is stored on the server, so
    it holds for every worker, including those started later, until `resume()`.

    `shards=N` declares the queue sharded ([Sharded queues](sharding.md)): `create()` stores
    the count on the server, and so does the first enqueue or worker of this process that
    meets a queue with no count stored. Every operation here covers all its shards.
    """

    __slots__ = ("_client", "name", "shards")

    def __init__(self, client: Client, name: str, shards: int | None = None) -> None:
        self._client = client
        self.name = name
        self.shards = None if shards is None else check_shards(shards)
        if self.shards is not None:
            client.shards_declared[name] = self.shards

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    async def _all(self) -> tuple[Broker, list[Keyspace]]:
        """The broker and the keyspaces of every shard a worker serves (one when unsharded),
        the count read from the server now."""
        broker = await self._client.broker()
        sc = await broker.shards.read(self.name)
        return broker, [broker.keyspace(name) for name in sc.serving(self.name)]

    async def create(self) -> int:
        """Store this queue's shard count (`shards=`, default 1) on the server unless it
        holds one already; returns the count in force (the server's, if it differs: a
        warning says so)."""
        broker = await self._client.broker()
        sc = await broker.shards.create(self.name, self.shards or 1)
        await broker.register_queue(self.name)
        return sc.count

    async def reshard(self, shards: int) -> int:
        """Make `shards` the count new enqueues use; tasks stay where they are and the old
        shards drain ([Resharding](sharding.md#resharding)). Returns the new count."""
        broker = await self._client.broker()
        # a paused queue's new shards start paused (the reshard reads the base's flag)
        sc = await broker.shards.reshard(self.name, shards)
        return sc.count

    async def shard_counts(self) -> dict[str, dict[str, int]]:
        """`counts()` of each shard, by shard name (the queue's own name for its base)."""
        broker, spaces = await self._all()
        return {ks.queue: await broker.reads.count(ks) for ks in spaces}

    async def pause(self) -> None:
        """Start nothing new from this queue until `resume()`. Returns once every shard is
        flagged: no task of the queue starts after it returned."""
        await self._set_paused(True)

    async def resume(self) -> None:
        """Let workers start this queue's tasks again (waking idle ones now)."""
        await self._set_paused(False)

    async def _set_paused(self, paused: bool) -> None:
        # the base first, then the shards of the count read after it: a reshard reads the
        # base's flag as it writes the new count, so whichever comes first, the new shards
        # end up flagged as the base is (Shards.reshard)
        broker = await self._client.broker()
        await broker.set_queue_paused(broker.keyspace(self.name), paused)
        broker, spaces = await self._all()
        for ks in spaces:
            if ks.queue != self.name:
                await broker.set_queue_paused(ks, paused)

    async def is_paused(self) -> bool:
        broker, spaces = await self._all()
        return all([await broker.reads.queue_paused(ks) for ks in spaces])

    async def set_weight(self, key: str | int, weight: int | None) -> None:
        """Give a limit key its share of turns in this queue: a key of weight 3 starts up to
        3 tasks per turn where others start 1 (whatever its `Limit(weight=)`). `None`
        removes the weight set here. Weights stay on the server until removed."""
        w: object = weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ConfigurationError(f"a key's weight must be an int >= 1 or None, not {weight!r}")
        broker, spaces = await self._all()
        for ks in spaces:
            await broker.set_key_weight(ks, check_limit_key(key), weight)

    async def key_counts(self, top: int = 10) -> list[KeyCount]:
        """The busiest limit keys of this queue, most waiting + running first (a bounded
        read: among the first 1,000 keys with work of each kind)."""
        broker, spaces = await self._all()
        rows = [row for ks in spaces for row in await broker.reads.key_counts(ks, top)]
        rows.sort(key=lambda r: -(r.waiting + r.running))
        return rows[:top]

    async def weights(self) -> dict[str, int]:
        """The per-key weights set with `set_weight`, by key."""
        broker, spaces = await self._all()
        return await broker.reads.key_weights(spaces[0])

    async def purge(
        self, reason: str = "purged by an operator", *, include_sleeping: bool = False
    ) -> int:
        """Cancel every task of this queue that waits to run (queued, scheduled, retrying,
        suspended, paused); running tasks go on, and so do tasks in a durable sleep
        (`ctx.sleep`) unless `include_sleeping`. Returns how many were cancelled."""
        broker, spaces = await self._all()
        return sum([await broker.purge(ks, reason, include_sleeping) for ks in spaces])

    async def retry_dead(
        self, ids: Iterable[str] | None = None, *, reason: str = "retried by an operator"
    ) -> int:
        """Queue this queue's dead letters again (`ids`: only those; default: all), each as
        `handle.retry()` does; returns how many were queued. One that cannot be (a unique
        task whose key another live task holds, one that ended because its dependency did)
        stays a dead letter."""
        broker, spaces = await self._all()
        wanted = None if ids is None else list(ids)
        queued = 0
        for ks in spaces:
            mine = None if wanted is None else [i for i in wanted if _in(i, ks)]
            if mine is None or mine:
                queued += (await _ops_actions.retry_dead(broker, ks, mine, reason))[0]
        return queued

    async def delete_dead(self, ids: Iterable[str] | None = None) -> int:
        """Delete this queue's dead letters (`ids`: only those; default: all), records and
        all, as `handle.delete()` does; returns how many records were deleted."""
        broker, spaces = await self._all()
        wanted = None if ids is None else list(ids)
        deleted = 0
        for ks in spaces:
            mine = None if wanted is None else [i for i in wanted if _in(i, ks)]
            if mine is None or mine:
                deleted += await _ops_actions.delete_dead(broker, ks, mine)
        return deleted

    async def counts(self) -> dict[str, int]:
        """How many tasks are queued, scheduled, running, paused, and ended by status."""
        broker, spaces = await self._all()
        total: dict[str, int] = {}
        for ks in spaces:
            for k, v in (await broker.reads.count(ks)).items():
                total[k] = total.get(k, 0) + v
        return total


def _in(task_id: str, ks: Keyspace) -> bool:
    return queue_of(task_id) == ks.queue
