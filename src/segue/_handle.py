"""TaskHandle[R]: follow one enqueued task from any process."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from segue._codec import TypedDecoder, decode_plain
from segue._errors import (
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

R = TypeVar("R")
_PLAIN = TypedDecoder(Any)
# pub/sub makes result() fast; this re-read of the stored status makes it certain
_RECHECK_SECONDS = 1.0


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
                    fut = await broker.watch_ended(ks, self.id)
                try:
                    await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    pass
        finally:
            broker.unwatch(self.id, fut)

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
    )
