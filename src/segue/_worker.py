"""Worker: claims tasks in batches, runs them concurrently, records outcomes in batches.

One loop does all server writes of the hot path: each round trip carries the outcomes that
piled up since the last one (finish.lua, _finish_batch.py) and a claim for the free slots
(claim.lua), in one pipeline. Runs are asyncio tasks; sync functions go to a thread pool.
Beside the loop run the worker's services, under one task group and one failure policy
(_services.py): lease renewal in its own thread (_lease.py), the control subscriber that
carries out pause and cancel requests (_control.py), the waker that turns new work into a
turn of the loop (_waker.py), the heartbeat, the reconciler, the forwarder and the
scheduler.
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

from segue import _clock
from segue._calls import parse_claim
from segue._connect import Outage, wait_for_server
from segue._context import PauseRequested
from segue._control import Controller, ControlSubscriber
from segue._errors import BrokerError, SegueError, ServerOutOfMemory
from segue._faults import faultpoint
from segue._finish_batch import FinishBatch
from segue._forward import Forwarder
from segue._heartbeat import Heartbeat
from segue._keys import Keyspace, check_queue_name
from segue._lease import LeaseKeeper
from segue._lifespan import open_all
from segue._offload_runs import attempt_by_reference, by_reference
from segue._options import limit_tables, shard_limits
from segue._outcome import Cancelled, Finished, Outcome, Retrying, Succeeded, Waiting
from segue._procpool import ProcessPool, process_pool
from segue._reconcile import Reconciler
from segue._run_control import RunControl
from segue._runner import Job, attempt
from segue._scheduler import Scheduler
from segue._services import Service, ServiceGroup, describe
from segue._shard_worker import ClaimOrder, ShardGroup, ShardWatcher, shard_groups
from segue._waker import Waker

if TYPE_CHECKING:
    from segue._broker import Broker
    from segue._client import Client
    from segue._enqueue import Enqueuer
    from segue._registry import Registry

log = logging.getLogger("segue.worker")


class Worker:
    """Runs the tasks of an App from one or more queues (served in the order given).

    `app.worker()` makes one: it runs the registry's tasks, reaches the server through the
    client, and enqueues sub-tasks and cron ticks through the enqueuer."""

    def __init__(
        self,
        client: Client,
        registry: Registry,
        enqueuer: Enqueuer,
        *,
        name: str = "segue",
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pid_file: str | Path | None = None,
    ) -> None:
        self._client = client
        self._registry = registry
        self._enqueuer = enqueuer
        self.app_name = name  # the App's label, in the worker's record
        settings = client.settings
        self.pid_file = Path(pid_file) if pid_file is not None else None
        # set once the worker is registered and about to take work (segue.testing waits on it)
        self.ready = asyncio.Event()
        self.queues = [check_queue_name(q) for q in (queues or [settings.queue])]
        self.concurrency = concurrency or settings.concurrency
        self.id = f"{socket.gethostname()}-{os.getpid()}-{str(ULID())[-6:]}"
        self._running: dict[str, Job] = {}
        self._finishes = FinishBatch()  # the ended runs' outcomes, until they are recorded
        self._changed = asyncio.Event()
        self._stopping = False
        self._force = False
        self._finished = 0
        self._lease: LeaseKeeper | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._processes: ProcessPool | None = None  # for executor="process" tasks
        self._next_due: float | None = None
        self._broker: Any = None
        self._resources: dict[Any, Any] = {}
        # carries out pause and cancel requests for the runs (_control.py)
        self._controller = Controller(self._running, settings.pause_grace_seconds)
        self._failure: tuple[str, BaseException] | None = None  # the service that failed
        # the token of each queue's next claim: kept until a claim's reply arrives, so that
        # a claim resent after a dropped connection gets back what the lost one leased
        self._claim_tokens: dict[Keyspace, str] = {}
        self._answered: dict[Keyspace, str] = {}  # the last answered token, to forget
        # an outage is logged when it starts, then every two heartbeats (10 s by default)
        self._outage = Outage(2 * settings.heartbeat_seconds)
        # the queues' reconciler while serving (not in a burst), see _reconcile.py
        self.reconciler: Reconciler | None = None
        # moves the queues' outbox entries to other queues (_forward.py)
        self._forwarder: Forwarder | None = None
        self._order: ClaimOrder | None = None  # the claim order over the queues' shards

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
            self._resources.update(await open_all(self._registry.lifespans, stack))
            return await self._serve_open(burst=burst, horizon=horizon, signals=signals)

    async def _connect(self) -> Broker:
        return await wait_for_server(self._client, lambda: self._stopping, self._outage.log_seconds)

    async def _serve_open(self, *, burst: bool, horizon: float, signals: bool) -> int:
        broker = await self._connect()
        # each queue is the group of its shards (one, unsharded): docs/sharding.md
        groups = await shard_groups(broker, self.queues)
        self._order = order = ClaimOrder(groups, self._client.settings.poll_seconds)
        keyspaces = [ks for g in groups for ks in g.spaces]
        try:
            for q in self.queues:
                await broker.register_queue(q)
            for g in groups:
                await self._publish_limits(broker, g, g.spaces)
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
        self._processes = process_pool(self._registry.tasks.values(), self._client.settings)
        self._broker = broker
        controller = self._controller
        self._lease = LeaseKeeper(
            broker.url,
            self._client.settings,
            self.id,
            lambda ids: loop.call_soon_threadsafe(controller.on_lost, ids),
            lambda task_id, cmd: loop.call_soon_threadsafe(controller.on_request, task_id, cmd),
        )
        # a burst only empties queues: cron ticks fire from serving workers, which also
        # repair what a restore broke and forward on their own (a burst forwards from _loop)
        self.reconciler = (
            None if burst else Reconciler(broker, self.id, keyspaces, self._registry.hooks)
        )
        self._forwarder = Forwarder(broker, keyspaces, self._client.settings.poll_seconds)
        tasks = self._registry.tasks
        subscriber = ControlSubscriber(broker, keyspaces, controller, self.id)
        waker = Waker(
            broker,
            keyspaces,
            self._client.settings.poll_seconds,
            lambda: not self._stopping and len(self._running) < self.concurrency,
            self._changed.set,
            order.woken,
        )

        async def resharded(group: ShardGroup, more: list[Keyspace]) -> None:
            # a reshard's new shards: served like the others from now on
            keyspaces.extend(more)
            order.added(group)
            await self._publish_limits(broker, group, group.spaces)
            waker.add(more)
            await subscriber.add(more)
            if self.reconciler is not None:
                self.reconciler.add(more)
            if self._forwarder is not None:
                self._forwarder.add(more)
            self._changed.set()

        services: list[Service | None] = [
            self._lease,
            subscriber,
            waker,
            Heartbeat(self, broker, self.pid_file),
            self.reconciler,
            None if burst else self._forwarder,
            None if burst else Scheduler(self._enqueuer, broker, self._registry.crons, tasks),
            # an unsharded queue is watched too (it may be resharded while the worker runs),
            # but a burst ends before that matters
            None if burst else ShardWatcher(broker, groups, resharded),
        ]
        log.info(
            "worker %s started queues=%s concurrency=%d%s",
            self.id,
            self.queues,
            self.concurrency,
            "".join(f" {g.queue}:shards={g.count.count}" for g in groups if len(g.spaces) > 1),
        )
        try:
            # stopped in the reverse order: the claim loop first, the lease thread last
            async with ServiceGroup(self.id, self._service_failed) as group:
                for service in services:
                    if service is not None:
                        await group.start(service)
                self.ready.set()
                claim = await group.start(_ClaimLoop(self, broker, keyspaces, burst, horizon))
                await asyncio.wait({claim})
        finally:
            self._stopping = True
            self._executor.shutdown(wait=False, cancel_futures=True)
            if self._processes is not None:
                await self._processes.close()
            if signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info("worker %s stopped after %d runs", self.id, self._finished)
        if self._failure is not None:
            name, cause = self._failure
            raise SegueError(
                f"worker {self.id} stopped: its {name} failed: {describe(cause)}"
            ) from cause
        return self._finished

    def _service_failed(self, name: str, exc: BaseException) -> None:
        """A part whose failure stops the worker failed (logged by the group): stop now,
        requeueing what runs (without the lease thread its leases would lapse)."""
        self._failure = self._failure or (name, exc)
        self._stopping = self._force = True
        self._changed.set()

    async def _loop(
        self, broker: Broker, keyspaces: list[Keyspace], *, burst: bool, horizon: float
    ) -> None:
        settings = self._client.settings
        forwarder = self._forwarder
        assert forwarder is not None
        while not self._stopping:
            self._changed.clear()
            if burst and forwarder.poked:
                await self._forward(forwarder)
            free = self.concurrency - len(self._running)
            taken = self._finishes.take()
            order = self._order.order(skip_idle=not burst) if self._order else keyspaces
            claim_from = order[0] if free > 0 else None
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
                self._finishes.restore(taken)
                await self._outage.failed(exc, lambda: self._stopping)
                continue
            self._outage.answered()
            claimed = 0
            backlog = 0
            now_ms = 0
            short = False
            if claim_from is not None:
                self._next_due = None  # this round's claims say what is due next, in any queue
                # leases first: the renewal thread must know the new tasks before anything
                # else of this round runs (a stall there would let their leases lapse)
                claimed, backlog, now_ms = self._start_claimed(claim_from, replies[n_finish])
                short = claimed < free
            self._finishes.check(taken, replies[:n_finish], self._lease, self._forwarder)
            if claim_from is not None:
                # later queues are served only with what the earlier ones left free; a
                # sharded queue's next round starts after the shard that filled them
                last: Keyspace | None = claim_from
                for ks in order[1:]:
                    free = self.concurrency - len(self._running)
                    if free <= 0:
                        break
                    last = ks
                    call = broker.claim_call(
                        ks, self.id, free, *self._tokens(ks), holds_last=self._holds_last()
                    )
                    try:
                        reply = (await broker.run_calls([call]))[0]
                    except BrokerError as exc:
                        await self._outage.failed(exc, lambda: self._stopping)
                        break
                    c, b, _ = self._start_claimed(ks, reply)
                    claimed += c
                    backlog += b
                    short = short or c < free
                else:
                    last = None if self.concurrency > len(self._running) else last
                if self._order is not None:
                    self._order.stopped(last)
            # claim again at once only after full claims: a short one emptied what it could
            # take, and what comes next wakes the waker (a claim less per task when idle)
            if claimed and not short and self.concurrency > len(self._running):
                continue
            if self._finishes.pending:
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
            await self._outage.failed(exc, lambda: self._stopping)
            return 1

    async def _publish_limits(
        self, broker: Broker, group: ShardGroup, keyspaces: list[Keyspace]
    ) -> None:
        """The claim script enforces the limits of the tasks this worker's code declares;
        a sharded queue's shards each get their share of a task-wide limit."""
        t = limit_tables(task.opts for task in self._registry.tasks.values())
        for ks in keyspaces:
            n = group.divisor(ks)
            rates, conc = (t.rates, t.concurrency) if n == 1 else shard_limits(t, n)
            await broker.set_limits(ks, rates, conc, t.clear, t.keyed, (t.lanes, t.lanes_clear))

    async def _any_retrying(self, broker: Broker, keyspaces: list[Keyspace]) -> bool:
        if self._next_due is None:
            return False
        for ks in keyspaces:
            if await broker.reads.has_retrying(ks):
                return True
        return False

    def _holds_last(self) -> bool:
        """Whether a task on its last delivery runs here (claim.lua gives no second one)."""
        return any(job.last_delivery for job in self._running.values())

    def _tokens(self, ks: Keyspace) -> tuple[str, str]:
        """This claim's token (the unanswered one, if any) and the last answered one."""
        token = self._claim_tokens.get(ks)
        if token is None:
            token = self._claim_tokens[ks] = str(ULID())
        return token, self._answered.get(ks, "")

    def _start_claimed(self, ks: Keyspace, raw: list[Any]) -> tuple[int, int, int]:
        # answered: the next claim is a new one, and forgets this one's record
        self._answered[ks] = self._claim_tokens.pop(ks, "")
        reply = parse_claim(raw)
        next_due = reply.next_due_ms
        if next_due >= 0 and (self._next_due is None or next_due < self._next_due):
            self._next_due = next_due
        jobs = reply.runs
        if self._order is not None:
            self._order.claimed(ks, len(jobs), next_due, reply.now_ms)
        if jobs:
            faultpoint("after_claim")
            faultpoint("after_start_mark")
        # looked up once per claim, not once per run
        settings = self._client.settings
        max_deliveries = settings.max_deliveries
        lease_seconds = settings.lease_seconds
        enqueue_child = self._enqueuer.enqueue_child
        child_handle = self._enqueuer.child_handle
        broker, resources, running = self._broker, self._resources, self._running
        lease = self._lease
        assert lease is not None
        held: list[tuple[str, Keyspace, str]] = []
        for run in jobs:
            if run.unreadable is not None and not run.id_readable:
                # an id that is not UTF-8 cannot name the task back to the server: its lease
                # lapses, and claim.lua fails it worker_lost after max_deliveries
                log.error("task id %r is not UTF-8; left to expire", run.id)
                continue
            job = Job(
                ks,
                run.id,
                run.name,
                run.payload,
                run.tries,
                run.gen,
                run.timeout_ms,
                run.max_tries,
                run.input,
                run.headers,
                run.lost > 0 and run.last_delivery(max_deliveries),
                started=_clock.monotonic(),
                unreadable=run.unreadable,
                version=run.version,
                started_version=run.started_version,
                journal=run.journal,
                from_worker=run.from_worker,
            )
            job.run = RunControl(
                enqueue_child,
                broker,
                ks,
                job.gen,
                resources,
                lease_seconds=lease_seconds,
                child_handle=child_handle,
            )
            earlier = running.get(job.id)
            if earlier is not None and earlier.task is not None:
                # the server took the task from an earlier run of this worker whose lease
                # lapsed (an outage longer than the lease) and gave it back here: that run's
                # outcome would be refused, so it stops now rather than racing this one
                log.warning("lease of task %s lost; its new run replaces the old", job.id)
                earlier.lost = True
                earlier.task.cancel()
            running[job.id] = job
            held.append((job.id, ks, job.gen))
            job.task = asyncio.create_task(self._run(job), name=f"segue-run-{job.id}")
        if held:
            lease.hold_all(held)
        return len(jobs), reply.backlog, reply.now_ms

    async def _run(self, job: Job) -> None:
        assert self._executor is not None
        task = self._registry.tasks.get(job.name)
        rest = (self._executor, self._registry.hooks, self._processes)
        outcome: Outcome | None
        settings = self._client.settings
        try:
            # a run with nothing by reference (offloading off, no reference given) skips
            # the payload store's layer: one coroutine less per task on the hot path
            if settings.offload_bytes or by_reference(job.payload, job.input):
                run = attempt_by_reference(self._broker, job, task, settings, self.id, *rest)
            else:
                run = attempt(job, task, settings, self.id, *rest)
            outcome = await run
        except (asyncio.CancelledError, PauseRequested):
            outcome = self._controller.stopped_outcome(job)
        except BaseException as exc:  # a bug in segue itself must not lose the task
            log.exception("internal error running task %s", job.id)
            outcome = Retrying(b"{}", 1000) if not isinstance(exc, KeyboardInterrupt) else None
        if outcome is None or outcome.__class__ is Succeeded:
            pass  # the common case first: no more checks
        elif isinstance(outcome, Waiting):
            outcome = None  # wait.lua already made it WAITING and released its lease
        elif job.run and job.run.request == "cancel":
            # the task caught the CancelledError and went on: the cancel still stands
            outcome = Cancelled()
        if self._running.get(job.id) is job:  # not if a newer run of the task replaced it
            del self._running[job.id]
            if job.run is not None and job.run.request is not None:
                # a grace timer runs only for a run asked to pause (_control.py)
                self._controller.ended(job.id)
        if outcome is not None and not job.lost:
            self._finishes.pending.setdefault(job.ks, []).append(Finished(job.id, job.gen, outcome))
            # the lease is renewed until the outcome is on the server (FinishBatch.check):
            # another task may block the loop before the next flush, and a lease lapsed
            # meanwhile would discard this outcome and run the task again
        elif self._lease is not None:
            self._lease.drop(job.id, job.gen)
        self._finished += 1
        self._changed.set()

    async def _shutdown(self, broker: Broker) -> None:
        """Let running tasks finish within the grace period, then requeue the rest."""
        grace = self._client.settings.shutdown_grace_seconds
        deadline = _clock.monotonic() + grace
        while self._running and not self._force and _clock.monotonic() < deadline:
            await self._finishes.flush(broker, self._lease, self._forwarder)
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
            if not self._finishes.pending:
                break
            try:
                await self._finishes.flush(broker, self._lease, self._forwarder)
            except BrokerError as exc:
                log.warning("could not record outcomes at shutdown (%s); retrying", exc)
                await asyncio.sleep(0.5)


class _ClaimLoop(Service):
    """The worker's claim/finish loop as a service: started last, stopped first. Its close
    is the graceful shutdown: running tasks get their grace, what remains is requeued, the
    outcomes are sent, and the claims' replay records are forgotten."""

    name = "claim loop"
    stop_wait = None  # the shutdown bounds itself (shutdown_grace_seconds, then requeue)

    def __init__(
        self, worker: Worker, broker: Broker, keyspaces: list[Keyspace], burst: bool, horizon: float
    ) -> None:
        self._worker = worker
        self._broker = broker
        self._keyspaces = keyspaces
        self._burst = burst
        self._horizon = horizon

    async def run(self) -> None:
        await self._worker._loop(
            self._broker, self._keyspaces, burst=self._burst, horizon=self._horizon
        )

    async def stop(self) -> None:
        self._worker._stopping = True
        self._worker._changed.set()

    async def close(self) -> None:
        w = self._worker
        w._stopping = True
        await w._shutdown(self._broker)
        with contextlib.suppress(BrokerError):
            await self._broker.forget_claims({**w._answered, **w._claim_tokens})
