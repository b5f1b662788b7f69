"""Queue: operations on one queue as a whole (pause, resume, counts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segue import _ops_actions
from segue._errors import ConfigurationError
from segue._options import check_limit_key

if TYPE_CHECKING:
    from collections.abc import Iterable

    from segue._client import Client
    from segue._state import KeyCount


class Queue:
    """One queue of an App: `await app.queue("default").pause()`.

    A paused queue starts nothing new (its tasks stay queued, due ones become queued as
    usual); tasks already running go on to their end. The flag is stored on the server, so
    it holds for every worker, including those started later, until `resume()`.
    """

    __slots__ = ("_client", "name")

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    async def pause(self) -> None:
        """Start nothing new from this queue until `resume()`."""
        broker = await self._client.broker()
        await broker.set_queue_paused(broker.keyspace(self.name), True)

    async def resume(self) -> None:
        """Let workers start this queue's tasks again (waking idle ones now)."""
        broker = await self._client.broker()
        await broker.set_queue_paused(broker.keyspace(self.name), False)

    async def is_paused(self) -> bool:
        reads = await self._client.reads()
        return await reads.queue_paused(reads.keyspace(self.name))

    async def set_weight(self, key: str | int, weight: int | None) -> None:
        """Give a limit key its share of turns in this queue: a key of weight 3 starts up to
        3 tasks per turn where others start 1 (whatever its `Limit(weight=)`). `None`
        removes the weight set here. Weights stay on the server until removed."""
        w: object = weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ConfigurationError(f"a key's weight must be an int >= 1 or None, not {weight!r}")
        broker = await self._client.broker()
        await broker.set_key_weight(broker.keyspace(self.name), check_limit_key(key), weight)

    async def key_counts(self, top: int = 10) -> list[KeyCount]:
        """The busiest limit keys of this queue, most waiting + running first (a bounded
        read: among the first 1,000 keys with work of each kind)."""
        reads = await self._client.reads()
        return await reads.key_counts(reads.keyspace(self.name), top)

    async def weights(self) -> dict[str, int]:
        """The per-key weights set with `set_weight`, by key."""
        reads = await self._client.reads()
        return await reads.key_weights(reads.keyspace(self.name))

    async def purge(
        self, reason: str = "purged by an operator", *, include_sleeping: bool = False
    ) -> int:
        """Cancel every task of this queue that waits to run (queued, scheduled, retrying,
        suspended, paused); running tasks go on, and so do tasks in a durable sleep
        (`ctx.sleep`) unless `include_sleeping`. Returns how many were cancelled."""
        broker = await self._client.broker()
        return await broker.purge(broker.keyspace(self.name), reason, include_sleeping)

    async def retry_dead(
        self, ids: Iterable[str] | None = None, *, reason: str = "retried by an operator"
    ) -> int:
        """Queue this queue's dead letters again (`ids`: only those; default: all), each as
        `handle.retry()` does; returns how many were queued. One that cannot be (a unique
        task whose key another live task holds, one that ended because its dependency did)
        stays a dead letter."""
        broker = await self._client.broker()
        queued, _ = await _ops_actions.retry_dead(broker, broker.keyspace(self.name), ids, reason)
        return queued

    async def delete_dead(self, ids: Iterable[str] | None = None) -> int:
        """Delete this queue's dead letters (`ids`: only those; default: all), records and
        all, as `handle.delete()` does; returns how many records were deleted."""
        broker = await self._client.broker()
        return await _ops_actions.delete_dead(broker, broker.keyspace(self.name), ids)

    async def counts(self) -> dict[str, int]:
        """How many tasks are queued, scheduled, running, paused, and ended by status."""
        reads = await self._client.reads()
        return await reads.count(reads.keyspace(self.name))
