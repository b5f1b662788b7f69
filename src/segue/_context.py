"""Context: what a running task knows about its own run, and its durable state.

A worker builds a Context bound to the run (`RunControl`): `ctx.state` writes are fenced to
that run, and `ctx.checkpoint()` carries out a pause or cancel that an operator asked for.
A task run locally (called directly, or `task.run()`) gets a Context whose state lives in
memory and whose checkpoint never stops it. Sync tasks get `SyncContext`: the same names,
blocking, safe to call from the worker's threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from segue import _clock
from segue._broker import server_unreachable
from segue._codec import decode_plain, encode
from segue._errors import BrokerError, ConfigurationError, LeaseLost, PayloadError
from segue._faults import faultpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Sequence

    from segue._broker import Broker
    from segue._handle import TaskHandle
    from segue._keys import Keyspace
    from segue._lifespan import Resource

_task_log = logging.getLogger("segue.task")
log = logging.getLogger("segue.worker")
R = TypeVar("R")
T = TypeVar("T")
_MISSING: Any = object()


class PauseRequested(BaseException):
    """Raised at a checkpoint when an operator paused the run (not an error of the task).

    A BaseException, like CancelledError, so that `except Exception` in task code does not
    swallow it."""


class WaitingForSubtasks(BaseException):
    """Raised by `ctx.wait_for` when sub-tasks are still running: the run stops, the task
    WAITS without holding a worker slot, and the last sub-task to end queues it again."""


class ServerUnreachable(BaseException):
    """Raised by a ctx call when the server stayed unreachable for half a lease: the run
    stops and goes back to its queue without spending a try (an outage is not the task's
    fault). A BaseException, so that `except Exception` in task code does not swallow it."""


class Call(Protocol[R]):
    """A Signature as a Context sees it (this module sits below _task)."""

    def check(self) -> None: ...
    def enqueue(self) -> Coroutine[Any, Any, TaskHandle[R]]: ...


class RunControl:
    """The worker's side of one run: the operator request the run should obey."""

    __slots__ = ("broker", "enqueue_child", "gen", "ks", "lease_seconds", "request", "resources")

    def __init__(
        self,
        enqueue_child: Callable[[Any, str], Awaitable[TaskHandle[Any]]],  # under an id
        broker: Broker,
        ks: Keyspace,
        gen: str,
        resources: dict[Resource[Any], Any] | None = None,
        *,
        lease_seconds: float,
    ) -> None:
        self.enqueue_child = enqueue_child
        self.lease_seconds = lease_seconds
        self.resources = resources or {}
        self.broker = broker
        self.ks = ks
        self.gen = gen
        self.request: str | None = None

    async def call(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        """`send()`, a server call of ctx, sent again while the server is unreachable, for up
        to half a lease from the first sending: leases outlive such an outage (a lease keeps
        what it had left, up to half a lease, see bridge_gap), so the run goes on past it.
        Longer, ServerUnreachable stops the run, which is requeued without spending a try.
        Every ctx call is safe to send again: state writes and events are fenced to the
        run, sub-task ids are fixed, reads are reads."""
        give_up = _clock.monotonic() + self.lease_seconds / 2
        pause, failed = 0.05, False
        while True:
            try:
                if not failed:
                    return await send()
                # a resend may hang on a cut-off connection: it too ends at the deadline
                async with asyncio.timeout(max(give_up - _clock.monotonic(), 0.01)):
                    return await send()
            except BrokerError as exc:
                if not server_unreachable(exc):
                    raise
                cause: BaseException = exc
            except TimeoutError as exc:
                if not failed:
                    raise
                cause = exc
            now = _clock.monotonic()
            if not failed:
                failed = True
                log.warning(
                    "%s: the server is unreachable (%s); sending again for up to %.1f s",
                    what,
                    cause,
                    max(give_up - now, 0),
                )
            if now >= give_up:
                raise ServerUnreachable(
                    f"{what}: the server stayed unreachable for half a lease"
                ) from cause
            await asyncio.sleep(min(pause, give_up - now))
            pause = min(pause * 2, 1.0)


class _TaskLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('task_id')}] {msg}", kwargs


class TaskState:
    """A task's durable dict of JSON values: kept across tries, pauses, worker deaths and
    server restarts (AOF), deleted when the task ends."""

    def __init__(self, task_id: str, run: RunControl | None, limit: int) -> None:
        self._id = task_id
        self._run = run
        self._limit = limit
        self._local: dict[str, Any] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default`."""
        if self._run is None:
            return self._local.get(key, default)
        values = await self.all()
        return values.get(key, default)

    async def all(self) -> dict[str, Any]:
        """Every stored value, in one round trip."""
        if self._run is None:
            return dict(self._local)
        run = self._run
        raw = await run.call(
            f"task {self._id}: ctx.state", lambda: run.broker.reads.read_state(run.ks, self._id)
        )
        return {k.decode(): decode_plain(v) for k, v in raw.items()}

    async def set(self, **values: Any) -> None:
        """Store several values atomically (one round trip), fenced to this run."""
        encoded = {}
        for key, value in values.items():
            try:
                encoded[key] = encode(value, what=f"state value {key!r}", limit=self._limit)
            except PayloadError as exc:
                raise PayloadError(f"ctx.state.set: {exc}") from None
        await self._write(encoded, [])
        if self._run is None:
            self._local.update(values)

    async def delete(self, *keys: str) -> None:
        """Remove keys (missing keys are ignored)."""
        await self._write({}, list(keys))
        for key in keys:
            self._local.pop(key, None)

    async def _write(self, values: dict[str, bytes], deletes: list[str]) -> None:
        run = self._run
        if run is None:
            return
        stored = await run.call(
            f"task {self._id}: ctx.state",
            lambda: run.broker.write_state(run.ks, self._id, run.gen, values, deletes),
        )
        faultpoint("mid_checkpoint")
        if not stored:
            raise LeaseLost(
                f"task {self._id}: this run no longer holds the task (its lease was taken "
                "over, or it was cancelled), so its state write was refused"
            )


class Context:
    """Passed as the first parameter to tasks that declare `ctx: Context`.

    Attributes: `task_id`, `name`, `tries` (1 on the first run), `worker_id`, `queue`,
    `log` (a logger whose lines carry the task id), and `state` (durable per-task values).
    """

    __slots__ = (
        "_run",
        "_seq",
        "headers",
        "log",
        "name",
        "queue",
        "state",
        "task_id",
        "tries",
        "worker_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        name: str,
        tries: int,
        worker_id: str,
        queue: str,
        run: RunControl | None = None,
        state_limit: int = 1 << 20,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.tries = tries
        self.worker_id = worker_id
        self.queue = queue
        self._run = run
        self._seq = 0
        self.headers: dict[str, str] = headers or {}
        self.state = TaskState(task_id, run, state_limit)
        self.log: logging.LoggerAdapter[logging.Logger] = _TaskLog(
            _task_log, {"task_id": task_id, "task_name": name}
        )

    async def checkpoint(self) -> None:
        """A safe point to stop: carries out a pause requested by an operator (the task is
        then PAUSED and resumes later from its state). Cheap: no round trip."""
        self._check()
        await asyncio.sleep(0)

    def get(self, resource: Resource[T]) -> T:
        """The value a worker lifespan (`@app.lifespan`) opened for this worker's tasks."""
        run = self._run
        if run is None or resource not in run.resources:
            where = "this worker did not open it" if run else "a local run opens no lifespan"
            raise ConfigurationError(f"resource {resource.name!r} is not available: {where}")
        value: T = run.resources[resource]
        return value

    async def progress(
        self, done: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report how far the task is (shown by `info()`, the CLI and the dashboard, and
        streamed as a task.progress event), with an optional message. One round trip;
        also a checkpoint."""
        run = self._run
        if run is not None:
            total_text = "" if total is None else repr(total)
            await run.call(
                f"task {self.task_id}: ctx.progress",
                lambda: run.broker.task_event(
                    run.ks, self.task_id, run.gen, "progress", repr(done), total_text, message or ""
                ),
            )
        await self.checkpoint()

    async def emit(self, name: str, data: Any = None) -> None:
        """Put an event of the task's own on its queue's event stream (`app.events()`)."""
        run = self._run
        if run is None:
            self.log.info("event %s %r (local run: not streamed)", name, data)
            return
        payload = encode(data, what=f"data of event {name!r}", limit=self.state._limit)
        await run.call(
            f"task {self.task_id}: ctx.emit",
            lambda: run.broker.task_event(
                run.ks, self.task_id, run.gen, "emit", name, payload.decode()
            ),
        )

    @overload
    async def enqueue(self, signatures: Call[R], /) -> TaskHandle[R]: ...
    @overload
    async def enqueue(self, signatures: Iterable[Call[R]], /) -> list[TaskHandle[R]]: ...
    async def enqueue(self, signatures: Any, /) -> Any:
        """Start sub-tasks of this task, in its queue. Their ids come from this task's id
        and a count, so a re-run of this task (after a worker death, or after `wait_for`)
        gets the same handles back instead of starting them twice."""
        single = not isinstance(signatures, Iterable)  # a Signature, or several
        sigs: list[Call[Any]] = [signatures] if single else list(signatures)
        run = self._run
        if run is None:
            local = [await s.enqueue() for s in sigs]
            return local[0] if single else local
        handles: list[TaskHandle[Any]] = []
        for sig in sigs:
            self._seq += 1
            send = functools.partial(run.enqueue_child, sig, f"{self.task_id}.{self._seq}")
            handles.append(await run.call(f"task {self.task_id}: ctx.enqueue", send))
        return handles[0] if single else handles

    async def wait_for(self, handles: Sequence[TaskHandle[R]]) -> list[R]:
        """The results of sub-tasks, in order. If some have not ended, this run stops here
        and the task WAITS (no worker slot held, the try not spent); when the last one ends
        the task runs again from the start, with its state, and `wait_for` returns at once.
        Raises TaskFailed or TaskCancelled for a sub-task that did not succeed."""
        run = self._run
        if run is not None:
            ids = [h.id for h in handles]
            left = await run.call(
                f"task {self.task_id}: ctx.wait_for",
                lambda: run.broker.wait_children(run.ks, self.task_id, run.gen, ids),
            )
            if left < 0:
                raise LeaseLost(f"task {self.task_id}: this run no longer holds the task")
            if left > 0:
                self.log.info("waiting for %d sub-task(s)", left)
                raise WaitingForSubtasks
            what = f"task {self.task_id}: ctx.wait_for"
            return [await run.call(what, h.result) for h in handles]
        return [await h.result() for h in handles]

    def _check(self) -> None:
        run = self._run
        if run is not None and run.request == "pause":
            raise PauseRequested
        if run is not None and run.request == "cancel":
            raise asyncio.CancelledError

    def __repr__(self) -> str:
        return f"<Context {self.task_id} {self.name} try={self.tries} worker={self.worker_id}>"


class SyncState:
    """`TaskState` for sync tasks: the same methods, blocking (run on the worker's loop)."""

    def __init__(self, state: TaskState, loop: asyncio.AbstractEventLoop | None) -> None:
        self._state = state
        self._loop = loop

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            # a local run keeps state in memory: the coroutine finishes without awaiting
            try:
                coro.send(None)
            except StopIteration as done:
                return done.value
            raise RuntimeError("local task state unexpectedly awaited")  # pragma: no cover
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def get(self, key: str, default: Any = None) -> Any:
        return self._call(self._state.get(key, default))

    def all(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call(self._state.all())
        return result

    def set(self, **values: Any) -> None:
        self._call(self._state.set(**values))

    def delete(self, *keys: str) -> None:
        self._call(self._state.delete(*keys))


class SyncContext:
    """The Context of a sync task: same names as Context, with blocking methods.

    A sync task can be paused or cancelled only at `ctx.checkpoint()`: a thread cannot be
    interrupted, so a sync task that never checkpoints runs to its end."""

    __slots__ = (
        "_ctx",
        "headers",
        "log",
        "name",
        "queue",
        "state",
        "task_id",
        "tries",
        "worker_id",
    )

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._ctx = ctx
        self.headers = ctx.headers
        self.task_id = ctx.task_id
        self.name = ctx.name
        self.tries = ctx.tries
        self.worker_id = ctx.worker_id
        self.queue = ctx.queue
        self.log = ctx.log
        self.state = SyncState(ctx.state, loop)

    def checkpoint(self) -> None:
        """A safe point to stop: carries out a pause or cancel asked for by an operator."""
        self._ctx._check()

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """`Context.progress`, blocking."""
        self.state._call(self._ctx.progress(done, total, message))

    def emit(self, name: str, data: Any = None) -> None:
        """`Context.emit`, blocking."""
        self.state._call(self._ctx.emit(name, data))

    def get(self, resource: Resource[T]) -> T:
        """`Context.get`: a worker lifespan's value."""
        return self._ctx.get(resource)

    def enqueue(self, signatures: Any, /) -> Any:
        """`Context.enqueue`, blocking."""
        return self.state._call(self._ctx.enqueue(signatures))

    def wait_for(self, handles: Sequence[TaskHandle[R]]) -> list[R]:
        """`Context.wait_for`, blocking."""
        results: list[R] = self.state._call(self._ctx.wait_for(handles))
        return results

    def __repr__(self) -> str:
        return f"<SyncContext {self.task_id} {self.name} try={self.tries}>"
