"""Worker: claims tasks in batches, runs them concurrently, records outcomes in batches.

One loop does all server writes of the hot path: each round trip carries the outcomes that
piled up since the last one (finish.lua) and a claim for the free slots (claim.lua), in one
pipeline. Runs are asyncio tasks; sync functions go to a thread pool. Lease renewal lives
in its own thread (_lease.py). Waiting for work is a BLPOP on the queues' wake lists, run
by a side task so that finishing runs and new work both wake the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ulid import ULID

from segue import _cancel, _clock
from segue._broker import server_unreachable
from segue._context import PauseRequested, RunControl
from segue._errors import BrokerError, ServerOutOfMemory
from segue._faults import faultpoint
from segue._forward import Forwarder
from segue._heartbeat import Heartbeat
from segue._keys import Keyspace, check_queue_name
from segue._lease import LeaseKeeper
from segue._lifespan import open_all
from segue._options import parse_rate
from segue._reconcile import Reconciler
from segue._runner import Job, Outcome, attempt
from segue._scheduler import Scheduler
from segue._settings import server_label

if TYPE_CHECKING:
    from segue._app import App
    from segue._broker import Broker

log = logging.getLogger("segue.worker")


class Worker:
    """Runs the tasks of an App from one or more queues (served in the order given)."""

    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pid_file: str | Path | None = None,
    ) -> None:
        self.app = app
        self.pid_file = Path(pid_file) if pid_file is not None else None
        # set once the worker is registered and about to take work (segue.testing waits on it)
        self.ready = asyncio.Event()
        self.queues = [check_queue_name(q) for q in (queues or [app.settings.queue])]
        self.concurrency = concurrency or app.settings.concurrency
        self.id = f"{socket.gethostname()}-{os.getpid()}-{str(ULID())[-6:]}"
        self._running: dict[str, Job] = {}
        self._outcomes: dict[Keyspace, list[Any]] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._force = False
        self._finished = 0
        self._lease: LeaseKeeper | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_due: float | None = None
        self._broker: Any = None
        self._grace_timers: dict[str, asyncio.TimerHandle] = {}
        self._resources: dict[Any, Any] = {}
        self._control: Any = None
        # the token of each queue's next claim: kept until a claim's reply arrives, so that
        # a claim resent after a dropped connection gets back what the lost one leased
        self._claim_tokens: dict[Keyspace, str] = {}
        self._answered: dict[Keyspace, str] = {}  # the last answered token, to forget
        self._down_since: float | None = None  # when round trips began to fail
        self._down_said = 0.0  # when the outage was last logged
        # an outage is logged when it starts, then every two heartbeats (10 s by default)
        self._outage_log_seconds = 2 * app.settings.heartbeat_seconds
        # the queues' reconciler while serving (not in a burst), see _reconcile.py
        self.reconciler: Reconciler | None = None
        # moves the queues' outbox entries to other queues (_forward.py)
        self._forwarder: Forwarder | None = None

    def __repr__(self) -> str:
        return (
            f"<Worker {self.id} [running {len(self._running)}/{self.concurrency}, "
            f"queues {','.join(self.queues)}]>"
        )

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def finished(self) -> int:
        """Runs this worker finished (however they ended)."""
        return self._finished

    def stop(self) -> None:
        """Graceful stop: take no new work, let running tasks finish within the grace period.
        A second call stops at once, requeueing what still runs."""
        if self._stopping:
            self._force = True
        self._stopping = True
        self._changed.set()

    async def run(self, *, install_signal_handlers: bool = False) -> int:
        """Serve until stop() (or SIGTERM/SIGINT); returns the number of finished runs."""
        return await self._serve(burst=False, horizon=0.0, signals=install_signal_handlers)

    async def run_until_idle(self, *, horizon: float = 0.0) -> int:
        """Serve until nothing is queued, running, or due within `horizon` seconds."""
        return await self._serve(burst=True, horizon=horizon, signals=False)

    # --- the loop --------------------------------------------------------------------------

    async def _serve(self, *, burst: bool, horizon: float, signals: bool) -> int:
        # resources open before the first task and close after the last one
        async with contextlib.AsyncExitStack() as stack:
            self._resources.update(await open_all(self.app.lifespans, stack))
            return await self._serve_open(burst=burst, horizon=horizon, signals=signals)

    async def _connect(self) -> Broker:
        """The App's broker; a server that does not answer yet (restarting, or started
        after the workers) is waited for, so a supervisor's restart does not race it."""
        delay = 0.1
        since: float | None = None
        said = 0.0
        while True:
            try:
                broker = await self.app.broker()
            except BrokerError as exc:
                if self._stopping or not server_unreachable(exc):
                    raise
                now = _clock.monotonic()
                if since is None:
                    since = said = now
                    log.warning("%s; the worker waits for it", exc)
                elif now - said >= self._outage_log_seconds:
                    said = now
                    where = server_label(self.app.settings)
                    log.warning("still waiting for %s (%.0f s)", where, now - since)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            if since is not None:
                log.warning("server reachable again after %.1f s", _clock.monotonic() - since)
            return broker

    async def _serve_open(self, *, burst: bool, horizon: float, signals: bool) -> int:
        broker = await self._connect()
        keyspaces = [broker.keyspace(q) for q in self.queues]
        try:
            for q in self.queues:
                await broker.register_queue(q)
            await self._publish_limits(broker, keyspaces)
        except ServerOutOfMemory as exc:
            # workers are what frees a full server: they must start all the same
            log.warning(
                "worker %s starts without registering its queues or publishing its task "
                "limits (the limits stored before stay in force): %s",
                self.id,
                exc,
            )
        loop = asyncio.get_running_loop()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="segue-task"
        )
        self._broker = broker
        self._lease = LeaseKeeper(
            broker.url,
            self.app.settings,
            self.id,
            lambda ids: loop.call_soon_threadsafe(self._on_lost, ids),
            lambda task_id, cmd: loop.call_soon_threadsafe(self._on_request, task_id, cmd),
        )
        self._lease.start()
        self._control = broker.subscriber()
        for ks in keyspaces:
            await self._control.subscribe(ks.control_channel, self._on_control_message)
        waker = asyncio.create_task(self._wake_loop(broker, keyspaces), name="segue-waker")
        # cron ticks fire from every serving worker; a burst (drain) only empties queues
        scheduler = None if burst else Scheduler(self.app, broker)
        if scheduler is not None:
            scheduler.start()
        heartbeat = Heartbeat(self, broker, self.pid_file)
        # a burst only empties queues; a serving worker also repairs what a restore broke
        self.reconciler = None if burst else Reconciler(broker, self.id, keyspaces, self.app.hooks)
        # serving, it forwards on its own; a burst forwards from its loop (see _loop)
        self._forwarder = Forwarder(broker, keyspaces, self.app.settings.poll_seconds)
        log.info(
            "worker %s started queues=%s concurrency=%d", self.id, self.queues, self.concurrency
        )
        try:
            await heartbeat.start()
            if self.reconciler is not None:
                self.reconciler.start()
            if not burst:
                self._forwarder.start()
            self.ready.set()
            await self._loop(broker, keyspaces, burst=burst, horizon=horizon)
            await self._shutdown(broker)
        finally:
            self._stopping = True
            if scheduler is not None:
                await scheduler.stop()
            await heartbeat.stop()
            if self.reconciler is not None:
                await self.reconciler.stop()
            await self._forwarder.stop()
            await self._stop_waker(broker, keyspaces, waker)
            with contextlib.suppress(BrokerError):
                await broker.forget_claims({**self._answered, **self._claim_tokens})
            self._lease.stop()
            await self._control.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info("worker %s stopped after %d runs", self.id, self._finished)
        return self._finished

    async def _loop(
        self, broker: Broker, keyspaces: list[Keyspace], *, burst: bool, horizon: float
    ) -> None:
        settings = self.app.settings
        forwarder = self._forwarder
        assert forwarder is not None
        while not self._stopping:
            self._changed.clear()
            if burst and forwarder.poked:
                await self._forward(forwarder)
            free = self.concurrency - len(self._running)
            taken = self._take_outcomes()
            claim_from = keyspaces[0] if free > 0 else None
            # a claim right after a queue's finish takes what the finish made ready: that
            # finish need not wake other workers for it (the claim does, if more is left)
            calls = [
                broker.finish_call(ks, fields, claim_follows=ks is claim_from)
                for ks, fields in taken
            ]
            n_finish = len(calls)
            if claim_from is not None:
                calls.append(
                    broker.claim_call(
                        claim_from,
                        self.id,
                        free,
                        *self._tokens(claim_from),
                        holds_last=self._holds_last(),
                    )
                )
            try:
                replies = await broker.run_calls(calls)
            except BrokerError as exc:
                self._restore(taken)
                await self._server_down(exc)
                continue
            if self._down_since is not None:
                log.warning(
                    "server reachable again after %.1f s", _clock.monotonic() - self._down_since
                )
                self._down_since = None
            claimed = 0
            backlog = 0
            now_ms = 0
            if claim_from is not None:
                self._next_due = None  # this round's claims say what is due next, in any queue
                # leases first: the renewal thread must know the new tasks before anything
                # else of this round runs (a stall there would let their leases lapse)
                claimed, backlog, now_ms = self._start_claimed(claim_from, replies[n_finish])
            self._check_finished(taken, replies[:n_finish])
            if claim_from is not None:
                # later queues are served only with what the earlier ones left free
                for ks in keyspaces[1:]:
                    free = self.concurrency - len(self._running)
                    if free <= 0:
                        break
                    call = broker.claim_call(
                        ks, self.id, free, *self._tokens(ks), holds_last=self._holds_last()
                    )
                    try:
                        reply = (await broker.run_calls([call]))[0]
                    except BrokerError as exc:
                        await self._server_down(exc)
                        break
                    c, b, _ = self._start_claimed(ks, reply)
                    claimed += c
                    backlog += b
            if claimed and self.concurrency > len(self._running):
                continue
            if self._outcomes:
                continue
            if (
                burst
                and not self._running
                and claim_from is not None
                and backlog == 0
                and (self._next_due is None or self._next_due > now_ms + horizon * 1000)
                and not await self._any_retrying(broker, keyspaces)
            ):
                # idle: what the outboxes still hold may make work here (or elsewhere)
                if await self._forward(forwarder):
                    continue
                return
            wait = settings.poll_seconds
            if self._next_due is not None and now_ms:
                wait = max(0.0, min(wait, (self._next_due - now_ms) / 1000))
            if burst and self._running:
                wait = min(wait, 0.05)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    async def _forward(self, forwarder: Forwarder) -> int:
        """A burst's pass over its outboxes; how many entries it moved."""
        try:
            return await forwarder.run_once()
        except BrokerError as exc:
            await self._server_down(exc)
            return 1

    async def _publish_limits(self, broker: Broker, keyspaces: list[Keyspace]) -> None:
        """The claim script enforces the limits of the tasks this worker's code declares."""
        rates: dict[str, str] = {}
        concurrency: dict[str, int] = {}
        clear: tuple[list[str], list[str]] = ([], [])
        for name, task in self.app.registry.items():
            opts = task.opts
            if opts.rate_limit is not None:
                per_ms = parse_rate(opts.rate_limit, name) / 1000
                rates[name] = f"{per_ms!r} {opts.rate_burst}"
            else:
                clear[0].append(name)
            if opts.concurrency is not None:
                concurrency[name] = opts.concurrency
            else:
                clear[1].append(name)
        for ks in keyspaces:
            await broker.set_limits(ks, rates, concurrency, clear)

    async def _any_retrying(self, broker: Broker, keyspaces: list[Keyspace]) -> bool:
        if self._next_due is None:
            return False
        for ks in keyspaces:
            if await broker.has_retrying(ks):
                return True
        return False

    def _take_outcomes(self) -> list[tuple[Keyspace, list[Any]]]:
        outcomes, self._outcomes = self._outcomes, {}
        return list(outcomes.items())

    def _restore(self, taken: list[tuple[Keyspace, list[Any]]]) -> None:
        for ks, fields in taken:
            self._outcomes.setdefault(ks, []).extend(fields)

    def _check_finished(self, taken: list[tuple[Keyspace, list[Any]]], replies: list[Any]) -> None:
        if taken:
            faultpoint("after_complete_before_ack")
        for (_, fields), reply in zip(taken, replies, strict=True):
            for i, ok in enumerate(reply):
                if self._lease is not None:
                    self._lease.drop(fields[i * 5], fields[i * 5 + 1])
                if ok == 2 and self._forwarder is not None:
                    self._forwarder.poke()  # it left outbox entries for other queues
                if ok and fields[i * 5 + 2] == "paused":
                    faultpoint("after_pause_ack")
                if not ok:
                    log.warning(
                        "outcome of task %s discarded: this worker no longer holds its lease "
                        "(another worker took it over, or it ended)",
                        fields[i * 5],
                    )

    def _holds_last(self) -> bool:
        """Whether a task on its last delivery runs here (claim.lua gives no second one)."""
        return any(job.last_delivery for job in self._running.values())

    def _tokens(self, ks: Keyspace) -> tuple[str, str]:
        """This claim's token (the unanswered one, if any) and the last answered one."""
        token = self._claim_tokens.get(ks)
        if token is None:
            token = self._claim_tokens[ks] = str(ULID())
        return token, self._answered.get(ks, "")

    def _start_claimed(self, ks: Keyspace, reply: list[Any]) -> tuple[int, int, int]:
        # answered: the next claim is a new one, and forgets this one's record
        self._answered[ks] = self._claim_tokens.pop(ks, "")
        next_due, now_ms, backlog = int(reply[0]), int(reply[1]), int(reply[2])
        if next_due >= 0 and (self._next_due is None or next_due < self._next_due):
            self._next_due = next_due
        jobs = reply[3:]
        if jobs:
            faultpoint("after_claim")
            faultpoint("after_start_mark")
        for raw in jobs:
            task_id, name, payload, tries, gen, timeout_ms, max_tries, given, headers, lost = raw
            lost = int(lost or 0)
            job = Job(
                ks=ks,
                id=task_id.decode(),
                name=name.decode(),
                payload=payload,
                tries=int(tries),
                gen=str(int(gen)),
                timeout_ms=int(timeout_ms or 0),
                max_tries=int(max_tries or 1),
                started=_clock.monotonic(),
                input=given or None,
                headers=headers or None,
                last_delivery=lost > 0 and lost >= self.app.settings.max_deliveries - 1,
            )
            job.run = RunControl(self.app, self._broker, ks, job.gen, self._resources)
            earlier = self._running.get(job.id)
            if earlier is not None and earlier.task is not None:
                # the server took the task from an earlier run of this worker whose lease
                # lapsed (an outage longer than the lease) and gave it back here: that run's
                # outcome would be refused, so it stops now rather than racing this one
                log.warning("lease of task %s lost; its new run replaces the old", job.id)
                earlier.lost = True
                earlier.task.cancel()
            self._running[job.id] = job
            assert self._lease is not None
            self._lease.hold(job.id, ks, job.gen)
            job.task = asyncio.create_task(self._run(job), name=f"segue-run-{job.id}")
        return len(jobs), backlog, now_ms

    async def _run(self, job: Job) -> None:
        assert self._executor is not None
        task = self.app.registry.get(job.name)
        outcome: Outcome | None
        try:
            outcome = await attempt(
                job, task, self.app.settings, self.id, self._executor, self.app.hooks
            )
        except (asyncio.CancelledError, PauseRequested):
            outcome = self._stopped_outcome(job)
        except BaseException as exc:  # a bug in segue itself must not lose the task
            log.exception("internal error running task %s", job.id)
            outcome = ("retry", b"{}", 1000) if not isinstance(exc, KeyboardInterrupt) else None
        if outcome is not None and outcome[0] == "waiting":
            outcome = None  # wait.lua already made it WAITING and released its lease
        elif outcome is not None and outcome[0] != "ok" and job.run and job.run.request == "cancel":
            # the task caught the CancelledError and went on: the cancel still stands
            outcome = ("cancelled", "", "")
        if self._running.get(job.id) is job:  # not if a newer run of the task replaced it
            del self._running[job.id]
            timer = self._grace_timers.pop(job.id, None)
            if timer is not None:
                timer.cancel()
        if outcome is not None and not job.lost:
            action, a, b = outcome
            self._outcomes.setdefault(job.ks, []).extend((job.id, job.gen, action, a, b))
            # the lease is renewed until the outcome is on the server (_check_finished):
            # another task may block the loop before the next flush, and a lease lapsed
            # meanwhile would discard this outcome and run the task again
        elif self._lease is not None:
            self._lease.drop(job.id, job.gen)
        self._finished += 1
        self._changed.set()

    def _on_control_message(self, data: bytes) -> None:
        command, _, task_id = data.decode().partition(" ")
        self._on_request(task_id, command)

    def _on_request(self, task_id: str, command: str) -> None:
        """Carry out an operator's request for a task this worker runs."""
        job = self._running.get(task_id)
        if job is None or job.run is None or job.task is None:
            return
        if command in ("none", "resume"):
            if job.run.request == "pause":
                # the pause was withdrawn before the task reached a checkpoint
                log.info("task %s pause withdrawn; it goes on", task_id)
                job.run.request = None
                timer = self._grace_timers.pop(task_id, None)
                if timer is not None:
                    timer.cancel()
            return
        if job.run.request == command or job.run.request == "cancel":
            return
        job.run.request = command
        if command == "cancel":
            faultpoint("during_cancel")
            log.info("task %s cancel requested; stopping it", task_id)
            job.task.cancel()
        elif command == "pause":
            grace = self.app.settings.pause_grace_seconds
            log.info("task %s pause requested; stops at its next checkpoint", task_id)
            self._grace_timers[task_id] = asyncio.get_running_loop().call_later(
                grace, self._interrupt, job
            )

    def _interrupt(self, job: Job) -> None:
        """The grace period of a pause ran out without a checkpoint: stop at the await."""
        self._grace_timers.pop(job.id, None)
        if self._running.get(job.id) is job and job.task is not None and not job.task.done():
            log.info("task %s reached no checkpoint within the grace period; interrupting", job.id)
            job.task.cancel()

    @staticmethod
    def _stopped_outcome(job: Job) -> Outcome | None:
        """What a run interrupted from outside records: the request it obeyed, if any."""
        request = job.run.request if job.run is not None else None
        if job.lost:
            return None
        if request == "cancel":
            return ("cancelled", "", "")
        if request == "pause":
            return ("paused", "", "")
        return ("requeue", "", "")

    def _on_lost(self, runs: list[tuple[str, str]]) -> None:
        for task_id, gen in runs:
            job = self._running.get(task_id)
            if job is not None and job.gen == gen and job.task is not None:
                log.warning("lease of task %s lost; stopping this run", task_id)
                job.lost = True
                job.task.cancel()

    async def _wake_loop(self, broker: Broker, keyspaces: list[Keyspace]) -> None:
        """Turn a wake signal into a loop iteration, while this worker has free slots."""
        idle = self.app.settings.poll_seconds
        while not self._stopping:
            if len(self._running) >= self.concurrency:
                await _cancel.sleep(0.05)
                continue
            try:
                await broker.wait_for_work(keyspaces, idle)
            except BrokerError:
                await _cancel.sleep(0.5)
                continue
            _cancel.raise_if_cancelling()
            self._changed.set()

    async def _stop_waker(
        self, broker: Broker, keyspaces: list[Keyspace], waker: asyncio.Task[None]
    ) -> None:
        # Cancelling a BLPOP in flight can stall redis-py's connection teardown; a wake
        # token ends the BLPOP at once instead (another worker woken by it finds nothing).
        with contextlib.suppress(BrokerError):
            await broker.nudge(keyspaces)
        try:
            await asyncio.wait_for(waker, self.app.settings.poll_seconds + 2)
        except BaseException:
            waker.cancel()

    async def _server_down(self, exc: BrokerError) -> None:
        """Outcomes not sent were kept (_restore); resending them is safe because finish.lua
        is fenced by lease generation. The first failure retries at once (a dropped
        connection reconnects on the next call); later ones pause briefly first."""
        now = _clock.monotonic()
        if self._down_since is None:
            log.warning("server unavailable (%s); retrying", exc)
            self._down_since = self._down_said = now
            return
        if now - self._down_said >= self._outage_log_seconds:  # not one line per try
            self._down_said = now
            log.warning("server still unavailable after %.0f s (%s)", now - self._down_since, exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while not self._stopping:
                    await asyncio.sleep(0.1)

    async def _shutdown(self, broker: Broker) -> None:
        """Let running tasks finish within the grace period, then requeue the rest."""
        grace = self.app.settings.shutdown_grace_seconds
        deadline = _clock.monotonic() + grace
        while self._running and not self._force and _clock.monotonic() < deadline:
            await self._flush(broker)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(0.5, deadline - _clock.monotonic()))):
                    await self._changed.wait()
        if self._running:
            faultpoint("during_requeue")
            log.info("requeueing %d unfinished task(s)", len(self._running))
            tasks = []
            for job in list(self._running.values()):
                job.requeue = True
                if job.task is not None:
                    job.task.cancel()
                    tasks.append(job.task)
            await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(5):
            if not self._outcomes:
                break
            try:
                await self._flush(broker)
            except BrokerError as exc:
                log.warning("could not record outcomes at shutdown (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def _flush(self, broker: Broker) -> None:
        taken = self._take_outcomes()
        if taken:
            try:
                replies = await broker.run_calls([broker.finish_call(k, f) for k, f in taken])
            except BrokerError:
                self._restore(taken)
                raise
            self._check_finished(taken, replies)
