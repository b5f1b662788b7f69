"""The errors segue raises, and the exceptions task code raises to steer its run.

    SegueError
    ├── ConfigurationError      bad settings, no server binary, bad task definition
    ├── PayloadError            arguments or a result that cannot be encoded, or too large
    ├── BrokerError             Redis/Valkey unreachable or replied with an error
    │   ├── ScriptError         a Lua script returned an error reply (carries the code)
    │   ├── DurabilityError     an enqueue's durability level was not confirmed (or cannot be)
    │   └── ServerOutOfMemory   the server is at maxmemory (noeviction) and refused a write
    ├── QueueFull               the queue holds max_queue_length tasks waiting to run
    ├── TaskNotFound            no record for this task id (never existed, or expired)
    ├── LeaseLost               a run wrote after losing its task (taken over, or cancelled)
    ├── InvalidTransition       a command that does not apply to the task's current status
    ├── DuplicateTask           a unique task is already queued or running (on_duplicate="raise")
    ├── TaskFailed              from TaskHandle.result(): remote type, message, traceback
    ├── TaskCancelled           from TaskHandle.result() when the task was cancelled
    ├── ResultUnavailable       the task ended but kept no result (ttl=0, or expired)
    ├── ResultTimeout           also a TimeoutError
    ├── TaskNotRunning          a query to a task that no run holds (carries the status)
    ├── QueryTimeout            the worker holding the task did not answer a query; a TimeoutError
    ├── UnknownQuery            the running task has no handler of that name (lists those it has)
    ├── QueryFailed             the task's query handler raised: remote type and message
    ├── StreamTruncated         a task's output stream no longer holds the position asked for
    ├── SignalTimeout           ctx.wait_signal's deadline passed (no default given)
    └── SignalBufferFull        handle.signal: the task holds max_pending_signals signals

Raised by task code (not errors of segue's, so not under SegueError):

    Fail(reason)                end the task FAILED now, without retry
    Retry(delay=None)           ask for another try, after `delay` seconds
    Pause(delay=None, state=None)  stop now and run again later (SUSPENDED), state kept
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


class SegueError(Exception):
    """Base class of every error segue raises."""


class ConfigurationError(SegueError):
    """Settings, a task definition or the environment are not usable."""


class PayloadError(SegueError):
    """Arguments or a result cannot be encoded or decoded, or exceed the size limit."""


class BrokerError(SegueError):
    """The Redis/Valkey server could not be reached or replied with an error."""


class ScriptError(BrokerError):
    """A segue Lua script refused an operation; `code` is its machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DurabilityError(BrokerError):
    """The server did not confirm an enqueue's durability level (or cannot give it).

    The tasks were written (unless the level was refused before writing) and may still
    exist: their durability is what is unknown. Enqueue them again with the same `key=` to
    know. `task_ids` names them; `asked` and `confirmed` say what was waited for and got.
    """

    def __init__(
        self, message: str, task_ids: tuple[str, ...] = (), asked: str = "", confirmed: str = ""
    ) -> None:
        super().__init__(message)
        self.task_ids = task_ids
        self.asked = asked
        self.confirmed = confirmed


class ServerOutOfMemory(BrokerError):
    """The server reached its `maxmemory` (policy noeviction) and refused to store more.

    Nothing of the refused call was written. Workers still claim and finish tasks; new
    tasks are refused until memory is freed (tasks run, ended records expire or are purged).
    """


class QueueFull(SegueError):
    """The queue already holds `limit` tasks waiting to run (Settings.max_queue_length).

    Nothing of the refused call was written; enqueue again once workers have taken some.
    """

    def __init__(self, message: str, queue: str, length: int, limit: int) -> None:
        super().__init__(message)
        self.queue = queue
        self.length = length
        self.limit = limit


class TaskNotFound(SegueError):
    """No task with this id exists (it never did, or its record expired)."""


class LeaseLost(SegueError):
    """This run no longer holds its task: another worker took it over, or it was cancelled."""


class DuplicateTask(SegueError):
    """A unique task is already queued or running; `task_id` names that task."""

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class InvalidTransition(SegueError):
    """The command does not apply to the task's current status."""

    def __init__(self, message: str, status: str = "", command: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.command = command


class TaskFailed(SegueError):
    """The task ended FAILED; carries the remote exception type, message and traceback."""

    def __init__(
        self, task_id: str, exc_type: str, message: str, traceback: str | None, reason: str
    ) -> None:
        super().__init__(f"task {task_id} failed ({reason}): {exc_type}: {message}")
        self.task_id = task_id
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.reason = reason


class TaskCancelled(SegueError):
    """The task was cancelled before it produced a result."""


class ResultUnavailable(SegueError):
    """The task ended but its result was not kept (ttl=0) or has expired."""


class ResultTimeout(SegueError, TimeoutError):
    """The task did not end within the time given to result()."""


class SignalTimeout(SegueError, TimeoutError):
    """`ctx.wait_signal(name, timeout=...)` got no signal of that name before its deadline
    and no `default` was given. Not retried when uncaught: the task ends FAILED with reason
    `signal_timeout` (a retry would replay the same journaled timeout)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class SignalBufferFull(SegueError):
    """`handle.signal()` was refused: the task already holds `max_pending_signals` signals
    that no wait has taken yet. Nothing was stored; a wait that takes one makes room."""


class TaskNotRunning(SegueError):
    """A query went to a task that no run holds (queued, waiting, paused or ended);
    `status` names its status."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class QueryTimeout(SegueError, TimeoutError):
    """The worker holding the task did not answer a query in time: it died (its lease has
    not run out yet), its event loop is blocked, or it is stopped."""


class UnknownQuery(SegueError):
    """The running task has registered no query handler of that name; `names` lists the
    ones it has (none yet, while a replay has not reached its `ctx.on_query` calls)."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


class QueryFailed(SegueError):
    """The task's query handler raised; `.type` names the exception's class, `.message`
    is its text."""

    def __init__(self, query: str, type: str, message: str) -> None:
        super().__init__(f"query {query!r} failed: {type}: {message}")
        self.query = query
        self.type = type
        self.message = message


class StreamTruncated(SegueError):
    """`handle.stream()` cannot go on from where it was asked to: the entries after that
    position were trimmed (`max_stream_entries`), or the stream outlived its linger and is
    gone. `position` is the one asked for (None: from the start)."""

    def __init__(self, message: str, position: str | None) -> None:
        super().__init__(message)
        self.position = position


class StepFailed(SegueError):
    """A durable step's function raised (`ctx.step`): raised alike on the first run and on
    every replay of the run, from the step journal. The original class cannot be rebuilt
    from what is stored, so `.type` names it; `.message` and `.traceback` are its text."""

    def __init__(self, step: str, type: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"step {step!r} failed: {type}: {message}")
        self.step = step
        self.type = type
        self.message = message
        self.traceback = traceback


class Fail(Exception):
    """Raise inside a task to end it FAILED at once, without retry (an expected failure)."""

    def __init__(self, reason: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise inside a task to ask for another try, optionally after `delay`."""

    def __init__(self, delay: float | timedelta | None = None) -> None:
        super().__init__("retry requested")
        self.delay = delay.total_seconds() if isinstance(delay, timedelta) else delay


class Pause(Exception):
    """Raise inside a task to stop now and be run again later (SUSPENDED).

    The worker slot is freed at once; the try is not spent; `ctx.state` is kept, so the next
    run resumes from it. With `delay`, the task waits that long before it is queued again.
    With `state`, those keys are merged into `ctx.state` in the same server-side step that
    suspends the task: a checkpoint that cannot be lost between the write and the pause.
    The values are encoded as `ctx.state.set` encodes them: one that is not JSON, or is over
    `max_payload_bytes`, fails the try with a `PayloadError` naming its key.
    """

    def __init__(
        self, delay: float | timedelta | None = None, *, state: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__("paused by the task")
        self.delay = delay.total_seconds() if isinstance(delay, timedelta) else delay
        self.state: dict[str, Any] = dict(state or {})
        keys: list[object] = list(self.state)  # a caller's dict may hold any key
        bad = next((k for k in keys if not isinstance(k, str) or not k), None)
        if bad is not None:
            raise PayloadError(f"Pause(state=...): a state key must be a non-empty str: {bad!r}")
