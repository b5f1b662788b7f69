"""The reconciler: workers check that each queue's task records and structures agree.

Every transition keeps a task's record and the structures that index it (the queued lists,
the schedule, the leases, the paused and waiting indexes, a name's concurrency set) in step
within one script. They can only disagree when the data changed under segue: a server
restored from an older copy, keys deleted or evicted by hand. A task the structures lost
would then never run again, and an entry whose record moved on would hold a slot or be run
twice. So every worker, every `reconcile_seconds`, runs a pass over each of its queues:
a sequence of bounded steps (reconcile.lua, one slot per call, cluster-safe) that SCANs the
queue's keys and walks its structures with cursors kept here, and repairs what disagrees.
A pass of a queue whose keys fit in the cycle's budget ends within the cycle, so a
disagreement is found within two cycles of appearing; a bigger queue takes more cycles.

Rollback detection: each cycle also advances this worker's mark in the queue's generation
marker (generation.lua) and remembers it. A mark found lower than remembered, or gone,
means the server's data went back in time: the worker logs a warning naming the queue,
adds a `queue.rollback` event to the queue's events, calls the hooks' `on_rollback`, and
runs a whole pass of that queue at once.

Each repair is logged on the `segue.reconcile` logger and passed to the hooks' `on_repair`
(PrometheusHook counts them by queue and kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from segue import _calls
from segue._errors import BrokerError
from segue._hooks import call_hooks
from segue._services import Service
from segue._wire import text as _text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from segue._broker import Broker
    from segue._hooks import Hook
    from segue._keys import Keyspace

log = logging.getLogger("segue.reconcile")

STEP_ENTRIES = 200  # keys (SCAN COUNT) or entries one step looks at
CYCLE_STEPS = 50  # steps one queue gets per cycle; a pass longer than that goes on next cycle
GENERATION_KEEP_MS = 3_600_000  # a worker's mark lives this long after its last advance


@dataclasses.dataclass(frozen=True, slots=True)
class Repair:
    """One disagreement found and repaired."""

    queue: str
    kind: str
    task_id: str


@dataclasses.dataclass
class _Progress:
    phase: str = "keys"
    cursor: str = "0"
    gen: int = 0  # the mark this worker last wrote in the queue's generation marker
    prune: str = "0"


class Reconciler(Service):
    """Runs the reconcile passes and the rollback check of one worker's queues."""

    name = "reconciler"

    def __init__(
        self,
        broker: Broker,
        worker_id: str,
        queues: Sequence[Keyspace],
        hooks: Sequence[Hook] = (),
    ) -> None:
        self._broker = broker
        self._worker_id = worker_id
        self._queues = list(queues)
        self._hooks = hooks
        self.interval = broker.settings.reconcile_seconds
        self._lease_ms = int(broker.settings.lease_seconds * 1000)
        self._keep_ms = max(GENERATION_KEEP_MS, int(self.interval * 10_000))
        self._progress = {ks: _Progress() for ks in self._queues}
        self._failing = False
        self.cycles = 0  # cycles completed
        self.rollbacks = 0  # rollbacks this worker detected
        self.repairs: list[Repair] = []  # the most recent repairs (at most 1,000 kept)

    def add(self, queues: Sequence[Keyspace]) -> None:
        """Reconcile these queues too (the new shards of a reshard)."""
        for ks in queues:
            self._queues.append(ks)
            self._progress[ks] = _Progress()

    async def run(self) -> None:
        while True:
            try:
                await self.cycle()
            except BrokerError as exc:
                if not self._failing:  # once per outage: the worker reports it too
                    log.warning("reconcile cycle failed (%s); retrying", exc)
                self._failing = True
            else:
                self._failing = False
            await asyncio.sleep(self.interval)

    async def cycle(self) -> list[Repair]:
        """The rollback check and one budget of reconcile steps, for every queue."""
        found: list[Repair] = []
        for ks in self._queues:
            if await self.check_generation(ks):
                found += await self.run_pass(ks, steps=None)
            else:
                found += await self.run_pass(ks, steps=CYCLE_STEPS)
        self.cycles += 1
        return found

    async def check_generation(self, ks: Keyspace) -> bool:
        """Advance this worker's mark; True (after a warning) when it had gone back."""
        p = self._progress[ks]
        call = _calls.generation(ks, self._worker_id, p.gen, self._keep_ms, p.prune)
        reply = await self._broker.run_calls([call], retry=True)
        back, n, prune, found = reply[0]
        remembered, p.gen, p.prune = p.gen, int(n), _text(prune)
        if not int(back):
            return False
        self.rollbacks += 1
        log.warning(
            "queue %s: the server's data went back in time (this worker's generation mark "
            "is %s, it had written %d): it was restored from an older copy or lost writes; "
            "reconciling the queue now",
            ks.queue,
            int(found) or "gone",
            remembered,
        )
        await call_hooks(self._hooks, "on_rollback", ks.queue)
        with contextlib.suppress(BrokerError):
            # the set of known queues lives in another slot and may have gone back too
            self._broker.forget_queue(ks.queue)
            await self._broker.register_queue(ks.queue)
        p.phase, p.cursor = "keys", "0"  # a whole pass, from the start
        return True

    async def run_pass(self, ks: Keyspace, *, steps: int | None) -> list[Repair]:
        """Steps of the queue's pass until it ends or `steps` ran (None: to its end). A
        pass that ended starts again at the next call."""
        p = self._progress[ks]
        if p.phase == "done":
            p.phase, p.cursor = "keys", "0"
        found: list[Repair] = []
        taken = 0
        while p.phase != "done" and (steps is None or taken < steps):
            call = _calls.reconcile(ks, self._lease_ms, STEP_ENTRIES, p.phase, p.cursor)
            reply = await self._broker.run_calls([call], retry=True)
            taken += 1
            phase, cursor, *pairs = (_text(x) for x in reply[0])
            p.phase, p.cursor = phase, cursor
            found.extend(Repair(ks.queue, pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))
        for repair in found:
            log.warning(
                "queue %s: repaired %s of task %s", repair.queue, repair.kind, repair.task_id
            )
            await call_hooks(self._hooks, "on_repair", repair.queue, repair.kind, repair.task_id)
        self.repairs = (self.repairs + found)[-1000:]
        return found
