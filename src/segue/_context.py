"""Context: what a running task knows about its own run, and its durable state.

A worker builds a Context bound to the run (`RunControl`, _run_control.py): `ctx.state`
writes are fenced to that run, and `ctx.checkpoint()` carries out a pause or cancel that
an operator asked for. A task run locally (called directly, or `task.run()`) gets a Context
whose state lives in memory and whose checkpoint never stops it. Sync tasks get
`SyncContext` (`_sync_context.py`): the same names, blocking, safe to call from the
worker's threads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from ulid import ULID

from segue import _clock
from segue._blobs import is_ref
from segue._codec import decode_plain, encode
from segue._errors import (
    ConfigurationError,
    Fail,
    LeaseLost,
    Pause,
    PayloadError,
    Retry,
)
from segue._faults import faultpoint
from segue._journal import FIELD, Journal, Sleeping, TaskLog, enter_step, leave_step
from segue._journal import now as journal_now
from segue._offload import fetch, offloads, put
from segue._output import OutputWriter
from segue._run_control import RunControl, ServerUnreachable
from segue._signals import MISSING as NO_DEFAULT
from segue._signals import wait_signal

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

    from segue._handle import TaskHandle
    from segue._lifespan import Resource
    from segue._options import ParentEnd

_task_log = logging.getLogger("segue.task")
log = logging.getLogger("segue.worker")
R = TypeVar("R")
T = TypeVar("T")
_MISSING: Any = object()
# raised inside a step, these are the task's control flow, not the step's outcome
_PASS_THROUGH = (Pause, Retry, Fail)


class PauseRequested(BaseException):
    """Raised at a checkpoint when an operator paused the run (not an error of the task).

    A BaseException, like CancelledError, so that `except Exception` in task code does not
    swallow it."""


class WaitingForSubtasks(BaseException):
    """Raised by `ctx.wait_for` when sub-tasks are still running: the run stops, the task
    WAITS without holding a worker slot, and the last sub-task to end queues it again."""


class Call(Protocol[R]):
    """A Signature as a Context sees it (this module sits below _task)."""

    def check(self) -> None: ...
    def enqueue(self) -> Coroutine[Any, Any, TaskHandle[R]]: ...


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
        journal = FIELD.encode()  # the step journal shares the hash: not state values
        values = {k.decode(): v for k, v in raw.items() if not k.startswith(journal)}
        for key, value in values.items():
            if is_ref(value):  # offloaded (Settings.offload_bytes)
                values[key] = await run.call(
                    f"task {self._id}: ctx.state", functools.partial(fetch, run.broker, value)
                )
        return {k: decode_plain(v) for k, v in values.items()}

    async def set(self, **values: Any) -> None:
        """Store several values atomically (one round trip), fenced to this run."""
        encoded = {}
        run = self._run
        offload = run.broker.settings if run is not None else None
        if offload is not None and offload.offload_bytes is None:
            offload = None
        limit = offload.max_offload_bytes if offload is not None else self._limit
        setting = "max_offload_bytes" if offload is not None else "max_payload_bytes"
        for key, value in values.items():
            if key.startswith(FIELD):
                raise ValueError(
                    f"ctx.state.set: key {key!r}: keys starting {FIELD!r} are reserved"
                )
            try:
                encoded[key] = encode(
                    value, what=f"state value {key!r}", limit=limit, setting=setting
                )
            except PayloadError as exc:
                raise PayloadError(f"ctx.state.set: {exc}") from None
        if run is not None and offload is not None:
            for key, data in encoded.items():
                if offloads(run.broker, len(data)):
                    # a new name per write: the state.lua call adopts it, fenced to this run
                    name = f"state.{run.gen}.{ULID()}"
                    encoded[key] = await run.call(
                        f"task {self._id}: ctx.state",
                        functools.partial(put, run.broker, self._id, name, data),
                    )
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
    `version` (the version of the task's code it started under, `@app.task(version=...)`:
    code branches on it to replay its journal the way it was written), `log` (a logger
    whose lines carry the task id), and `state` (durable per-task values).
    """

    __slots__ = (
        "_output",
        "_queries",
        "_run",
        "_seq",
        "_sleep_inline",
        "_state_limit",
        "_step_journal",
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
        sleep_inline_seconds: float = 5.0,
        version: int = 1,
    ) -> None:
        self.task_id = task_id
        self.version = version
        self.name = name
        self.tries = tries
        self.worker_id = worker_id
        self.queue = queue
        self._run = run
        self._seq = 0
        self._queries: dict[str, Callable[..., Any]] = run.queries if run is not None else {}
        self.headers: dict[str, str] = headers or {}
        self.state = TaskState(task_id, run, state_limit)
        # made at first use: a run with no durable call and no stream pays nothing for them
        self._step_journal: Journal | None = None
        self._output: OutputWriter | None = None
        self._state_limit = state_limit
        self._sleep_inline = sleep_inline_seconds
        self.log: logging.LoggerAdapter[logging.Logger] = TaskLog(
            _task_log, {"task_id": task_id, "task_name": name}
        )

    @property
    def _journal(self) -> Journal:
        journal = self._step_journal
        if journal is None:
            journal = self._step_journal = Journal(
                self.task_id, self.tries, self._run, self._state_limit, self._sleep_inline
            )
            if isinstance(self.log, TaskLog):
                self.log.journal = journal  # a replay's lines are not logged again
        return journal

    def on_query(self, name: str, fn: Callable[..., Any]) -> None:
        """Answer `handle.query(name, *args)` with `fn(*args)` (sync or async) while this run
        lasts; a second `on_query` of the same name replaces the first. The handler runs on
        the worker's event loop between the task's awaits, and must only read: it must not
        change state. A run that has not called `on_query(name, ...)` yet (a replay on its
        way) answers UnknownQuery."""
        if not callable(fn):
            raise TypeError(f"ctx.on_query({name!r}, ...) takes a function, not {fn!r}")
        self._queries[name] = fn

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` as the durable step `name` (unique within a run) and
        journal its outcome; a later run of the task returns the journaled outcome without
        calling `fn`. A sync `fn` runs in a thread. If `fn` raises, the step raises
        StepFailed, on this run and on replays of the same try."""
        journal = self._journal
        journal.claim_name(name, "ctx.step")
        await journal.load()
        entry = journal.lookup(name)
        if entry is not None:
            return journal.replay(name, entry, fn)
        started = _clock.wall()
        token = enter_step(name)
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn(*args, **kwargs)
            else:
                value = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            data, failed = journal.failure(name, exc)
            faultpoint("after_step_effect")
            await journal.record(name, data, started, ok=False, error_type=failed.type)
            raise failed from exc
        finally:
            leave_step(token)
        faultpoint("after_step_effect")
        data, value = journal.success(name, fn, value)
        await journal.record(name, data, started, ok=True)
        return value

    async def sleep(self, seconds: float | timedelta) -> None:
        """A durable sleep: its due time is journaled now, and the task goes on after it
        even across worker deaths. A rest of `sleep_inline_seconds` or more ends this run
        (SUSPENDED, no slot held, no try spent); a shorter one sleeps here."""
        due = self._sleep_due(seconds, "ctx.sleep")
        await self._sleep(due)

    async def sleep_until(self, when: datetime) -> None:
        """`ctx.sleep` until a moment (an aware datetime; naive ones are taken as local)."""
        await self._sleep(self._until(when))

    async def _sleep(self, due: float) -> None:
        journal = self._journal
        name = journal.auto_name("sleep")
        journal.claim_name(name, "ctx.sleep")
        await journal.load()
        entry = journal.lookup(name)
        if entry is not None:
            due = journal.due_of(entry)
        else:
            await journal.record(name, journal.sleep_entry(due), _clock.wall(), ok=True)
        rest = due - journal_now()
        if rest <= 0 or journal.local:
            return  # a local run does not wait: a test of a long sleep runs at once
        if rest < journal.inline_seconds:
            await asyncio.sleep(rest)
            return
        raise Sleeping(math.ceil(rest * 1000))

    def _sleep_due(self, seconds: float | timedelta, what: str) -> float:
        value: Any = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"task {self.task_id}: {what}({seconds!r}): the duration must be a finite "
                "number of seconds, 0 or more"
            )
        return _clock.wall() + value

    def _until(self, when: datetime) -> float:
        if not isinstance(when, datetime):
            raise TypeError(f"task {self.task_id}: ctx.sleep_until({when!r}) takes a datetime")
        return when.timestamp()

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
        if self._journal.replaying:
            return  # a replay does not move progress back to where its first run was
        if run is not None:
            total_text = "" if total is None else repr(total)
            await run.call(
                f"task {self.task_id}: ctx.progress",
                lambda: run.broker.task_event(
                    run.ks, self.task_id, run.gen, "progress", repr(done), total_text, message or ""
                ),
            )
        await self.checkpoint()

    async def stream(self, chunk: Any) -> None:
        """Append `chunk` (any JSON value) to the task's own output stream, which
        `handle.stream()` and the SSE route of `segue.web` read live. Returns at once while
        the previous write is on its way (chunks given meanwhile go together in one entry:
        order is kept), so streaming token by token costs about one round trip per batch;
        a run's last chunks are written before its outcome. Also a checkpoint (no round
        trip). A replay of a durable function does not write again what its first run
        wrote."""
        run = self._run
        if run is None:
            self.log.debug("stream chunk %r (local run: not streamed)", chunk)
            return
        self._check()  # a checkpoint too: a streaming loop stops at once when paused
        # a chunk before the run's first step is part of a replay too: the journal tells
        await self._journal.load()
        if self._journal.replaying:
            return  # written by the first run already
        output = self._output
        if output is None:
            output = self._output = OutputWriter(run, self.task_id, self.tries, self._state_limit)
        await output.put(chunk, resumed=self._journal.resumed)

    async def _close_output(self, *, ended: bool) -> None:
        """The worker's call after the task's function returned (`ended`) or raised out of
        the run: write the chunks left, or drop them with the run."""
        output = self._output
        if output is None:
            return
        if not ended:
            output.abandon()
            return
        try:
            await output.close()
        except Exception as exc:  # the outcome's own write says whether the run still holds it
            self.log.warning("its last stream chunks were not written: %s", exc)
        except ServerUnreachable as exc:
            self.log.warning("its last stream chunks were not written: %s", exc)

    async def emit(self, name: str, data: Any = None) -> None:
        """Put an event of the task's own on its queue's event stream (`app.events()`)."""
        run = self._run
        if self._journal.replaying:
            return  # emitted by the first run already
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
    async def enqueue(
        self, signatures: Call[R], /, *, on_parent_end: ParentEnd = ...
    ) -> TaskHandle[R]: ...
    @overload
    async def enqueue(
        self, signatures: Iterable[Call[R]], /, *, on_parent_end: ParentEnd = ...
    ) -> list[TaskHandle[R]]: ...
    async def enqueue(self, signatures: Any, /, *, on_parent_end: ParentEnd = "cancel") -> Any:
        """Start sub-tasks of this task, in its queue. Their ids come from this task's id
        and a count, so a re-run of this task (after a worker death, or after `wait_for`)
        gets the same handles back instead of starting them twice.

        A pause, resume or cancel of this task reaches its sub-tasks, recursively, and
        when this task ends FAILED or CANCELLED its unfinished sub-tasks are cancelled;
        `on_parent_end="abandon"` starts sub-tasks that all of this leaves alone."""
        if on_parent_end not in ("cancel", "abandon"):
            raise ConfigurationError(
                f"on_parent_end={on_parent_end!r}: expected 'cancel' or 'abandon'"
            )
        single = not isinstance(signatures, Iterable)  # a Signature, or several
        sigs: list[Call[Any]] = [signatures] if single else list(signatures)
        run = self._run
        if run is None:
            local = [await s.enqueue() for s in sigs]
            return local[0] if single else local
        handles: list[TaskHandle[Any]] = []
        journal = self._journal
        await journal.load()
        for sig in sigs:
            self._seq += 1
            # each sub-task is a journal entry: a replay gets its handle without enqueueing
            name = journal.auto_name("enqueue")
            journal.claim_name(name, "ctx.enqueue")
            entry = journal.lookup(name)
            if entry is not None and run.child_handle is not None:
                handles.append(run.child_handle(sig, journal.child_of(entry)))
                continue
            started = _clock.wall()
            send = functools.partial(
                run.enqueue_child, sig, f"{self.task_id}.{self._seq}", on_parent_end
            )
            handle = await run.call(f"task {self.task_id}: ctx.enqueue", send)
            await journal.record(name, journal.child_entry(handle.id), started, ok=True)
            handles.append(handle)
        return handles[0] if single else handles

    async def wait_for(self, handles: Sequence[TaskHandle[R]]) -> list[R]:
        """The results of sub-tasks, in order. If some have not ended, this run stops here
        and the task WAITS (no worker slot held, the try not spent); when the last one ends
        the task runs again from the start, with its state, and `wait_for` returns at once.
        Raises TaskFailed or TaskCancelled for a sub-task that did not succeed."""
        run = self._run
        if run is not None:
            # a wait passed by an earlier run: its results are journaled, so a replay
            # (after a long sleep, say) does not need the sub-tasks' records any more
            journal = self._journal
            name = journal.auto_name("wait")
            journal.claim_name(name, "ctx.wait_for")
            await journal.load()
            entry = journal.lookup(name)
            if entry is not None:
                return journal.results_of(entry, handles)
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
            started = _clock.wall()
            results = [await run.call(what, h.result) for h in handles]
            await journal.record(name, journal.results_entry(results), started, ok=True)
            return results
        return [await h.result() for h in handles]

    async def wait_signal(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        default: Any = NO_DEFAULT,
    ) -> Any:
        """The data of the next signal `name` sent to this task (`handle.signal`), FIFO.
        A signal already buffered is taken and journaled at once. Otherwise this run stops
        here and the task WAITS (no worker slot held, the try not spent) until a signal of
        that name comes or `timeout` passes; it then runs again from the start, its replay
        reaching this wait, which returns the signal's data. The deadline is journaled at
        the first wait, so re-runs keep it. On timeout, returns `default`, or raises
        SignalTimeout when none is given. A local run never waits: it takes the signals
        given to `task.run(..., signals=...)`, else times out at once."""
        return await wait_signal(self._journal, self._run, self.task_id, name, timeout, default)

    def _check(self) -> None:
        run = self._run
        if run is not None and run.request == "pause":
            raise PauseRequested
        if run is not None and run.request == "cancel":
            raise asyncio.CancelledError

    def __repr__(self) -> str:
        return f"<Context {self.task_id} {self.name} try={self.tries} worker={self.worker_id}>"
