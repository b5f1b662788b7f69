"""Registry: what an App declares (tasks, cron schedules, worker lifespans, hooks). No I/O.

The decorators `@app.task` and `@app.cron` land here. Workers read the registry to run
tasks by name, open lifespans and register the declared schedules; clients read it to
decode records to the tasks' annotated types.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from segue._cron import make_schedule
from segue._errors import ConfigurationError
from segue._keys import check_queue_name
from segue._lifespan import Resource
from segue._options import TaskOptions
from segue._task import AsyncTask, SyncTask, Task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine
    from datetime import timedelta

    from segue._context import Context
    from segue._cron import Schedule
    from segue._hooks import Hook
    from segue._sync_context import SyncContext
    from segue._task import TaskOwner

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Registry:
    """The tasks by name, the declared schedules by id, the lifespans and the hooks of one
    App. `owner` is what its tasks enqueue through (and whose settings give defaults)."""

    __slots__ = ("_describe", "_owner", "crons", "hooks", "lifespans", "tasks")

    def __init__(
        self,
        owner: TaskOwner,
        tasks: dict[str, Task[Any, Any]],
        hooks: list[Hook],
        describe: Callable[[], str],
    ) -> None:
        self._owner = owner
        self._describe = describe  # the App as errors name it
        self.tasks = tasks  # shared with the client, which decodes records with them
        self.crons: dict[str, Schedule] = {}  # declared with @app.cron; workers register them
        self.lifespans: list[Resource[Any]] = []
        self.hooks = hooks  # shared with the enqueuer, which runs the enqueue hooks

    def __repr__(self) -> str:
        return f"<Registry tasks={len(self.tasks)} crons={len(self.crons)}>"

    def register(self, fn: Callable[..., Any], **options: Any) -> Task[Any, Any]:
        name = options.pop("name", None) or f"{fn.__module__}.{fn.__qualname__}"
        queue = options.pop("queue", None)
        if queue is not None:
            check_queue_name(queue)
        options.setdefault("ttl", self._owner.settings.result_ttl_seconds)
        opts = TaskOptions(name=name, queue=queue, **options)
        if name in self.tasks:
            raise ConfigurationError(
                f"a task named {name!r} is already registered on {self._describe()}"
            )
        cls = AsyncTask if asyncio.iscoroutinefunction(fn) else SyncTask
        task: Task[Any, Any] = cls(self._owner, fn, opts)
        if opts.executor == "process":
            _check_process_task(task, fn)
        self.tasks[name] = task
        return task

    def register_cron(
        self,
        fn: Callable[..., Any],
        options: dict[str, Any],
        cron: str,
        tz: str | None,
        catch_up: bool,
        unique: bool = False,
        expire: float | timedelta | None = None,
    ) -> Task[Any, Any]:
        """A task and its schedule, a call with no arguments at every tick; neither is kept
        if the schedule is refused."""
        task = self.register(fn, **options)
        try:
            schedule = make_schedule(
                task.call(), cron, tz, task.name, catch_up, unique=unique, expire=expire
            )
        except TypeError as exc:
            del self.tasks[task.name]
            raise ConfigurationError(
                f"cron task {task.name} is called with no arguments at each tick: {exc}"
            ) from None
        except ConfigurationError:
            del self.tasks[task.name]
            raise
        self.crons[task.name] = schedule
        return task

    def lifespan(self, fn: Callable[[], AsyncIterator[T]]) -> Resource[T]:
        res = Resource(fn, getattr(fn, "__qualname__", repr(fn)))
        self.lifespans.append(res)
        return res


def _check_process_task(task: Task[Any, Any], fn: Callable[..., Any]) -> None:
    """A process task runs in a child process that receives JSON and imports the function
    by name (_procpool.py): refuse, now, what could not run there."""
    where = f"task {task.name} (executor='process')"
    if task.is_async:
        raise ConfigurationError(
            f"{where} is an async function: a process runs sync functions (CPU-bound work); "
            "an async task already runs on the worker's event loop"
        )
    if task.takes_ctx:
        raise ConfigurationError(
            f"{where} takes a ctx parameter: ctx talks to the server through the worker's "
            "connections and event loop, which stay in the worker process, not in the child "
            "the task runs in. Drop ctx (pass what the task needs as arguments), or run it "
            "in a thread (the default executor) to use ctx"
        )
    if "<locals>" in fn.__qualname__:
        raise ConfigurationError(
            f"{where} is defined inside a function ({fn.__qualname__}): the child process "
            "imports it by name, so it must be at the top level of a module"
        )


class TaskDecorator:
    """What `@app.task(...)` returns: applies the options to the function it decorates."""

    def __init__(self, registry: Registry, options: dict[str, Any]) -> None:
        self._registry = registry
        self._options = options

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[Concatenate[Context, P], Coroutine[Any, Any, R]]
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[Concatenate[SyncContext, P], R]) -> SyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Context, P], R]) -> SyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> SyncTask[P, R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any]:
        return self._registry.register(fn, **self._options)


class CronDecorator:
    """What `@app.cron(...)` returns: registers the task, then its schedule, a call with no
    arguments at every tick (kept in the registry's crons; every worker registers it at
    start)."""

    def __init__(
        self,
        registry: Registry,
        options: dict[str, Any],
        *,
        cron: str,
        tz: str | None,
        catch_up: bool,
        unique: bool = False,
        expire: float | timedelta | None = None,
    ) -> None:
        self._registry = registry
        self._options = options
        self._schedule = (cron, tz, catch_up, unique, expire)

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[[Context], Coroutine[Any, Any, R]]
    ) -> AsyncTask[[], R]: ...
    @overload
    def __call__(self, fn: Callable[[], Coroutine[Any, Any, R]]) -> AsyncTask[[], R]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[[SyncContext], R]) -> SyncTask[[], R]: ...
    @overload
    def __call__(self, fn: Callable[[Context], R]) -> SyncTask[[], R]: ...
    @overload
    def __call__(self, fn: Callable[[], R]) -> SyncTask[[], R]: ...
    def __call__(self, fn: Callable[..., Any]) -> Task[Any, Any]:
        cron, tz, catch_up, unique, expire = self._schedule
        return self._registry.register_cron(
            fn, dict(self._options), cron, tz, catch_up, unique, expire
        )
