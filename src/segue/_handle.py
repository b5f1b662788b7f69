"""TaskHandle[R]: follow one enqueued task from any process."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from segue._codec import TypedDecoder, decode_plain
from segue._errors import (
    InvalidTransition,
    PayloadError,
    ResultTimeout,
    ResultUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
)
from segue._keys import queue_of
from segue._state import TaskError, TaskInfo, TaskStatus, Transition, at_ms, from_ms

if TYPE_CHECKING:
    from segue._app import App
    from segue._events import Event

R = TypeVar("R")
_PLAIN = TypedDecoder(Any)
# pub/sub makes result() fast; this re-read of the stored status makes it certain
_RECHECK_SECONDS = 1.0
_WHO = f"{socket.gethostname()}:{os.getpid()}"


class TaskHandle(Generic[R]):
    """A submitted run of a task: its id, and ways to read its status and result."""

    __slots__ = ("_app", "_decoder", "_keeps_result", "id", "queue")

    def __init__(
        self,
        app: App,
        task_id: str,
        decoder: TypedDecoder | None = None,
        *,
        keeps_result: bool = True,
    ) -> None:
        self._app = app
        self.id = task_id
        self.queue = queue_of(task_id)
        self._decoder = decoder or _PLAIN
        self._keeps_result = keeps_result

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(
            f"no task {self.id}: it never existed, or it ended and its record expired "
            "(results are kept for the task's ttl)"
        )

    async def status(self) -> TaskStatus:
        broker = await self._app.broker()
        raw = await broker.task_status(broker.keyspace(self.queue), self.id)
        if raw is None:
            raise self._not_found()
        return TaskStatus(raw.decode())

    async def info(self) -> TaskInfo:
        broker = await self._app.broker()
        rec = await broker.task_record(broker.keyspace(self.queue), self.id)
        if not rec:
            raise self._not_found()
        return parse_info(self.id, rec, self._app)

    async def state(self, *, limit: int | None = None) -> dict[str, Any]:
        """The task's durable `ctx.state` values as they stand (empty once it ended); with
        `limit`, at most that many of them."""
        broker = await self._app.broker()
        raw = await broker.read_state(broker.keyspace(self.queue), self.id, limit)
        return {k.decode(): decode_plain(v) for k, v in raw.items()}

    async def events(self, *, scan: int = 1000) -> list[Event]:
        """This task's events among the last `scan` of its queue's stream, oldest first."""
        from segue._events import parse_event

        broker = await self._app.broker()
        entries = await broker.recent_events(broker.keyspace(self.queue), scan)
        found = [parse_event(self.queue, eid, fields) for eid, fields in reversed(entries)]
        return [e for e in found if e.task_id == self.id]

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task to end; its value, or TaskFailed / TaskCancelled."""
        if not self._keeps_result:
            raise ResultUnavailable(
                f"task {self.id} was enqueued with ttl=0: segue keeps no result to return"
            )
        broker = await self._app.broker()
        ks = broker.keyspace(self.queue)
        deadline = None if timeout is None else time.monotonic() + timeout
        fut = await broker.watch_ended(ks, self.id)
        try:
            while True:
                rec = await broker.task_record(ks, self.id)
                if not rec:
                    raise self._not_found()
                status = TaskStatus(rec[b"s"].decode())
                if status.is_final:
                    return self._outcome(status, rec)
                wait = _RECHECK_SECONDS
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResultTimeout(
                            f"task {self.id} did not end within {timeout} s (status {status})"
                        )
                    wait = min(wait, left)
                if fut.done():
                    # the end was announced while the record was being read: that read may
                    # predate it, so read again now (watching anew first), instead of
                    # waiting on a fresh watch for an announcement already spent
                    broker.unwatch(self.id, fut)
                    fut = await broker.watch_ended(ks, self.id)
                    continue
                try:
                    await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    pass
        finally:
            broker.unwatch(self.id, fut)

    # --- operator control ----------------------------------------------------------------

    async def pause(self, reason: str | None = None) -> TaskStatus:
        """Pause the task: a waiting one is held now; a running one stops at its next
        `ctx.checkpoint()` (or is interrupted after the pause grace period) and is then
        PAUSED. Returns at once with the status as it stands; see `wait_for`."""
        return await self._control("pause", reason)

    async def resume(self, reason: str | None = None) -> TaskStatus:
        """Put a PAUSED task back in its queue (it continues from its state), or withdraw a
        pause that a running task has not carried out yet."""
        return await self._control("resume", reason)

    async def cancel(self, reason: str | None = None) -> TaskStatus:
        """Cancel the task: a waiting or paused one ends now; a running one is stopped at
        its current await (CancelledError inside it, so `finally` blocks run). CANCELLED,
        state deleted. Cancelling an ended task changes nothing and returns its status."""
        return await self._control("cancel", reason)

    async def retry(self, reason: str | None = None) -> TaskStatus:
        """Queue a FAILED, CANCELLED or EXPIRED task again, as new: same id, tries from
        zero, error cleared (and out of the dead-letter list). Returns QUEUED."""
        broker = await self._app.broker()
        why = reason or f"retry requested by {_WHO}"
        return TaskStatus(await broker.retry(broker.keyspace(self.queue), self.id, why))

    async def _control(self, command: str, reason: str | None) -> TaskStatus:
        broker = await self._app.broker()
        why = reason or f"{command} requested by {_WHO}"
        return TaskStatus(await broker.control(broker.keyspace(self.queue), self.id, command, why))

    async def wait_for(self, *statuses: TaskStatus, timeout: float | None = None) -> TaskStatus:
        """Wait until the task is in one of `statuses` (or any final status, if none are
        given); returns the status reached. Raises ResultTimeout after `timeout` seconds,
        and InvalidTransition if it ended in another status (it can never get there)."""
        wanted = set(statuses)
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.005
        while True:
            status = await self.status()
            if status in wanted or (not wanted and status.is_final):
                return status
            if status.is_final:
                raise InvalidTransition(
                    f"task {self.id} ended {status} while waiting for {', '.join(sorted(wanted))}",
                    status.value,
                    "wait_for",
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(
                    f"task {self.id} did not reach {', '.join(sorted(wanted)) or 'an end'} "
                    f"within {timeout} s (status {status})"
                )
            await asyncio.sleep(interval)
            interval = min(interval * 2, 0.1)

    def _outcome(self, status: TaskStatus, rec: dict[bytes, bytes]) -> R:
        if status is TaskStatus.SUCCEEDED:
            try:
                return cast("R", self._decoder.decode(rec.get(b"r", b"null")))
            except Exception as exc:
                raise PayloadError(f"result of task {self.id} does not decode: {exc}") from None
        if status is TaskStatus.CANCELLED:
            raise TaskCancelled(f"task {self.id} was cancelled")
        err = parse_error(rec.get(b"e")) or TaskError("Expired", "expired", None, "expired")
        raise TaskFailed(self.id, err.type, err.message, err.traceback, err.reason)


def parse_error(raw: bytes | None) -> TaskError | None:
    if not raw:
        return None
    data = decode_plain(raw)
    return TaskError(
        type=str(data.get("type", "Error")),
        message=str(data.get("message", "")),
        traceback=data.get("traceback"),
        reason=str(data.get("reason", "error")),
    )


def _int(rec: dict[bytes, bytes], key: bytes) -> int | None:
    raw = rec.get(key)
    return None if raw is None else int(raw)


def parse_info(task_id: str, rec: dict[bytes, bytes], app: App) -> TaskInfo:
    name = rec.get(b"n", b"").decode()
    task = app.registry.get(name)
    status = TaskStatus(rec[b"s"].decode())
    try:
        if task is not None:
            args, kwargs = task.args_decoder.decode(rec[b"p"])
        else:
            args, kwargs = decode_plain(rec[b"p"])
    except Exception:
        args, kwargs = [], {}
    history = []
    for line in rec.get(b"h", b"").decode().splitlines():
        st, _, rest = line.partition("|")
        at, _, reason = rest.partition("|")
        history.append(Transition(TaskStatus(st), at_ms(int(at)), reason))
    result: Any = None
    if status is TaskStatus.SUCCEEDED and b"r" in rec:
        decoder = task.result_decoder if task is not None else _PLAIN
        result = decoder.decode(rec[b"r"])
    worker = rec.get(b"w")
    progress = None
    if b"pg" in rec:
        done, _, total = rec[b"pg"].decode().partition(" ")
        progress = (float(done), float(total) if total else None)
    return TaskInfo(
        id=task_id,
        name=name,
        queue=queue_of(task_id),
        status=status,
        args=list(args),
        kwargs=dict(kwargs),
        priority=rec.get(b"q", b"normal").decode(),
        tries=_int(rec, b"t") or 0,
        max_tries=_int(rec, b"mt") or 0,
        worker_id=worker.decode() if worker else None,
        enqueued_at=from_ms(_int(rec, b"ce")),
        started_at=from_ms(_int(rec, b"st")),
        ended_at=from_ms(_int(rec, b"et")),
        due_at=from_ms(_int(rec, b"due")),
        history=history,
        result=result,
        error=parse_error(rec.get(b"e")),
        progress=progress,
        progress_message=rec.get(b"pgm", b"").decode() or None,
        pending_request=rec[b"ctl"].decode() if b"ctl" in rec else None,
        pending_request_at=from_ms(_int(rec, b"ctlt")) if b"ctl" in rec else None,
    )
