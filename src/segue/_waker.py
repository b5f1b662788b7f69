"""The waker: turns a wake signal on the worker's queues into a turn of its claim loop.

Waiting for work is a BLPOP on the queues' wake lists (an enqueue, or a finish that made
tasks ready, pushes a token), run here beside the claim loop so that finishing runs and
new work both wake it. It waits only while the worker has free slots and takes work: a
full or stopping worker leaves the tokens to the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from segue._errors import BrokerError
from segue._services import Service

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from segue._broker import Broker
    from segue._keys import Keyspace


class Waker(Service):
    """Calls `wake()` when work may be waiting, while `wanted()` says the worker takes it."""

    name = "waker"

    def __init__(
        self,
        broker: Broker,
        keyspaces: Sequence[Keyspace],
        poll_seconds: float,
        wanted: Callable[[], bool],
        wake: Callable[[], None],
    ) -> None:
        self._broker = broker
        self._keyspaces = list(keyspaces)
        self._idle = poll_seconds
        self._wanted = wanted
        self._wake = wake
        self._stopping = False
        # a BLPOP under way ends within its timeout, or at once with stop()'s wake token
        self.stop_wait = poll_seconds + 2

    async def run(self) -> None:
        while not self._stopping:
            if not self._wanted():
                await asyncio.sleep(0.05)
                continue
            try:
                await self._broker.wait_for_work(self._keyspaces, self._idle)
            except BrokerError:
                await asyncio.sleep(0.5)
                continue
            self._wake()
            # let the claim loop send its claim before the next BLPOP goes out: the claim
            # is what the woken work waits for
            await asyncio.sleep(0)

    async def stop(self) -> None:
        # Cancelling a BLPOP in flight can stall redis-py's connection teardown; a wake
        # token ends the BLPOP at once instead (another worker woken by it finds nothing).
        self._stopping = True
        with contextlib.suppress(BrokerError):
            await self._broker.nudge(self._keyspaces)
