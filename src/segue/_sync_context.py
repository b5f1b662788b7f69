"""SyncContext: the Context of a sync task, with the same names, blocking.

A sync task runs in one of the worker's threads; each call here hands the coroutine of the
matching Context method to the worker's event loop and waits for it (a local run has no
loop: its state lives in memory and its coroutines finish without awaiting).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from typing import TYPE_CHECKING, Any, TypeVar

from segue import _clock
from segue._context import _PASS_THROUGH, Context, TaskState
from segue._faults import faultpoint
from segue._journal import Sleeping, enter_step, leave_step
from segue._journal import now as journal_now
from segue._signals import MISSING as NO_DEFAULT

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime, timedelta

    from segue._handle import TaskHandle
    from segue._lifespan import Resource
    from segue._options import ParentEnd

R = TypeVar("R")
T = TypeVar("T")


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
        "version",
        "worker_id",
    )

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._ctx = ctx
        self.headers = ctx.headers
        self.task_id = ctx.task_id
        self.name = ctx.name
        self.tries = ctx.tries
        self.version = ctx.version
        self.worker_id = ctx.worker_id
        self.queue = ctx.queue
        self.log = ctx.log
        self.state = SyncState(ctx.state, loop)

    def checkpoint(self) -> None:
        """A safe point to stop: carries out a pause or cancel asked for by an operator."""
        self._ctx._check()

    def on_query(self, name: str, fn: Callable[..., Any]) -> None:
        """`Context.on_query`. The handler runs on the worker's event loop thread while the
        task runs in its own: it must be thread-safe (read values the task replaces whole,
        or guard them with a lock)."""
        self._ctx.on_query(name, fn)

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """`Context.progress`, blocking."""
        self.state._call(self._ctx.progress(done, total, message))

    def stream(self, chunk: Any) -> None:
        """`Context.stream`, blocking."""
        self.state._call(self._ctx.stream(chunk))

    def emit(self, name: str, data: Any = None) -> None:
        """`Context.emit`, blocking."""
        self.state._call(self._ctx.emit(name, data))

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """`Context.step`, blocking: `fn` (sync, or async run on the worker's loop) runs
        in this thread."""
        journal = self._ctx._journal
        journal.claim_name(name, "ctx.step")
        self.state._call(journal.load())
        entry = journal.lookup(name)
        if entry is not None:
            return journal.replay(name, entry, fn)
        started = _clock.wall()
        token = enter_step(name)
        try:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._await(value)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            data, failed = journal.failure(name, exc)
            faultpoint("after_step_effect")
            self.state._call(journal.record(name, data, started, ok=False, error_type=failed.type))
            raise failed from exc
        finally:
            leave_step(token)
        faultpoint("after_step_effect")
        data, value = journal.success(name, fn, value)
        self.state._call(journal.record(name, data, started, ok=True))
        return value

    def sleep(self, seconds: float | timedelta) -> None:
        """`Context.sleep`, blocking."""
        self._sleep(self._ctx._sleep_due(seconds, "ctx.sleep"))

    def sleep_until(self, when: datetime) -> None:
        """`Context.sleep_until`, blocking."""
        self._sleep(self._ctx._until(when))

    def _sleep(self, due: float) -> None:
        journal = self._ctx._journal
        name = journal.auto_name("sleep")
        journal.claim_name(name, "ctx.sleep")
        self.state._call(journal.load())
        entry = journal.lookup(name)
        if entry is not None:
            due = journal.due_of(entry)
        else:
            self.state._call(journal.record(name, journal.sleep_entry(due), _clock.wall(), ok=True))
        rest = due - journal_now()
        if rest <= 0 or journal.local:
            return
        if rest < journal.inline_seconds:
            time.sleep(rest)
            return
        raise Sleeping(math.ceil(rest * 1000))

    def wait_signal(
        self, name: str, *, timeout: float | timedelta | None = None, default: Any = NO_DEFAULT
    ) -> Any:
        """`Context.wait_signal`, blocking."""
        return self.state._call(self._ctx.wait_signal(name, timeout=timeout, default=default))

    def _await(self, value: Any) -> Any:
        loop = self.state._loop
        if loop is None:
            return asyncio.run(value)
        return asyncio.run_coroutine_threadsafe(value, loop).result()

    def get(self, resource: Resource[T]) -> T:
        """`Context.get`: a worker lifespan's value."""
        return self._ctx.get(resource)

    def enqueue(self, signatures: Any, /, *, on_parent_end: ParentEnd = "cancel") -> Any:
        """`Context.enqueue`, blocking."""
        return self.state._call(self._ctx.enqueue(signatures, on_parent_end=on_parent_end))

    def wait_for(self, handles: Sequence[TaskHandle[R]]) -> list[R]:
        """`Context.wait_for`, blocking."""
        results: list[R] = self.state._call(self._ctx.wait_for(handles))
        return results

    def __repr__(self) -> str:
        return f"<SyncContext {self.task_id} {self.name} try={self.tries}>"
