"""Context: what a running task knows about its own run, and its durable state.

A worker builds a Context bound to the run (`RunControl`): `ctx.state` writes are fenced to
that run, and `ctx.checkpoint()` carries out a pause or cancel that an operator asked for.
A task run locally (called directly, or `task.run()`) gets a Context whose state lives in
memory and whose checkpoint never stops it. Sync tasks get `SyncContext`: the same names,
blocking, safe to call from the worker's threads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from segue._codec import decode_plain, encode
from segue._errors import LeaseLost, PayloadError

if TYPE_CHECKING:
    from segue._broker import Broker
    from segue._keys import Keyspace

_task_log = logging.getLogger("segue.task")
_MISSING: Any = object()


class PauseRequested(BaseException):
    """Raised at a checkpoint when an operator paused the run (not an error of the task).

    A BaseException, like CancelledError, so that `except Exception` in task code does not
    swallow it."""


class RunControl:
    """The worker's side of one run: the operator request the run should obey."""

    __slots__ = ("broker", "gen", "ks", "request")

    def __init__(self, broker: Broker, ks: Keyspace, gen: str) -> None:
        self.broker = broker
        self.ks = ks
        self.gen = gen
        self.request: str | None = None


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
        raw = await self._run.broker.read_state(self._run.ks, self._id)
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
        if not await run.broker.write_state(run.ks, self._id, run.gen, values, deletes):
            raise LeaseLost(
                f"task {self._id}: this run no longer holds the task (its lease was taken "
                "over, or it was cancelled), so its state write was refused"
            )


class Context:
    """Passed as the first parameter to tasks that declare `ctx: Context`.

    Attributes: `task_id`, `name`, `tries` (1 on the first run), `worker_id`, `queue`,
    `log` (a logger whose lines carry the task id), and `state` (durable per-task values).
    """

    __slots__ = ("_run", "log", "name", "queue", "state", "task_id", "tries", "worker_id")

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
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.tries = tries
        self.worker_id = worker_id
        self.queue = queue
        self._run = run
        self.state = TaskState(task_id, run, state_limit)
        self.log: logging.LoggerAdapter[logging.Logger] = _TaskLog(
            _task_log, {"task_id": task_id, "task_name": name}
        )

    async def checkpoint(self) -> None:
        """A safe point to stop: carries out a pause requested by an operator (the task is
        then PAUSED and resumes later from its state). Cheap: no round trip."""
        self._check()
        await asyncio.sleep(0)

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

    __slots__ = ("_ctx", "log", "name", "queue", "state", "task_id", "tries", "worker_id")

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._ctx = ctx
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

    def __repr__(self) -> str:
        return f"<SyncContext {self.task_id} {self.name} try={self.tries}>"
