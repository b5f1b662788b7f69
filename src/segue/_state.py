"""Task statuses, the allowed lifecycle, and the records read back from the server."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class TaskStatus(enum.StrEnum):
    """Where a task is in its lifecycle (DESIGN §4)."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    RETRYING = "retrying"
    SUSPENDED = "suspended"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # a workflow's only: it failed or was cancelled, and its compensations run (sagas)
    COMPENSATING = "compensating"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


def from_ms(ms: int | None) -> datetime | None:
    return None if ms is None else at_ms(ms)


def at_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of a task's history; `number` counts from the task's first (1), so a
    follower knows what it has seen even after the oldest steps were dropped (a record
    keeps the last 200)."""

    status: TaskStatus
    at: datetime
    reason: str
    number: int = 0


@dataclass(frozen=True, slots=True)
class TaskError:
    """How a task failed: the remote exception and why segue ended it."""

    type: str
    message: str
    traceback: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One journaled entry of a durable function (`TaskInfo.steps`): a step or a sleep."""

    name: str
    started_at: datetime
    duration: float  # seconds the step's function ran (a sleep: 0)
    ok: bool
    error_type: str | None  # the class name of what the step raised, when not ok


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A snapshot of a task's record on the server."""

    id: str
    name: str
    queue: str
    status: TaskStatus
    args: list[Any]
    kwargs: dict[str, Any]
    priority: str
    tries: int
    max_tries: int
    worker_id: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    due_at: datetime | None
    history: list[Transition]
    result: Any
    error: TaskError | None
    progress: tuple[float, float | None] | None = None  # (done, total) from ctx.progress
    progress_message: str | None = None
    # what segue could not read of a record someone else wrote (those fields are left empty)
    problem: str | None = None
    # a pause or cancel asked of a running task and not yet carried out, and when it was
    # asked (its worker carries it out at the task's next checkpoint, or at once)
    pending_request: str | None = None
    pending_request_at: datetime | None = None
    # transitions ever recorded: `history` keeps the last 200 of them
    history_total: int = 0
    # the step journal's summary, in the order written (kept for the record's ttl)
    steps: list[StepInfo] = field(default_factory=list)
    # a workflow step's or a compensation's workflow
    workflow: str | None = None
    # a workflow step's compensation task once it was asked for (WorkflowHandle.steps)
    compensation: TaskInfo | None = None
    # the task's code version (`@app.task(version=...)`), and the one it started under
    # (ctx.version): they differ once a newer worker migrated it
    version: int = 1
    started_version: int = 1
    # what a WAITING task waits for: "dependencies", "sub-tasks", or "signal:<name>" and,
    # when the wait has a timeout, " until <deadline, ISO 8601>"; None when not WAITING
    waiting_for: str | None = None
    # signals still buffered when the task ended (dropped; a task.signals_dropped event)
    signals_dropped: int = 0
    # values stored by reference (Settings.offload_bytes): "args" / "result" -> encoded
    # size; such a value is left out of args/kwargs/result (TaskHandle.download reads it)
    offloaded: dict[str, int] = field(default_factory=dict)
    # a task enqueued by name (app.send): the options its worker's definition supplies
    # ("max_tries", "timeout", "version", "retry_backoff", "limits"); empty for one enqueued
    # with its code
    from_worker: tuple[str, ...] = ()


def from_worker_names(fw: str) -> tuple[str, ...]:
    """What a record's `fw` field says came from the worker's definition, by option name
    (TaskInfo.from_worker); empty for a task enqueued with its code."""
    marks = fw.split()
    if "send" not in marks:
        return ()
    marked = (("mt", "max_tries"), ("to", "timeout"), ("v", "version"))
    named = [name for mark, name in marked if mark in marks]
    return (*named, "retry_backoff", "limits")
