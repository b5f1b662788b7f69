"""App: what users hold. A facade: it declares through its Registry (_registry), reaches the
server through its Client (_client) and enqueues through its Enqueuer (_enqueue); workers,
handles and tasks get those collaborators, not the App."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from typing_extensions import Unpack

from segue import _journal, _scheduler, _send
from segue._client import Client
from segue._cron import make_schedule
from segue._cron import parse as parse_cron
from segue._enqueue import Enqueuer
from segue._errors import ConfigurationError
from segue._eventloop import runner
from segue._events import Event, follow
from segue._handle import TaskHandle, WorkflowHandle
from segue._heartbeat import Health, WorkerInfo, check, list_workers
from segue._info import parse_info
from segue._keys import check_queue_name, queue_of
from segue._queue import Queue
from segue._redact import mask_url
from segue._registry import CronDecorator, Registry, TaskDecorator
from segue._settings import Settings
from segue._state import TaskInfo, TaskStatus
from segue._task import AsyncTask, Chain, Group, Signature, SyncTask, Task

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Callable,
        Collection,
        Coroutine,
        Iterable,
        Mapping,
        Sequence,
    )
    from pathlib import Path
    from types import EllipsisType, TracebackType

    from segue._context import Context
    from segue._cron import Schedule, ScheduleInfo
    from segue._hooks import Hook
    from segue._keys import Keyspace
    from segue._lifespan import Resource
    from segue._options import (
        Backoff,
        ConcurrencyLimit,
        Executor,
        Migration,
        OnDuplicate,
        Priority,
        RateLimit,
        Unique,
    )
    from segue._schedule_handle import ScheduleHandle
    from segue._send import SendOptions
    from segue._sync_context import SyncContext

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class App:
    """A segue application: declare tasks on it, enqueue through it, run workers of it.

    `App(name)` with no URL (and no SEGUE_REDIS_URL) uses the embedded Valkey server of the
    project directory. Keyword overrides are Settings fields: `App("shop", concurrency=32)`.
    """

    def __init__(self, name: str = "segue", settings: Settings | None = None, **overrides: Any):
        self.name = name
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        check_queue_name(settings.queue)
        tasks: dict[str, Task[Any, Any]] = {}
        hooks: list[Hook] = []
        self._client = Client(settings, tasks)
        self._enqueuer = Enqueuer(self._client, hooks)
        # what the App declares; its tasks enqueue through the enqueuer
        self._registry = Registry(self._enqueuer, tasks, hooks, self.__repr__)

    @property
    def settings(self) -> Settings:
        return self._client.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._client.settings = settings

    @property
    def registry(self) -> dict[str, Task[Any, Any]]:
        """The declared tasks by name."""
        return self._registry.tasks

    @property
    def hooks(self) -> list[Hook]:
        return self._registry.hooks

    @property
    def lifespans(self) -> list[Resource[Any]]:
        return self._registry.lifespans

    @property
    def crons(self) -> dict[str, Schedule]:
        return self._registry.crons

    def __repr__(self) -> str:
        where = mask_url(self.settings.redis_url) if self.settings.redis_url else "embedded"
        return f"<App {self.name} tasks={len(self.registry)} server={where}>"

    # --- declaring tasks -------------------------------------------------------------------

    @overload
    def task(  # type: ignore[overload-overlap]
        self, fn: Callable[Concatenate[Context, P], Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def task(self, fn: Callable[Concatenate[SyncContext, P], R], /) -> SyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[Concatenate[Context, P], R], /) -> SyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        max_tries: int = 3,
        retry_backoff: Backoff = 1.0,
        ttl: float | None = ...,
        priority: Priority = "normal",
        silent: bool = False,
        unique: Unique = False,
        on_duplicate: OnDuplicate = "return",
        expire: float | timedelta | None = None,
        rate_limit: RateLimit = None,
        rate_burst: int = 1,
        concurrency: ConcurrencyLimit = None,
        max_pauses: int | None = 100,
        version: int = 1,
        migrate: Mapping[int, Migration] | None = None,
        executor: Executor = "thread",
    ) -> TaskDecorator: ...
    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Register a function as a task: `@app.task` or `@app.task(name=..., ...)`."""
        if fn is None:
            return TaskDecorator(self._registry, options)
        return self._registry.register(fn, **options)

    def lifespan(self, fn: Callable[[], AsyncIterator[T]]) -> Resource[T]:
        """Declare a resource each worker opens once at start and closes at shutdown: an
        async generator function that yields it. Tasks reach it with `ctx.get(resource)`."""
        return self._registry.lifespan(fn)

    def add_hook(self, hook: Hook) -> None:
        """Add a hook (see `segue.Hook`); hooks run in the order they were added."""
        self._registry.hooks.append(hook)

    def cron(
        self,
        expr: str,
        *,
        name: str | None = None,
        tz: str | None = None,
        catch_up: bool = False,
        queue: str | None = None,
        timeout: float | None = None,
        max_tries: int = 3,
        retry_backoff: Backoff = 1.0,
        ttl: float | EllipsisType | None = ...,  # ...: the App's result_ttl_seconds
        priority: Priority = "normal",
        silent: bool = False,
        unique: bool = False,
        expire: float | timedelta | None = None,
    ) -> CronDecorator:
        """Declare a task and a schedule that enqueues it (with no arguments) at each tick.

        `expr` has five fields, or six with seconds first, or is an alias such as @hourly;
        `tz` is an IANA zone (None: UTC). With `catch_up=True` every tick missed while no
        worker ran fires; by default they fire once. With `unique=True` a tick whose
        previous run is still queued or running is skipped (a `cron.skipped` event);
        `expire`: a tick's run not started within that many seconds of its tick ends
        EXPIRED. The schedule's id is the task's name; every worker registers it when it
        starts. The other options are @app.task's.
        """
        parse_cron(expr, tz)  # refuse a bad expression or zone here, at declaration
        options: dict[str, Any] = {
            "name": name,
            "queue": queue,
            "timeout": timeout,
            "max_tries": max_tries,
            "retry_backoff": retry_backoff,
            "priority": priority,
            "silent": silent,
        }
        if ttl is not ...:
            options["ttl"] = ttl
        return CronDecorator(
            self._registry,
            options,
            cron=expr,
            tz=tz,
            catch_up=catch_up,
            unique=unique,
            expire=expire,
        )

    # --- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._client.broker()

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> App:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- enqueueing -------------------------------------------------------------------------

    async def enqueue_many(self, signatures: Iterable[Signature[R]]) -> list[TaskHandle[R]]:
        """Enqueue many calls: one script call per queue and batch of 1,000."""
        return await self._enqueuer.enqueue_many(signatures)

    async def send(
        self,
        name: str,
        /,
        *args: Any,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        unique: bool | str = False,
        version: int | None = None,
        **options: Unpack[SendOptions],
    ) -> TaskHandle[Any]:
        """Enqueue a task by its name, without its code: `await app.send("reports.build",
        2026, queue="reports", delay=60)`. `kwargs` are the task's keyword arguments;
        `options` are `task.options(...)`'s.

        The queue is `queue=`, else the App's. The worker that claims the task supplies
        what this producer cannot know: `max_tries` and `timeout` unless passed here (the
        record marks them, `TaskInfo.from_worker`), `version` likewise, its retry backoff
        and limits. Only the options passed apply: `key=`, `unique=` (True: one live task of
        this name; a string: one per that key), priority, delays. The worker checks the
        arguments: a call that does not fit the function ends FAILED with reason
        `bad_arguments`, naming the parameter; a name no worker knows ends as unknown tasks
        do (`unknown_task`).
        """
        return await _send.send(
            self._enqueuer,
            name,
            args,
            dict(kwargs or {}),
            queue=queue,
            unique=unique,
            version=version,
            options=dict(options),
        )

    # --- cron schedules (stored and fired by _scheduler) --------------------------------------

    @overload
    def schedule(self, sig: str, /) -> ScheduleHandle: ...
    @overload
    def schedule(
        self,
        sig: Signature[Any] | Task[[], Any],
        *,
        cron: str,
        tz: str | None = None,
        id: str | None = None,
        catch_up: bool = False,
        unique: bool = False,
        expire: float | timedelta | None = None,
    ) -> Coroutine[Any, Any, str]: ...
    def schedule(
        self,
        sig: Signature[Any] | Task[[], Any] | str,
        *,
        cron: str | None = None,
        tz: str | None = None,
        id: str | None = None,
        catch_up: bool = False,
        unique: bool = False,
        expire: float | timedelta | None = None,
    ) -> Coroutine[Any, Any, str] | ScheduleHandle:
        """`await app.schedule(sig, cron=...)`: enqueue this call at every tick of `cron`
        from now on; returns the schedule's id. Scheduling an existing id again updates it
        (keeping its next tick if `cron` and `tz` are unchanged). Workers fire the ticks,
        each exactly once among them. `unique` and `expire` are as for `@app.cron`.

        `app.schedule(schedule_id)`: a ScheduleHandle of a stored schedule, to `pause()`,
        `resume()` or read (`info()`) it.
        """
        if isinstance(sig, str):
            from segue._schedule_handle import ScheduleHandle

            if cron is not None:
                raise ConfigurationError(
                    "app.schedule(id) takes a schedule id alone; to schedule a call, pass "
                    "task.call(...) with cron="
                )
            return ScheduleHandle(self._client, sig)
        if cron is None:
            raise ConfigurationError("app.schedule(sig, cron=...) needs a cron expression")
        return self._schedule(sig, cron, tz, id, catch_up, unique, expire)

    async def _schedule(
        self,
        sig: Signature[Any] | Task[[], Any],
        cron: str,
        tz: str | None,
        id: str | None,
        catch_up: bool,
        unique: bool,
        expire: float | timedelta | None,
    ) -> str:
        if isinstance(sig, Task):
            sig = sig.call()
        schedule = make_schedule(
            sig, cron=cron, tz=tz, sid=id, catch_up=catch_up, unique=unique, expire=expire
        )
        await _scheduler.put(self._enqueuer, await self._client.broker(), [schedule])
        return schedule.id

    async def unschedule(self, schedule_id: str) -> bool:
        """Remove a schedule (False if there was none): no tick after this fires."""
        return await _scheduler.remove(
            self.settings.prefix, await self._client.broker(), schedule_id
        )

    async def schedules(self) -> list[ScheduleInfo]:
        """Every stored schedule with its next run and last tick, soonest first."""
        return await _scheduler.listing(self.settings.prefix, await self._client.reads())

    # --- reading ---------------------------------------------------------------------------

    @overload
    def group(self, signatures: Iterable[Signature[R]]) -> Group[R]: ...
    @overload
    def group(
        self, signatures: Iterable[Signature[Any] | Chain[Any] | Group[Any] | Task[Any, Any]]
    ) -> Group[Any]: ...
    def group(self, signatures: Iterable[Any]) -> Group[Any]:
        """Steps that run in parallel; `group | merge.call()` hands merge their results."""
        return Group(self._enqueuer, signatures)

    async def workflow_handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle for a workflow id from anywhere (the id encodes its queue)."""
        queue_of(workflow_id)
        return WorkflowHandle(self._client, workflow_id)

    async def task_handle(self, task_id: str) -> TaskHandle[Any]:
        """A handle for a task id from anywhere (the id encodes its queue)."""
        queue_of(task_id)
        return TaskHandle(self._client, task_id)

    async def tasks(
        self,
        status: TaskStatus | str = TaskStatus.QUEUED,
        *,
        queue: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[TaskInfo]:
        """Tasks of one queue in one status, paged (`offset`, `limit`); a sharded queue's
        shard after shard."""
        st = TaskStatus(status)
        reads = await self._client.reads()
        name = queue or self.settings.queue
        sc = await (await self._client.broker()).shards.read(name)
        spaces = [reads.keyspace(shard) for shard in sc.serving(name)]
        found: list[tuple[Keyspace, str]] = []
        if len(spaces) == 1:  # only the page is read, however long the lists
            found = [
                (spaces[0], i) for i in await reads.list_ids(spaces[0], st.value, offset, limit)
            ]
        else:
            for ks in spaces:
                # ids only, at most offset + limit in all: the page is cut from them
                want = offset + limit - len(found)
                if want <= 0:
                    break
                found += [(ks, i) for i in await reads.list_ids(ks, st.value, 0, want)]
            found = found[offset : offset + limit]
        infos: list[TaskInfo] = []
        for ks, task_id in found:
            rec = await reads.task_record(ks, task_id)
            if rec:
                info = parse_info(task_id, rec, self._registry.tasks)
                if info.status is st or st.is_final:
                    infos.append(info)
        return infos

    def queue(self, name: str | None = None, *, shards: int | None = None) -> Queue:
        """One queue as a whole (default: the App's queue): pause, resume, counts.
        `shards=N` declares it sharded ([Sharded queues](sharding.md))."""
        return Queue(self._client, check_queue_name(name or self.settings.queue), shards)

    async def retry(self, task_id: str) -> TaskHandle[Any]:
        """Queue a failed (e.g. dead-lettered), cancelled or expired task again."""
        handle = await self.task_handle(task_id)
        await handle.retry()
        return handle

    async def dead_letters(
        self, queue: str | None = None, *, offset: int = 0, limit: int = 100
    ) -> list[TaskInfo]:
        """Tasks of a queue that failed for good, newest first, paged (a sharded queue's:
        merged from its shards by when they ended)."""
        reads = await self._client.reads()
        name = queue or self.settings.queue
        sc = await (await self._client.broker()).shards.read(name)
        spaces = [reads.keyspace(q) for q in sc.serving(name)]
        if len(spaces) == 1:
            start, count = offset, limit
        else:
            start, count = 0, offset + limit  # the page is cut from the merged lists
        infos: list[TaskInfo] = []
        for ks in spaces:
            for task_id in await reads.dead_ids(ks, start, count):
                rec = await reads.task_record(ks, task_id)
                if rec:
                    infos.append(parse_info(task_id, rec, self._registry.tasks))
        if len(spaces) == 1:
            return infos
        never = datetime.min.replace(tzinfo=UTC)
        infos.sort(key=lambda i: i.ended_at or never, reverse=True)
        return infos[offset : offset + limit]

    async def events(
        self,
        queues: Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        kinds: Collection[str] | None = None,
        since: str = "$",
        block: float = 1.0,
    ) -> AsyncIterator[Event]:
        """Follow the event streams of `queues` (default: the App's queue, or the queue of
        `task_id`) live, merged; only one task's events with `task_id`, only some kinds with
        `kinds`. `since="$"` starts with events from now on; `"0"` replays what the streams
        keep; an event's `id` resumes after it. Ends when the caller stops iterating."""
        if queues is None:
            queues = [queue_of(task_id) if task_id else self.settings.queue]
        if task_id is None:
            # a sharded queue's stream is one per shard: all of them are followed
            shards = (await self._client.broker()).shards
            queues = [n for q in queues for n in (await shards.read(q)).serving(q)]
        async for event in follow(self._client, list(queues), since, block, task_id, kinds):
            yield event

    async def queues(self) -> list[str]:
        reads = await self._client.reads()
        return await reads.queues()

    async def queue_counts(self, queue: str | None = None) -> dict[str, int]:
        return await self.queue(queue).counts()

    # --- running ---------------------------------------------------------------------------

    def worker(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pid_file: str | Path | None = None,
    ) -> Any:
        """A Worker; with `pid_file`, it writes its id there once registered (`check`)."""
        from segue._worker import Worker

        return Worker(
            self._client,
            self._registry,
            self._enqueuer,
            name=self.name,
            queues=queues,
            concurrency=concurrency,
            pid_file=pid_file,
        )

    def run_worker(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pid_file: str | Path | None = None,
    ) -> None:
        """Run a worker in this process until SIGINT/SIGTERM (blocking)."""
        worker = self.worker(queues=queues, concurrency=concurrency, pid_file=pid_file)

        async def serve() -> None:
            try:
                await worker.run(install_signal_handlers=True)
            finally:  # the embedded server it started stops now, not after its idle timeout
                await self.close()

        with contextlib.suppress(KeyboardInterrupt), runner(self.settings.event_loop) as loop:
            loop.run(serve())

    async def drain(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        horizon: float = 0.0,
        advance: float | timedelta = 0.0,
    ) -> int:
        """Run a burst worker in this process until its queues are idle; returns how many
        runs it finished. For tests and scripts.

        `advance` skips time for durable sleeps (`ctx.sleep`): during the drain, a sleep due
        within `advance` seconds from now is over, and a SUSPENDED task of its queues due
        within it is run now; so a test of a three-day sleep runs in a second. Likewise a
        `ctx.wait_signal` whose timeout ends within it times out now.

        It stops after a round in which, all at once: it runs nothing itself and has
        recorded every outcome; nothing is queued in its queues (a paused queue's tasks do
        not count) and no task of them runs on any worker; no task is RETRYING, however far
        off its next try; and nothing scheduled (a delay, `at=`, `Pause(delay=)`, a rate
        limit's next token) is due within `horizon` seconds of server time. It does not
        wait for PAUSED tasks, for tasks scheduled past the horizon, or for other queues."""
        skip = advance.total_seconds() if isinstance(advance, timedelta) else advance
        if not skip:
            worker = self.worker(queues=queues, concurrency=concurrency)
            finished: int = await worker.run_until_idle(horizon=horizon)
            return finished
        if skip < 0:
            raise ValueError(f"drain(advance={advance!r}): advance must be 0 or more seconds")
        names = queues or [self.settings.queue]
        _journal.skip_time(_journal.now() + skip)
        try:
            finished = 0
            # bounded: a task that suspends itself again within the window forever (a
            # Pause(delay=) loop) must not keep the drain going
            for _ in range(1000):
                worker = self.worker(queues=queues, concurrency=concurrency)
                finished += await worker.run_until_idle(horizon=horizon)
                if not await _journal.advance_sleeps(await self._client.broker(), names, skip):
                    break
            return finished
        finally:
            _journal.skip_time(0.0)

    # --- workers and health ------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """The workers of this App's prefix that have a record: live ones, and stale ones
        whose record has not expired yet (`WorkerInfo.stale`, `age` in seconds)."""
        return await list_workers(self._client)

    async def check(
        self,
        worker_id: str | None = None,
        *,
        max_age: float | None = None,
        pid_file: str | Path | None = None,
        timeout: float = 5.0,
    ) -> Health:
        """Whether the server answers and a worker's heartbeat is fresh (`Health.ok`), with
        one line saying why (`Health.reason`); never raises for an unreachable server.

        The worker: `worker_id`; else the id in `pid_file` (default `.segue/worker.pid`
        in the project directory, if it exists: what `segue worker --pid-file` writes);
        else the freshest worker of this host. Fresh means a beat within `max_age` seconds
        (default three of the worker's heartbeat intervals), by the server's clock."""
        return await check(
            self._client, worker_id, max_age=max_age, pid_file=pid_file, timeout=timeout
        )
