"""Pause, cancel and grace: carrying out operators' requests for the runs of one worker.

A request reaches the worker two ways: at once on its queues' control channels (the
subscriber service below), and with the next lease renewal's reply (_lease.py), which
covers a message lost while the subscriber reconnected. Either way it lands in
`Controller.on_request`, on the event loop. A cancel stops the run at its current await. A
pause lets it run to its next checkpoint (ctx.checkpoint() reads `RunControl.request`) and
interrupts it at its await only once the grace period ran out. A run whose lease this
worker lost is stopped too, recording nothing: another worker owns the task now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from segue._faults import faultpoint
from segue._outcome import Cancelled, Outcome, Paused, Requeued
from segue._query import Answerer
from segue._services import Service

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from segue._broker import Broker
    from segue._keys import Keyspace
    from segue._pubsub import Subscriber
    from segue._runner import Job

log = logging.getLogger("segue.worker")


class Controller:
    """Steers the runs of one worker (`running`, by task id) as requests arrive."""

    def __init__(self, running: dict[str, Job], pause_grace_seconds: float) -> None:
        self._running = running
        self._grace = pause_grace_seconds
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}

    def query_handlers(self, task_id: str) -> dict[str, Callable[..., Any]] | None:
        """The query handlers of this worker's run of the task (_query.py), None if it
        holds no run of it."""
        job = self._running.get(task_id)
        if job is None:
            return None
        return job.run.queries if job.run is not None else {}

    def on_message(self, data: bytes) -> None:
        command, _, task_id = data.decode().partition(" ")
        self.on_request(task_id, command)

    def on_request(self, task_id: str, command: str) -> None:
        """Carry out an operator's request for a task this worker runs."""
        job = self._running.get(task_id)
        if job is None or job.run is None or job.task is None:
            return
        if command in ("none", "resume"):
            if job.run.request == "pause":
                # the pause was withdrawn before the task reached a checkpoint
                log.info("task %s pause withdrawn; it goes on", task_id)
                job.run.request = None
                self.ended(task_id)
            return
        if job.run.request == command or job.run.request == "cancel":
            return
        job.run.request = command
        if command == "cancel":
            faultpoint("during_cancel")
            log.info("task %s cancel requested; stopping it", task_id)
            job.task.cancel()
        elif command == "pause":
            log.info("task %s pause requested; stops at its next checkpoint", task_id)
            self._grace_timers[task_id] = asyncio.get_running_loop().call_later(
                self._grace, self._interrupt, job
            )

    def ended(self, task_id: str) -> None:
        """The task's run ended (or its pause was withdrawn): no grace timer runs for it."""
        timer = self._grace_timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()

    def _interrupt(self, job: Job) -> None:
        """The grace period of a pause ran out without a checkpoint: stop at the await."""
        self._grace_timers.pop(job.id, None)
        if self._running.get(job.id) is job and job.task is not None and not job.task.done():
            log.info("task %s reached no checkpoint within the grace period; interrupting", job.id)
            job.task.cancel()

    def on_lost(self, runs: list[tuple[str, str]]) -> None:
        """The lease thread found these runs (task id, generation) no longer this worker's."""
        for task_id, gen in runs:
            job = self._running.get(task_id)
            if job is not None and job.gen == gen and job.task is not None:
                log.warning("lease of task %s lost; stopping this run", task_id)
                job.lost = True
                job.task.cancel()

    @staticmethod
    def stopped_outcome(job: Job) -> Outcome | None:
        """What a run interrupted from outside records: the request it obeyed, if any."""
        request = job.run.request if job.run is not None else None
        if job.lost:
            return None
        if request == "cancel":
            return Cancelled()
        if request == "pause":
            return Paused()
        return Requeued()


class ControlSubscriber(Service):
    """The worker's service listening on its queues' control channels: operators'
    requests go to the Controller, queries (_query.py) to the Answerer."""

    name = "subscriber"

    def __init__(
        self,
        broker: Broker,
        keyspaces: Sequence[Keyspace],
        controller: Controller,
        worker_id: str,
    ) -> None:
        self._broker = broker
        self._keyspaces = list(keyspaces)
        self._controller = controller
        self._answerer = Answerer(broker, worker_id, controller.query_handlers)
        self._subscriber: Subscriber | None = None

    def _on_message(self, data: bytes) -> None:
        if data.startswith(b"query "):
            self._answerer.on_message(data[6:].decode())
        else:
            self._controller.on_message(data)

    async def start(self) -> None:
        """Subscribed, and confirmed by the server, before the worker claims anything."""
        sub = self._subscriber = self._broker.subscriber()
        for ks in self._keyspaces:
            await sub.subscribe(ks.control_channel, self._on_message, listen=False)
        await sub.read_confirmations()

    async def add(self, keyspaces: Sequence[Keyspace]) -> None:
        """Listen on these queues too (the new shards of a reshard); the running listen()
        reads their messages."""
        self._keyspaces.extend(keyspaces)
        if self._subscriber is not None:
            for ks in keyspaces:
                await self._subscriber.subscribe(ks.control_channel, self._on_message, listen=False)

    async def run(self) -> None:
        assert self._subscriber is not None
        await self._subscriber.listen()

    async def close(self) -> None:
        await self._answerer.close()
        if self._subscriber is not None:
            await self._subscriber.close()
