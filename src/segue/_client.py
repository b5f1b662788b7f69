"""Client: an App's way to its server, shared by all that reads or writes through the App.

It holds the settings, the broker (connected on first use, starting the embedded server of
the project when no URL is set) and the App's tasks by name (their annotated types decode
the records read). Handles, queues, event streams, the scheduler, the worker and the
dashboard take a Client, never the App: they sit below it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from segue._broker import Broker
from segue._durability import need_for

if TYPE_CHECKING:
    from collections.abc import Mapping

    from segue._codec import TaskTypes
    from segue._embedded import EmbeddedServer
    from segue._queries import Queries
    from segue._settings import Settings


class Client:
    """The settings, the connected broker (`connected`, None before the first use) and the
    tasks whose types decode records. `settings` may change until the first connection."""

    __slots__ = ("_embedded", "_lock", "connected", "settings", "shards_declared", "tasks")

    def __init__(self, settings: Settings, tasks: Mapping[str, TaskTypes]) -> None:
        self.settings = settings
        self.tasks = tasks
        self.connected: Broker | None = None
        # shard counts declared in the code (app.queue(name, shards=N)), stored at first use
        self.shards_declared: dict[str, int] = {}
        self._embedded: EmbeddedServer | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"<Client {self.settings.redis_url or 'embedded'}>"

    async def broker(self) -> Broker:
        """The connected broker, connecting (and starting the embedded server) on first use."""
        if self.connected is not None:
            return self.connected
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected is None:
                url = self.settings.redis_url
                if url is None:
                    from segue import _embedded

                    self._embedded = await asyncio.to_thread(
                        _embedded.acquire,
                        self.settings.home,
                        idle_timeout=self.settings.embedded_idle_seconds,
                    )
                    url = self._embedded.url
                broker = Broker(self.settings, url, self.shards_declared)
                try:
                    await broker.ping()
                    need = need_for((self.settings.durability,), self.settings)
                    if need is not None:
                        await broker.check_durability(need)
                except BaseException:
                    # a client that got part of the way (e.g. to the sentinels) holds sockets
                    await broker.close()
                    raise
                self.connected = broker
        return self.connected

    async def reads(self) -> Queries:
        """The read side of the connected broker (connecting on first use): what a reader
        (handles, the CLI, the dashboard, /metrics) is given instead of the broker."""
        return (await self.broker()).reads

    async def close(self) -> None:
        broker, self.connected = self.connected, None
        if broker is not None:
            await broker.close()
        embedded, self._embedded = self._embedded, None
        if embedded is not None:
            from segue import _embedded

            await asyncio.to_thread(_embedded.release, embedded)
