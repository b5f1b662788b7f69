"""Count every event of a queue's stream while a fault test runs.

A queue keeps only about its last 10,000 events, so a full-size run read after the drain
would have lost its first events, and with them any duplicate among them. The tally reads
the stream as it grows, from an admin connection (redis-py's retries ride over the faults).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import redis

from segue import _cancel
from segue._keys import Keyspace


class EventTally:
    """`counts[task_id][kind]`: how often each task's events of each kind were written."""

    def __init__(self, admin: Any, queue: str, prefix: str = "segue") -> None:
        self._admin = admin
        self._key = Keyspace(prefix, queue).events
        self._start = "-"
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """Count what was added since the last read."""
        while True:
            batch = await self._admin.xrange(self._key, min=self._start, count=5_000)
            if not batch:
                return
            for _, fields in batch:
                self.counts[fields[b"id"].decode()][fields[b"e"].decode()] += 1
            self._start = "(" + batch[-1][0].decode()  # after the last entry counted

    async def _follow(self, interval: float) -> None:
        while True:
            with contextlib.suppress(redis.ConnectionError):
                await self.read()
            await asyncio.sleep(interval)

    async def __aenter__(self) -> EventTally:
        self._task = asyncio.create_task(self._follow(0.2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            # redis-py can swallow the cancel of a call cut by CLIENT KILL (Python 3.11's
            # wait_for): cancelled again until it ends, not followed on for ever
            await _cancel.cancel_and_wait(self._task)
        await self.read()

    def of(self, task_id: str, kind: str) -> int:
        return self.counts[task_id][kind] if task_id in self.counts else 0
