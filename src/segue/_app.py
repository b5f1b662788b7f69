"""App: the task registry, the connection, and the entry points of the client API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from ulid import ULID

from segue import _scheduler, _workflow
from segue._client import Client
from segue._codec import encode_args
from segue._cron import make_schedule
from segue._cron import parse as parse_cron
from segue._durability import need_for
from segue._errors import ConfigurationError, DuplicateTask, PayloadError
from segue._events import Event, follow
from segue._handle import TaskHandle, WorkflowHandle, parse_info
from segue._heartbeat import Health, WorkerInfo, check, list_workers
from segue._hooks import Hook, call_hooks
from segue._keys import check_queue_name, queue_of
from segue._options import Backoff, OnDuplicate, Priority, Unique, seconds
from segue._queue import Queue
from segue._redact import mask_url
from segue._registry import CronDecorator, Registry, TaskDecorator
from segue._settings import Settings
from segue._state import TaskInfo, TaskStatus
from segue._task import AsyncTask, Chain, Group, Signature, SyncTask, Task
from segue._wire import EnqueueSpec, GraphStep

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Callable,
        Collection,
        Coroutine,
        Iterable,
        Sequence,
    )
    from datetime import timedelta
    from pathlib import Path
    from types import EllipsisType, TracebackType

    from segue._broker import Broker
    from segue._context import Context, SyncContext
    from segue._cron import Schedule, ScheduleInfo
    from segue._keys import Keyspace
    from segue._lifespan import Resource
    from segue._schedule_handle import ScheduleHandle
    from segue._wire import GraphRecord

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
log = logging.getLogger("segue.app")
_BATCH = 1000


def _headers(sig: Signature[Any]) -> str:
    """The JSON of a call's headers (its options', then those hooks added), '' for none."""
    given = sig.opts.get("headers")
    if not given and not sig.headers:
        return ""
    return json.dumps({**(given or {}), **sig.headers}, separators=(",", ":"))


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
        self._registry = Registry(self)
        self._client = Client(settings, self._registry.tasks)
        self._checked_queues: set[str] = set()

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

    @property
    def _broker(self) -> Broker | None:
        return self._client.connected

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
        rate_limit: str | None = None,
        rate_burst: int = 1,
        concurrency: int | None = None,
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
    ) -> CronDecorator:
        """Declare a task and a schedule that enqueues it (with no arguments) at each tick.

        `expr` has five fields, or six with seconds first, or is an alias such as @hourly;
        `tz` is an IANA zone (None: UTC). With `catch_up=True` every tick missed while no
        worker ran fires; by default they fire once. The schedule's id is the task's name;
        every worker registers it when it starts. The other options are @app.task's.
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
        return CronDecorator(self._registry, options, cron=expr, tz=tz, catch_up=catch_up)

    # --- connection ------------------------------------------------------------------------

    async def broker(self) -> Broker:
        return await self._client.broker()

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

    # --- enqueueing ------------------------------------------------------------------------

    def queue_for(self, sig: Signature[Any]) -> str:
        """The queue a signature goes to: its options, else its task's, else the App's."""
        queue = sig.opts.get("queue") or sig.task.opts.queue or self.settings.queue
        if queue not in self._checked_queues:
            self._checked_queues.add(check_queue_name(queue))
        return queue

    def _spec(
        self,
        sig: Signature[Any],
        task_id: str | None = None,
        queue: str | None = None,
        *,
        first_to_come: bool = False,
    ) -> tuple[str, EnqueueSpec]:
        """The queue a call goes to, and the task enqueue.lua creates for it."""
        task, o = sig.task, sig.opts
        d = task.opts
        if queue is None:
            queue = self.queue_for(sig)
        else:
            # a sub-task joins its parent's queue (wait.lua counts its sub-tasks in that
            # slot); a workflow step comes here with its own queue already chosen
            own = o.get("queue") or d.queue
            if own is not None and own != queue:
                where = (
                    f"{task.name}.options(queue={own!r})"
                    if o.get("queue")
                    else (f"@app.task(queue={own!r}) on {task.name}")
                )
                raise ConfigurationError(
                    f"{where} asks for queue {own!r}, but it is a sub-task of a task on "
                    f"queue {queue!r}: a task's sub-tasks share its queue"
                )
        key = o.get("key")
        if task_id is None:
            task_id = f"{queue}:k:{key}" if key is not None else f"{queue}:{ULID()}"
        payload = encode_args(
            sig.args,
            sig.kwargs,
            what=f"arguments of task {task.name}",
            limit=self.settings.max_payload_bytes,
        )
        try:
            # what a worker would refuse to decode is refused here, before anything is written
            task.args_decoder.check(payload, first_to_come=first_to_come)
        except PayloadError as exc:
            raise PayloadError(
                f"arguments of task {task.name} do not decode for its parameters, so a worker "
                f"would refuse them: {exc}"
            ) from None
        delay = seconds(o.get("delay")) or 0.0
        at: datetime | None = o.get("at")
        expire = o.get("expire", d.expire)
        if isinstance(expire, datetime):
            expire = max(0.001, expire.timestamp() - time.time())
        expire_s = seconds(expire)
        timeout = o.get("timeout", d.timeout)
        ttl = o.get("ttl", d.ttl)
        return (
            queue,
            EnqueueSpec(
                id=task_id,
                name=task.name,
                payload=payload,
                priority=o.get("priority", d.priority),
                delay_ms=int(delay * 1000),
                at_ms=int(at.timestamp() * 1000) if at is not None else 0,
                max_tries=o.get("max_tries", d.max_tries),
                timeout_ms=int(timeout * 1000) if timeout else 0,
                ttl_ms=-1 if ttl is None else int(ttl * 1000),
                unique=self._unique_key(sig),
                expire_ms=max(1, int(expire_s * 1000)) if expire_s else 0,
                headers=_headers(sig),
            ),
        )

    @staticmethod
    def _unique_key(sig: Signature[Any]) -> str:
        unique = sig.task.opts.unique
        if unique is False:
            return ""
        if unique is True:
            return f"{sig.task.name}:"
        return f"{sig.task.name}:{unique(*sig.args, **sig.kwargs)}"

    def _handle_for(
        self, sig: Signature[R], task_id: str, reply: Any, spec: EnqueueSpec
    ) -> TaskHandle[R]:
        """The handle an enqueue gives back: a reply naming another task id means a live
        task already holds this unique task's key."""
        if isinstance(reply, bytes | str):
            holder = reply.decode() if isinstance(reply, bytes) else reply
            if sig.opts.get("on_duplicate", sig.task.opts.on_duplicate) == "raise":
                raise DuplicateTask(
                    f"task {sig.task.name} is unique and task {holder} is already "
                    "queued or running",
                    holder,
                )
            task_id = holder
        return TaskHandle(
            self._client, task_id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
        )

    def graph_step(
        self,
        sig: Signature[Any],
        queue: str | None,
        task_id: str | None,
        deps: list[tuple[str, int]],
        mode: str,
        xdeps: list[tuple[str, int]] | None = None,
        xdependants: str = "",
    ) -> GraphStep:
        """The task graph.lua creates for a call that waits for `deps` (id, input index)
        of its own queue and `xdeps` of other queues; `xdependants` are the tasks of other
        queues that wait for it ("<id>|<index>|<workflow id>" ...)."""
        _, spec = self._spec(sig, task_id, queue, first_to_come=bool(mode))
        return GraphStep(
            spec=spec,
            deps=" ".join(f"{d}|{i}" for d, i in deps),
            input_mode=mode,
            on_failure=sig.opts.get("on_failure", "fail"),
            optional="1" if sig.opts.get("optional") else "0",
            xdeps=" ".join(f"{d}|{i}" for d, i in xdeps or ()),
            xdependants=xdependants,
        )

    async def enqueue_graph(
        self,
        queue: str,
        steps: list[GraphStep],
        workflow: GraphRecord | None,
        levels: Collection[str] = (),
    ) -> list[Any]:
        """Create tasks with dependencies in one queue, in order, in ONE script call: split
        in parts, an early step could end (and, with ttl=0, lose its record) before a later
        part made its dependants wait for it. `levels`: the durability of its tasks."""
        broker = await self.broker()
        ks = broker.keyspace(queue)
        await broker.register_queue(queue)
        call = broker.graph_call(ks, workflow, steps)
        need = need_for(levels, self.settings)
        if need is None:
            replies = await broker.run_calls([call], retry=True)
        else:
            ids = tuple(step.spec.id for step in steps)
            replies = await broker.run_durable([call], need, ids)
        return list(replies[0])

    async def enqueue_child(self, sig: Signature[R], task_id: str) -> TaskHandle[R]:
        """Enqueue a sub-task under a given id, in its parent's queue (the id's); a repeat
        finds the task already there and changes nothing."""
        sig.check()
        queue, spec = self._spec(sig, task_id, queue_of(task_id))
        # the parent reads its sub-tasks' results, and finds them again by id when it runs
        # again: their records must outlive it, so they are kept at least the default ttl
        default = self.settings.result_ttl_seconds
        keep = -1 if default is None else int(max(default, 3600.0) * 1000)
        if spec.ttl_ms >= 0 and (keep < 0 or spec.ttl_ms < keep):
            spec.ttl_ms = keep
        broker = self._broker or await self.broker()
        ks = broker.keyspace(queue)
        level = sig.opts.get("durability", self.settings.durability)
        if level == "memory":
            reply = (await broker.run_calls([broker.enqueue_call(ks, (spec,))], retry=True))[0][0]
        else:
            reply = await self._enqueue_durable(broker, ks, spec, level)
        return self._handle_for(sig, task_id, reply, spec)

    async def _enqueue_after(self, sig: Signature[R]) -> TaskHandle[R]:
        after = sig.opts.get("after") or []
        queue = self.queue_for(sig)
        deps: list[tuple[str, int]] = []
        xdeps: list[tuple[str, int]] = []
        for dep in after:
            dep_id = dep if isinstance(dep, str) else dep.id
            (deps if queue_of(dep_id) == queue else xdeps).append((dep_id, -1))
        step = self.graph_step(sig, None, None, deps, "", xdeps)
        level = sig.opts.get("durability", self.settings.durability)
        replies = await self.enqueue_graph(queue, [step], None, (level,))
        task_id = step.spec.id
        handle = self._handle_for(sig, task_id, replies[0], step.spec)
        if xdeps and handle.id == task_id:
            # the task exists (waiting) before its dependencies on other queues learn of
            # it: a client that stops in between leaves it WAITING, visible, not lost
            from segue._forward import watch

            watches: dict[str, list[Any]] = {}
            for dep_id, _ in xdeps:
                watches.setdefault(queue_of(dep_id), []).extend((dep_id, task_id, -1, ""))
            await watch(await self.broker(), self.settings, watches, (level,))
        return handle

    async def enqueue_one(self, sig: Signature[R]) -> TaskHandle[R]:
        """Enqueue one call (the path of `task.enqueue`, kept short: it is hot)."""
        if self.hooks:
            await call_hooks(self.hooks, "before_enqueue", sig)
            handle = await self._enqueue_one(sig)
            await call_hooks(self.hooks, "after_enqueue", sig, handle)
            return handle
        return await self._enqueue_one(sig)

    async def _enqueue_one(self, sig: Signature[R]) -> TaskHandle[R]:
        if "after" in sig.opts:
            return await self._enqueue_after(sig)
        queue, spec = self._spec(sig)
        broker = self._broker or await self.broker()
        ks = broker.keyspace(queue)
        await broker.register_queue(queue)
        level = sig.opts.get("durability", self.settings.durability)
        if level == "memory":
            reply = (await broker.run_calls([broker.enqueue_call(ks, (spec,))], retry=True))[0][0]
        else:
            reply = await self._enqueue_durable(broker, ks, spec, level)
        if reply.__class__ is int:
            return TaskHandle(
                self._client, spec.id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
            )
        return self._handle_for(sig, spec.id, reply, spec)

    async def _enqueue_durable(
        self, broker: Broker, ks: Keyspace, spec: EnqueueSpec, level: str
    ) -> Any:
        """One enqueue that waits for its durability level (not "memory")."""
        need = need_for((level,), self.settings)
        assert need is not None
        call = broker.enqueue_call(ks, (spec,))
        replies = await broker.run_durable([call], need, (spec.id,))
        return replies[0][0]

    async def enqueue_many(self, signatures: Iterable[Signature[R]]) -> list[TaskHandle[R]]:
        """Enqueue many calls: one script call per queue and batch of 1,000."""
        sigs = list(signatures)
        for sig in sigs if self.hooks else ():
            await call_hooks(self.hooks, "before_enqueue", sig)
        by_queue: dict[str, list[EnqueueSpec]] = {}
        order: dict[str, list[int]] = {}
        kept: list[EnqueueSpec] = []
        handles: list[TaskHandle[R]] = []
        levels: set[str] = set()
        default_level = self.settings.durability
        for n, sig in enumerate(sigs):
            if "after" in sig.opts:
                raise ConfigurationError(
                    "enqueue_many does not take signatures with after=; enqueue them one by "
                    "one, or build a workflow"
                )
            sig.check()
            levels.add(sig.opts.get("durability", default_level))
            queue, spec = self._spec(sig)
            by_queue.setdefault(queue, []).append(spec)
            order.setdefault(queue, []).append(n)
            kept.append(spec)
            handles.append(
                TaskHandle(
                    self._client, spec.id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
                )
            )
        broker = await self.broker()
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for queue, specs in by_queue.items():
            ks = broker.keyspace(queue)
            await broker.register_queue(queue)
            calls.extend(
                broker.enqueue_call(ks, specs[i : i + _BATCH]) for i in range(0, len(specs), _BATCH)
            )
        need = need_for(levels, self.settings)
        if need is None:
            done = await broker.run_calls(calls, retry=True)
        else:
            done = await broker.run_durable(calls, need, tuple(h.id for h in handles))
        replies = [r for reply in done for r in reply]
        positions = [n for queue in by_queue for n in order[queue]]
        for n, reply in zip(positions, replies, strict=True):
            if reply.__class__ is not int:  # a live task holds this unique task's key
                handles[n] = self._handle_for(sigs[n], handles[n].id, reply, kept[n])
        for sig, handle in zip(sigs, handles, strict=True) if self.hooks else ():
            await call_hooks(self.hooks, "after_enqueue", sig, handle)
        return handles

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
    ) -> Coroutine[Any, Any, str]: ...
    def schedule(
        self,
        sig: Signature[Any] | Task[[], Any] | str,
        *,
        cron: str | None = None,
        tz: str | None = None,
        id: str | None = None,
        catch_up: bool = False,
    ) -> Coroutine[Any, Any, str] | ScheduleHandle:
        """`await app.schedule(sig, cron=...)`: enqueue this call at every tick of `cron`
        from now on; returns the schedule's id. Scheduling an existing id again updates it
        (keeping its next tick if `cron` and `tz` are unchanged). Workers fire the ticks,
        each exactly once among them.

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
        return self._schedule(sig, cron, tz, id, catch_up)

    async def _schedule(
        self,
        sig: Signature[Any] | Task[[], Any],
        cron: str,
        tz: str | None,
        id: str | None,
        catch_up: bool,
    ) -> str:
        if isinstance(sig, Task):
            sig = sig.call()
        schedule = make_schedule(sig, cron=cron, tz=tz, sid=id, catch_up=catch_up)
        await _scheduler.put(self, await self.broker(), [schedule])
        return schedule.id

    async def unschedule(self, schedule_id: str) -> bool:
        """Remove a schedule (False if there was none): no tick after this fires."""
        return await _scheduler.remove(self.settings.prefix, await self.broker(), schedule_id)

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
        return Group(self, signatures)

    async def enqueue_workflow(self, root: Chain[Any] | Group[Any]) -> WorkflowHandle[Any]:
        """Enqueue a chain or a group as one graph (what their `enqueue()` calls)."""
        return await _workflow.enqueue_workflow(self, root)

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
        """Tasks of one queue in one status, paged (`offset`, `limit`)."""
        st = TaskStatus(status)
        reads = await self._client.reads()
        ks = reads.keyspace(queue or self.settings.queue)
        infos: list[TaskInfo] = []
        for task_id in await reads.list_ids(ks, st.value, offset, limit):
            rec = await reads.task_record(ks, task_id)
            if rec:
                info = parse_info(task_id, rec, self._registry.tasks)
                if info.status is st or st.is_final:
                    infos.append(info)
        return infos

    def queue(self, name: str | None = None) -> Queue:
        """One queue as a whole (default: the App's queue): pause, resume, counts."""
        return Queue(self._client, check_queue_name(name or self.settings.queue))

    async def retry(self, task_id: str) -> TaskHandle[Any]:
        """Queue a failed (e.g. dead-lettered), cancelled or expired task again."""
        handle = await self.task_handle(task_id)
        await handle.retry()
        return handle

    async def dead_letters(
        self, queue: str | None = None, *, offset: int = 0, limit: int = 100
    ) -> list[TaskInfo]:
        """Tasks of a queue that failed for good, newest first, paged."""
        reads = await self._client.reads()
        ks = reads.keyspace(queue or self.settings.queue)
        infos: list[TaskInfo] = []
        for task_id in await reads.dead_ids(ks, offset, limit):
            rec = await reads.task_record(ks, task_id)
            if rec:
                infos.append(parse_info(task_id, rec, self._registry.tasks))
        return infos

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
        async for event in follow(self._client, list(queues), since, block, task_id, kinds):
            yield event

    async def queues(self) -> list[str]:
        reads = await self._client.reads()
        return await reads.queues()

    async def queue_counts(self, queue: str | None = None) -> dict[str, int]:
        reads = await self._client.reads()
        return await reads.count(reads.keyspace(queue or self.settings.queue))

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
            self,
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
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker.run(install_signal_handlers=True))

    async def drain(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        horizon: float = 0.0,
    ) -> int:
        """Run a burst worker in this process until its queues are idle; returns how many
        runs it finished. For tests and scripts.

        It stops after a round in which, all at once: it runs nothing itself and has
        recorded every outcome; nothing is queued in its queues (a paused queue's tasks do
        not count) and no task of them runs on any worker; no task is RETRYING, however far
        off its next try; and nothing scheduled (a delay, `at=`, `Pause(delay=)`, a rate
        limit's next token) is due within `horizon` seconds of server time. It does not
        wait for PAUSED tasks, for tasks scheduled past the horizon, or for other queues."""
        worker = self.worker(queues=queues, concurrency=concurrency)
        finished: int = await worker.run_until_idle(horizon=horizon)
        return finished

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
