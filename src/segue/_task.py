"""Task[P, R]: a registered function, and Signature[R]: a call of it not yet enqueued."""

from __future__ import annotations

import asyncio
import inspect
import typing
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    Self,
    TypedDict,
    TypeVar,
    cast,
    overload,
)

from typing_extensions import Unpack

from segue._codec import ArgsDecoder, TypedDecoder
from segue._context import Context
from segue._errors import ConfigurationError
from segue._options import check_durability, check_key, check_priority
from segue._signals import local_signals, set_local
from segue._sync_context import SyncContext

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Sequence
    from datetime import datetime, timedelta

    from segue._handle import TaskHandle, WorkflowHandle
    from segue._options import Durability, OnDuplicate, Priority, TaskOptions
    from segue._settings import Settings

P = ParamSpec("P")
R = TypeVar("R")
R2 = TypeVar("R2")
A = TypeVar("A")
P2 = ParamSpec("P2")


class EnqueueOptions(TypedDict, total=False):
    """Options of one enqueue: `task.options(**these).enqueue(...)`."""

    delay: float | timedelta
    at: datetime
    priority: Priority
    queue: str
    key: str
    max_tries: int
    timeout: float | None
    ttl: float | None
    after: Sequence[TaskHandle[Any] | str]
    on_failure: Literal["fail", "cancel"]
    optional: bool
    expire: float | timedelta | datetime | None
    on_duplicate: OnDuplicate
    headers: dict[str, str]
    durability: Durability
    name: str  # a workflow step's label, unique in its workflow (wf.signal(step, ...))
    compensate: Signature[Any]


_ENQUEUE_KEYS = frozenset(EnqueueOptions.__annotations__)


def takes_context(fn: Callable[..., Any], hints: dict[str, Any]) -> bool:
    """A task takes a Context when its first parameter is annotated so (or named `ctx`)."""
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (
        params[0].POSITIONAL_ONLY,
        params[0].POSITIONAL_OR_KEYWORD,
    ):
        return False
    first = params[0]
    ann = hints.get(first.name, first.annotation)
    if ann in (Context, SyncContext, "Context", "SyncContext"):
        return True
    return ann is first.empty and first.name == "ctx"


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # unresolvable annotations: decode as plain JSON rather than refuse the task
        return {}


class TaskOwner(Protocol):
    """What tasks, chains and groups need of the App that declares them: its settings (the
    default queue) and the way to enqueue. This module sits below the App, so it names
    what it uses rather than the App itself."""

    @property
    def settings(self) -> Settings: ...
    async def enqueue_one(self, sig: Signature[R]) -> TaskHandle[R]: ...
    async def enqueue_workflow(self, root: Chain[Any] | Group[Any]) -> WorkflowHandle[Any]: ...


class Signature(Generic[R]):
    """A task with its arguments and options, ready to enqueue or to put in a workflow."""

    __slots__ = ("args", "complete", "headers", "kwargs", "opts", "task")

    def __init__(
        self,
        task: Task[Any, R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        opts: EnqueueOptions,
        *,
        complete: bool = False,
    ) -> None:
        self.task = task
        self.args = args
        self.kwargs = kwargs
        self.opts = opts
        # the arguments are known to fit the whole signature (checked once, at call())
        self.complete = complete
        # carried to the run as ctx.headers; hooks add to it in before_enqueue (tracing)
        self.headers: dict[str, str] = {}

    def options(self, **options: Unpack[EnqueueOptions]) -> Signature[R]:
        merged = _merge(self.opts, options)
        return Signature(self.task, self.args, self.kwargs, merged, complete=self.complete)

    def check(self) -> None:
        """Refuse arguments that do not fit the task's parameters (before enqueueing)."""
        if not self.complete:
            self.task.check_args(self.args, self.kwargs)
            self.complete = True

    async def enqueue(self) -> TaskHandle[R]:
        self.check()
        return await self.task._owner.enqueue_one(self)

    @overload
    def __or__(self, other: Group[R2]) -> Chain[list[R2]]: ...
    @overload
    def __or__(self, other: Signature[R2] | Chain[R2] | Task[Any, R2]) -> Chain[R2]: ...
    def __or__(self, other: Any) -> Chain[Any]:
        """`a.call(x) | b.call()`: a chain; each step gets the previous result first."""
        return Chain(self.task._owner, (self, _as_node(other)))

    def then(
        self, task: Task[Concatenate[R, P2], R2], *args: P2.args, **kwargs: P2.kwargs
    ) -> Chain[R2]:
        """A chain of this call and `task`, which receives this call's result first."""
        return Chain(self.task._owner, (self, Signature(task, args, kwargs, task.call_options)))

    def __repr__(self) -> str:
        return f"<Signature {self.task.name}{self.args!r}>"


def _merge(base: EnqueueOptions, extra: EnqueueOptions) -> EnqueueOptions:
    unknown = set(extra) - _ENQUEUE_KEYS
    if unknown:
        raise ConfigurationError(
            f"unknown enqueue option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(_ENQUEUE_KEYS))}"
        )
    if "priority" in extra:
        check_priority(extra["priority"])
    if "durability" in extra:
        check_durability(extra["durability"], "options()")
    if "key" in extra:
        check_key(extra["key"])
    if "compensate" in extra and not isinstance(extra["compensate"], Signature):
        raise ConfigurationError(
            "compensate= takes a call, e.g. charge.call(order).options(compensate=refund.call())"
        )
    merged = base.copy()
    merged.update(extra)
    return merged


class Task(Generic[P, R]):
    """A function registered with an App; enqueue it, call it, or run it locally."""

    # a task known by its name only (app.send, _send.ByName): "send" and what its worker
    # supplies (the record's fw field); '' for a task declared with its code
    by_name = ""

    def __init__(
        self,
        owner: TaskOwner,
        fn: Callable[..., Any],
        opts: TaskOptions,
        call_options: EnqueueOptions | None = None,
    ) -> None:
        self._owner = owner
        self.fn = fn
        self.opts = opts
        self.call_options: EnqueueOptions = call_options or {}
        hints = _hints(fn)
        self.takes_ctx = takes_context(fn, hints)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.args_decoder = ArgsDecoder(fn, hints, self.takes_ctx)
        self.result_decoder = TypedDecoder(hints.get("return", inspect.Parameter.empty))
        self._signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.opts.name

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    @property
    def queue(self) -> str:
        """The queue enqueues go to unless an enqueue option says otherwise."""
        return self.opts.queue or self._owner.settings.queue

    def options(self, **options: Unpack[EnqueueOptions]) -> Self:
        """A copy of this task whose enqueues use these options."""
        return type(self)(self._owner, self.fn, self.opts, _merge(self.call_options, options))

    @overload
    def call(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]: ...
    @overload
    def call(
        self: Task[Concatenate[A, P2], R], *args: P2.args, **kwargs: P2.kwargs
    ) -> Signature[R]: ...
    def call(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """This task with arguments, not yet enqueued (for enqueue_many and workflows).

        Arguments may leave out the first parameter, which a chain fills with the previous
        step's result; they are checked in full when the signature is enqueued."""
        try:
            self.check_args(args, kwargs)
            complete = True
        except TypeError:
            self.check_args(args, kwargs, partial=True)  # a chain step: first arg to come
            complete = False
        return Signature(self, args, kwargs, self.call_options, complete=complete)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Put one run of this task in its queue; returns a handle to follow it."""
        self.check_args(args, kwargs)
        sig = Signature(self, args, kwargs, self.call_options, complete=True)
        return await self._owner.enqueue_one(sig)

    async def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now, without a queue (sync functions in a thread).
        `signals={name: [data, ...]}` (taken out of the arguments when the function has no
        parameter of that name) hands `ctx.wait_signal` its signals, in order."""
        token = None
        if "signals" in kwargs and "signals" not in self._signature.parameters:
            token = set_local(cast("Any", kwargs.pop("signals")))
        try:
            call_args: tuple[Any, ...] = (self.local_context(), *args) if self.takes_ctx else args
            if self.is_async:
                return cast("R", await self.fn(*call_args, **kwargs))
            if self.takes_ctx:
                call_args = (SyncContext(call_args[0]), *args)
            return cast("R", await asyncio.to_thread(self.fn, *call_args, **kwargs))
        finally:
            if token is not None:
                local_signals.reset(token)

    def local_context(self) -> Context:
        return Context(
            task_id=f"{self.queue}:local",
            name=self.name,
            tries=1,
            worker_id="local",
            queue=self.queue,
            version=self.opts.version,
        )

    def check_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], *, partial: bool = False
    ) -> None:
        """Refuse a call that does not fit the function's parameters, before enqueueing."""
        bind = self._signature.bind_partial if partial else self._signature.bind
        try:
            if self.takes_ctx:
                bind(None, *args, **kwargs)
            else:
                bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"wrong arguments for task {self.name}: {exc}") from None


class AsyncTask(Task[P, R]):
    """A task whose function is a coroutine function; calling it gives a coroutine."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self.run(*args, **kwargs)


class SyncTask(Task[P, R]):
    """A task whose function is synchronous; calling it runs it and returns its value."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        call_args = (SyncContext(self.local_context()), *args) if self.takes_ctx else args
        return cast("R", self.fn(*call_args, **kwargs))


def _as_node(other: Any) -> Signature[Any] | Chain[Any] | Group[Any]:
    if isinstance(other, Task):
        return Signature(other, (), {}, other.call_options)
    if isinstance(other, Signature | Chain | Group):
        return other
    raise TypeError(f"cannot chain {other!r}: expected a task, a signature, a chain or a group")


class Chain(Generic[R]):
    """Steps run one after another, each receiving the previous step's result first."""

    __slots__ = ("_owner", "stages")

    def __init__(
        self, owner: TaskOwner, stages: tuple[Signature[Any] | Chain[Any] | Group[Any], ...]
    ):
        self._owner = owner
        self.stages = stages

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.stages)

    @overload
    def __or__(self, other: Group[R2]) -> Chain[list[R2]]: ...
    @overload
    def __or__(self, other: Signature[R2] | Chain[R2] | Task[Any, R2]) -> Chain[R2]: ...
    def __or__(self, other: Any) -> Chain[Any]:
        return Chain(self._owner, (*self.stages, _as_node(other)))

    def then(
        self, task: Task[Concatenate[R, P2], R2], *args: P2.args, **kwargs: P2.kwargs
    ) -> Chain[R2]:
        """Add a step that receives this chain's result as its first argument."""
        return Chain(self._owner, (*self.stages, Signature(task, args, kwargs, task.call_options)))

    async def enqueue(self) -> WorkflowHandle[R]:
        return await self._owner.enqueue_workflow(self)


class Group(Generic[R]):
    """Steps run in parallel; a step after the group receives the list of their results."""

    __slots__ = ("_owner", "members")

    def __init__(
        self,
        owner: TaskOwner,
        members: Iterable[Signature[R] | Chain[R] | Group[Any] | Task[Any, R]],
    ):
        self._owner = owner
        self.members = tuple(_as_node(m) for m in members)
        if not self.members:
            raise ConfigurationError("a group needs at least one step")

    def __repr__(self) -> str:
        return f"group({', '.join(repr(m) for m in self.members)})"

    @overload
    def __or__(self, other: Group[R2]) -> Chain[list[R2]]: ...
    @overload
    def __or__(self, other: Signature[R2] | Chain[R2] | Task[Any, R2]) -> Chain[R2]: ...
    def __or__(self, other: Any) -> Chain[Any]:
        return Chain(self._owner, (self, _as_node(other)))

    def then(
        self, task: Task[Concatenate[list[R], P2], R2], *args: P2.args, **kwargs: P2.kwargs
    ) -> Chain[R2]:
        """Add a step that receives the list of the members' results as its first argument."""
        return Chain(self._owner, (self, Signature(task, args, kwargs, task.call_options)))

    async def enqueue(self) -> WorkflowHandle[list[R]]:
        return await self._owner.enqueue_workflow(self)
