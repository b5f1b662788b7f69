"""Queue: operations on one queue as a whole (pause, resume, counts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segue._client import Client


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
        broker = await self._client.broker()
        return await broker.queue_paused(broker.keyspace(self.name))

    async def purge(self, reason: str = "purged by an operator") -> int:
        """Cancel every task of this queue that waits to run (queued, scheduled, retrying,
        suspended, paused); running tasks go on. Returns how many were cancelled."""
        broker = await self._client.broker()
        return await broker.purge(broker.keyspace(self.name), reason)

    async def counts(self) -> dict[str, int]:
        """How many tasks are queued, scheduled, running, paused, and ended by status."""
        broker = await self._client.broker()
        return await broker.count(broker.keyspace(self.name))
