"""Enqueue by name (`app.send`, `segue enqueue`): a producer that does not import a task's code.

Such a producer knows the name and the arguments, nothing else. What it cannot know is left
to the worker that claims the task: `max_tries`, `timeout` and `version` (unless passed;
the record's `fw` field lists what the worker supplies), retry backoff and limits (always
the worker's, as for every task). Arguments are checked there too: a call that does not
fit the function ends FAILED with reason `bad_arguments`, naming the parameter. A name no
worker knows is released and then failed `unknown_task`, as for any task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict

from segue._codec import TypedDecoder
from segue._errors import ConfigurationError
from segue._keys import check_queue_name
from segue._options import TaskOptions
from segue._task import EnqueueOptions, Signature, Task, _merge

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime, timedelta

    from segue._handle import TaskHandle
    from segue._options import Durability, OnDuplicate, Priority
    from segue._task import TaskOwner


class SendOptions(TypedDict, total=False):
    """Options of `app.send` besides `kwargs`, `queue` and `unique`: those of
    `task.options(...)` that a call by name can carry (`after=` included)."""

    delay: float | timedelta
    at: datetime
    priority: Priority
    key: str
    max_tries: int
    timeout: float | None
    ttl: float | None
    after: Sequence[TaskHandle[Any] | str]
    on_failure: Literal["fail", "cancel"]
    expire: float | timedelta | datetime | None
    on_duplicate: OnDuplicate
    headers: dict[str, str]
    durability: Durability


SEND_OPTIONS = frozenset(SendOptions.__annotations__)


def _untyped(*args: Any, **kwargs: Any) -> None:
    """The stand-in function of a task known by name only: any arguments bind to it, and
    nothing decodes them to types here."""


class ByName(Task[..., Any]):
    """A task known by its name only: what `app.send` enqueues. Never run here."""

    def __init__(
        self, owner: TaskOwner, opts: TaskOptions, call_options: EnqueueOptions, marks: str
    ) -> None:
        super().__init__(owner, _untyped, opts, call_options)
        self.result_decoder = TypedDecoder(Any)  # plain JSON: the result's type is not known
        self.by_name = marks

    def __repr__(self) -> str:
        return f"<task {self.name} by name>"


def signature(
    owner: TaskOwner,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue: str | None,
    unique: bool | str,
    version: int | None = None,
    options: dict[str, Any],
) -> Signature[Any]:
    """The call `app.send(name, *args, queue=..., **options)` enqueues."""
    if not name or any(c.isspace() for c in name):
        raise ConfigurationError(f"app.send: the task name must be a non-empty word, not {name!r}")
    unknown = set(options) - SEND_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"app.send({name!r}): unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: queue, unique, {', '.join(sorted(SEND_OPTIONS))}"
        )
    if queue is not None:
        check_queue_name(queue)
    if unique == "":
        raise ConfigurationError(f"app.send({name!r}): a unique key must not be empty")
    opts = TaskOptions(
        name=name,
        queue=queue,
        # the enqueue's own; max_tries and timeout stand in for the worker's (see fw)
        ttl=owner.settings.result_ttl_seconds,
        unique=_keyed(unique) if isinstance(unique, str) else unique,
        version=1 if version is None else version,
    )
    call_options = _merge({}, options)  # type: ignore[arg-type]
    task = ByName(owner, opts, call_options, "send v" if version is None else "send")
    return Signature(task, args, kwargs, call_options, complete=True)


def _keyed(key: str) -> Callable[..., str]:
    def unique_key(*_args: Any, **_kwargs: Any) -> str:
        return key

    return unique_key


def from_worker(opts: EnqueueOptions, marks: str) -> str:
    """The record's `fw` field for a call by name: `marks` ("send", and "v" when no version
    was passed), then "mt" / "to" when the claiming worker's definition supplies max_tries /
    timeout (not passed here)."""
    out = marks.split()
    if "max_tries" not in opts:
        out.append("mt")
    if "timeout" not in opts:
        out.append("to")
    return " ".join(out)


async def send(
    owner: TaskOwner,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue: str | None = None,
    unique: bool | str = False,
    version: int | None = None,
    options: dict[str, Any],
) -> TaskHandle[Any]:
    sig = signature(
        owner, name, args, kwargs, queue=queue, unique=unique, version=version, options=options
    )
    return await owner.enqueue_one(sig)
