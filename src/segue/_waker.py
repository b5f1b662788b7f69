"""The waker: turns a wake signal on the worker's queues into a turn of its claim loop.

Waiting for work is a BLPOP on the queues' wake lists (an enqueue, or a finish that made
tasks ready, pushes a token), run here beside the claim loop so that finishing runs and
new work both wake it. It waits only while the worker has free slots and takes work: a
full or stopping worker leaves the tokens to the other workers.

On a cluster, one BLPOP cannot name keys of different slots, and the queues of a worker
(the shards of a sharded queue, docs/sharding.md) live in many: each then gets a BLPOP of
its own, side by side on the blocking client's connections, so a token on any of them
wakes the worker at once rather than when a rotation of short waits reaches it.
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
        woken: Callable[[Keyspace], object] | None = None,
    ) -> None:
        self._broker = broker
        self._keyspaces = list(keyspaces)
        self._idle = poll_seconds
        self._wanted = wanted
        self._wake = wake
        self._woken = woken  # told which queue's token arrived, when that is known
        self._stopping = False
        # a BLPOP under way ends within its timeout, or at once with stop()'s wake token
        self.stop_wait = poll_seconds + 2
        self._each: dict[Keyspace, asyncio.Task[None]] = {}  # a cluster's waits, by queue

    def add(self, keyspaces: Sequence[Keyspace]) -> None:
        """Wait on these queues too (the new shards of a reshard)."""
        self._keyspaces.extend(keyspaces)
        if self._each:
            for ks in keyspaces:
                self._each[ks] = asyncio.create_task(self._wait_on(ks), name="segue-waker")

    async def run(self) -> None:
        if self._broker.cluster and len(self._keyspaces) > 1:
            for ks in self._keyspaces:
                self._each[ks] = asyncio.create_task(self._wait_on(ks), name="segue-waker")
            try:
                while not self._stopping:
                    # a wait that failed for a bug, not the server, must not end unseen
                    done, _ = await asyncio.wait(self._each.values(), timeout=self._idle)
                    for task in done:
                        task.result()
            finally:
                each, self._each = list(self._each.values()), {}
                if not self._stopping:  # failed: the rerun starts its own waits
                    for task in each:
                        task.cancel()
                await asyncio.gather(*each, return_exceptions=True)
            return
        while not self._stopping:
            if not self._wanted():
                await asyncio.sleep(0.05)
                continue
            try:
                got = await self._broker.wait_for_work(self._keyspaces, self._idle)
            except BrokerError:
                await asyncio.sleep(0.5)
                continue
            if got is not None and self._woken is not None:
                self._woken(got)
            self._wake()
            # let the claim loop send its claim before the next BLPOP goes out: the claim
            # is what the woken work waits for
            await asyncio.sleep(0)

    async def _wait_on(self, ks: Keyspace) -> None:
        while not self._stopping:
            if not self._wanted():
                await asyncio.sleep(0.05)
                continue
            try:
                woken = await self._broker.wait_on(ks, self._idle)
            except BrokerError:
                await asyncio.sleep(0.5)
                continue
            if woken:
                if self._woken is not None:
                    self._woken(ks)
                self._wake()

    async def stop(self) -> None:
        # Cancelling a BLPOP in flight can stall redis-py's connection teardown; a wake
        # token ends the BLPOP at once instead (another worker woken by it finds nothing).
        self._stopping = True
        with contextlib.suppress(BrokerError):
            await self._broker.nudge(self._keyspaces)
