"""FinishBatch: the outcomes of a worker's ended runs, kept by queue until they are recorded.

Each run's end adds its outcome; the claim loop (_worker.py) takes them all for its next
round trip, one finish.lua call per queue in the pipeline of its claim. A round trip that
fails puts them back, and sending them again is safe: finish.lua is fenced by the run's
lease generation. A run's lease is renewed until its outcome's reply is read here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from segue._calls import parse_finish
from segue._errors import BrokerError
from segue._faults import faultpoint
from segue._outcome import Finished, FinishResult, Paused

if TYPE_CHECKING:
    from segue._broker import Broker
    from segue._forward import Forwarder
    from segue._keys import Keyspace
    from segue._lease import LeaseKeeper

log = logging.getLogger("segue.worker")


class FinishBatch:
    """The outcomes not yet recorded, by queue."""

    def __init__(self) -> None:
        # a run's end appends here directly (one per task: no call in between)
        self.pending: dict[Keyspace, list[Finished]] = {}

    def take(self) -> list[tuple[Keyspace, list[Finished]]]:
        outcomes, self.pending = self.pending, {}
        return list(outcomes.items())

    def restore(self, taken: list[tuple[Keyspace, list[Finished]]]) -> None:
        for ks, finished in taken:
            self.pending.setdefault(ks, []).extend(finished)

    def check(
        self,
        taken: list[tuple[Keyspace, list[Finished]]],
        replies: list[Any],
        lease: LeaseKeeper | None,
        forwarder: Forwarder | None,
    ) -> None:
        """Read the finish replies: the runs' leases are dropped, and an outcome refused
        (the run no longer held the task) is logged."""
        if taken:
            faultpoint("after_complete_before_ack")
        for (_, finished), reply in zip(taken, replies, strict=True):
            if lease is not None:
                lease.drop_all([(run.id, run.gen) for run in finished])
            for run, ok in zip(finished, parse_finish(reply), strict=True):
                if ok is FinishResult.FORWARD and forwarder is not None:
                    forwarder.poke()  # it left outbox entries for other queues
                if ok and run.outcome.__class__ is Paused:
                    faultpoint("after_pause_ack")
                if not ok:
                    log.warning(
                        "outcome of task %s discarded: this worker no longer holds its lease "
                        "(another worker took it over, or it ended)",
                        run.id,
                    )

    async def flush(
        self, broker: Broker, lease: LeaseKeeper | None, forwarder: Forwarder | None
    ) -> None:
        """Record what is pending now, without a claim (the shutdown's round trips)."""
        taken = self.take()
        if taken:
            try:
                replies = await broker.run_calls([broker.finish_call(k, f) for k, f in taken])
            except BrokerError:
                self.restore(taken)
                raise
            self.check(taken, replies, lease, forwarder)
