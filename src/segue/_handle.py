"""Handles: follow one enqueued task (TaskHandle) or workflow (WorkflowHandle) from any
process, by its id alone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from segue._blobs import human_size, is_ref, parse_ref
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
from segue._info import parse_error, parse_info
from segue._keys import queue_of
from segue._state import (
    TaskError,
    TaskInfo,
    TaskStatus,
)
from segue._wire import TaskField as F
from segue._wire import WorkflowField as W
from segue._wire import workflow_steps

if TYPE_CHECKING:
    from segue._client import Client
    from segue._events import Event
    from segue._output import TaskStream
    from segue._pubsub import EndedMark
    from segue._queries import Queries

R = TypeVar("R")
_PLAIN = TypedDecoder(Any)
# pub/sub makes result() fast; this re-read of the stored status makes it certain
_RECHECK_SECONDS = 1.0
_WHO = f"{socket.gethostname()}:{os.getpid()}"
_WAIT_AT_ONCE = 32  # last steps whose results one result() call waits for at once


class TaskHandle(Generic[R]):
    """A submitted run of a task: its id, and ways to read its status and result."""

    __slots__ = ("_client", "_decoder", "_keeps_result", "_mark", "id", "queue")

    def __init__(
        self,
        client: Client,
        task_id: str,
        decoder: TypedDecoder | None = None,
        *,
        keeps_result: bool = True,
        mark: EndedMark | None = None,
    ) -> None:
        self._client = client
        self.id = task_id
        self.queue = queue_of(task_id)
        self._decoder = decoder or _PLAIN
        self._keeps_result = keeps_result
        # set by the enqueue that created the task (EndedWaiters.mark): result() may wait
        # for the ended message without reading the record first
        self._mark = mark

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
        reads = await self._client.reads()
        raw = await reads.task_status(reads.keyspace(self.queue), self.id)
        if raw is None:
            raise self._not_found()
        return TaskStatus(raw.decode())

    async def info(self) -> TaskInfo:
        reads = await self._client.reads()
        rec = await reads.task_record(reads.keyspace(self.queue), self.id)
        if not rec:
            raise self._not_found()
        return parse_info(self.id, rec, self._client.tasks)

    async def state(self, *, limit: int | None = None) -> dict[str, Any]:
        """The task's durable `ctx.state` values as they stand (empty once it ended); with
        `limit`, at most that many of them. A plain read of the server: it works whatever
        the task's status and whether or not a worker answers (unlike `query()`)."""
        reads = await self._client.reads()
        raw = await reads.read_state(reads.keyspace(self.queue), self.id, limit)
        return {
            k.decode(): decode_plain(await self._offloaded(reads, v, f"state value {k!r}"))
            for k, v in raw.items()
        }

    async def _state_shown(self, limit: int) -> dict[str, Any]:
        """The state as a person looks at it (CLI, dashboard): an offloaded value is shown
        as its size, not read."""
        reads = await self._client.reads()
        raw = await reads.read_state(reads.keyspace(self.queue), self.id, limit)
        shown: dict[str, Any] = {}
        for k, v in raw.items():
            if is_ref(v):
                try:
                    shown[k.decode()] = f"<offloaded, {human_size(parse_ref(v).size)}>"
                except ValueError:
                    shown[k.decode()] = "<offloaded>"
            else:
                shown[k.decode()] = decode_plain(v)
        return shown

    async def download(self, what: Literal["args", "result"]) -> bytes:
        """The stored JSON of the task's arguments (`[args, kwargs]`) or its result, read
        from the payload store when it was offloaded (Settings.offload_bytes): what `segue
        download` and the dashboard's download link give. Raises TaskNotFound, and
        ResultUnavailable when there is no such value (no result yet, or none kept)."""
        reads = await self._client.reads()
        rec = await reads.task_record(reads.keyspace(self.queue), self.id)
        if not rec:
            raise self._not_found()
        code = F.PAYLOAD.b if what == "args" else F.RESULT.b
        data = rec.get(code)
        if data is None:
            raise ResultUnavailable(f"task {self.id} has no {what} stored")
        return await self._offloaded(reads, data, what)

    async def _offloaded(self, reads: Queries, data: bytes, what: str) -> bytes:
        try:
            return await reads.offloaded(data)
        except KeyError:
            raise PayloadError(
                f"the offloaded {what} of task {self.id} is gone from the payload store "
                "(expired, or deleted)"
            ) from None

    async def query(self, name: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask the running task: the worker holding it calls the handler the task registered
        with `ctx.on_query(name, fn)` as `fn(*args)` and sends back its value (plain JSON
        values). Raises TaskNotRunning (naming the status) when no run holds the task,
        QueryTimeout when its worker does not answer within `timeout` seconds (dead,
        stopped, or its event loop blocked), UnknownQuery (listing the registered names)
        when the run has no such handler (yet), QueryFailed when the handler raised.
        `state()` is the read that always works."""
        from segue._query import ask

        broker = await self._client.broker()
        return await ask(broker, broker.keyspace(self.queue), self.id, name, args, timeout)

    async def events(self, *, scan: int = 1000) -> list[Event]:
        """This task's events among the last `scan` of its queue's stream, oldest first."""
        from segue._events import parse_event

        reads = await self._client.reads()
        entries = await reads.recent_events(reads.keyspace(self.queue), scan)
        found = [parse_event(self.queue, eid, fields) for eid, fields in reversed(entries)]
        return [e for e in found if e.task_id == self.id]

    def stream(self, after: str | None = None) -> TaskStream:
        """The chunks the task streams (`ctx.stream`), in order, from the start or after the
        position `after`; the loop ends when the task ends (also when it never streamed).
        A `StreamRestarted` item marks where a new run starts writing. The iterator's
        `position` is the position of the item last yielded, to resume after it."""
        from segue._output import TaskStream

        return TaskStream(self._client.reads, self.queue, self.id, after)

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the task to end; its value, or TaskFailed / TaskCancelled."""
        if not self._keeps_result:
            raise ResultUnavailable(
                f"task {self.id} was enqueued with ttl=0: segue keeps no result to return"
            )
        reads = await self._client.reads()
        ks = reads.keyspace(self.queue)
        deadline = None if timeout is None else time.monotonic() + timeout
        fut, unseen = await reads.watch_ended(ks, self.id, self._mark)
        try:
            while True:
                if fut.done():
                    value = fut.result()
                    if value is not None:  # a success, its result in the message
                        return self._outcome(TaskStatus.SUCCEEDED, {F.RESULT.b: value})
                elif unseen:
                    # it has not ended yet (the mark says so): the message comes first
                    unseen = False
                    left = _RECHECK_SECONDS if deadline is None else deadline - time.monotonic()
                    if left > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(fut), min(left, _RECHECK_SECONDS))
                        continue
                rec = await reads.task_record(ks, self.id)
                if not rec:
                    raise self._not_found()
                status = TaskStatus(rec[F.STATUS.b].decode())
                if status.is_final:
                    if status is TaskStatus.SUCCEEDED and is_ref(rec.get(F.RESULT.b)):
                        rec[F.RESULT.b] = await self._offloaded(reads, rec[F.RESULT.b], "result")
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
                    if fut.result() is not None:
                        continue  # a success announced with its result: returned above
                    # the end was announced while the record was being read: that read may
                    # predate it, so read again now (watching anew first), instead of
                    # waiting on a fresh watch for an announcement already spent
                    reads.unwatch(self.id, fut)
                    fut, _ = await reads.watch_ended(ks, self.id)
                    continue
                try:
                    await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    pass
        finally:
            reads.unwatch(self.id, fut)

    # --- operator control ----------------------------------------------------------------

    async def pause(self, reason: str | None = None) -> TaskStatus:
        """Pause the task: a waiting one is held now; a running one stops at its next
        `ctx.checkpoint()` (or is interrupted after the pause grace period) and is then
        PAUSED. Returns at once with the status as it stands; see `wait_for`."""
        return await self._control("pause", reason)

    async def resume(self, reason: str | None = None) -> TaskStatus:
        """Put a PAUSED task back in its queue (it continues from its state), or withdraw a
        pause that a running task has not carried out yet. A task paused while it waited
        for a signal waits again (WAITING) unless a signal is buffered or its deadline
        passed."""
        return await self._control("resume", reason)

    async def cancel(self, reason: str | None = None) -> TaskStatus:
        """Cancel the task: a waiting or paused one ends now; a running one is stopped at
        its current await (CancelledError inside it, so `finally` blocks run). CANCELLED,
        state deleted. Cancelling an ended task changes nothing and returns its status."""
        return await self._control("cancel", reason)

    async def signal(self, name: str, data: Any = None, *, id: str | None = None) -> TaskStatus:
        """Send the task the signal `name` with `data` (JSON): a `ctx.wait_signal(name)`
        waiting for it gets it now, else it is buffered (FIFO per name) for the next wait.
        The signal carries an id (`id`, or one made here) sent again with every resend,
        and the server accepts an id once: a resend after a lost reply delivers nothing
        twice, and reports success even if the task has ended since. Raises
        InvalidTransition for a task that ended before the first send, SignalBufferFull
        when it holds `max_pending_signals` signals already. Returns the task's status."""
        from segue._signals import send_signal

        broker = await self._client.broker()
        limit = broker.settings.max_payload_bytes
        return TaskStatus(await send_signal(broker, self.id, name, data, id, limit))

    async def retry(self, reason: str | None = None) -> TaskStatus:
        """Queue a FAILED, CANCELLED or EXPIRED task again, as new: same id, tries from
        zero, error cleared (and out of the dead-letter list). Returns QUEUED."""
        broker = await self._client.broker()
        why = reason or f"retry requested by {_WHO}"
        return TaskStatus(await broker.retry(broker.keyspace(self.queue), self.id, why))

    async def delete(self) -> bool:
        """Delete the record of an ended task (result or error, history) and its place in
        the lists of ended tasks and dead letters, before its ttl would. True when it was
        deleted, False when there was no record (deleted already, or expired), so a repeat
        is harmless. A task that has not ended raises InvalidTransition: cancel it first."""
        from segue._ops_actions import delete_task

        broker = await self._client.broker()
        return await delete_task(broker, broker.keyspace(self.queue), self.id) is not None

    async def _control(self, command: str, reason: str | None) -> TaskStatus:
        broker = await self._client.broker()
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
                return cast("R", self._decoder.decode(rec.get(F.RESULT.b, b"null")))
            except Exception as exc:
                raise PayloadError(f"result of task {self.id} does not decode: {exc}") from None
        if status is TaskStatus.CANCELLED:
            raise TaskCancelled(f"task {self.id} was cancelled")
        try:
            err = parse_error(rec.get(F.ERROR.b)) or TaskError(
                "Expired", "expired", None, "expired"
            )
        except Exception:  # written by someone else: still a failure, said plainly
            err = TaskError("Undecodable", "its error record does not decode", None, "undecodable")
        raise TaskFailed(self.id, err.type, err.message, err.traceback, err.reason)


def _passed(row: list[bytes | None]) -> TaskStatus:
    """A last step's status as the workflow counts it: an optional one that failed on its
    own counts as succeeded; one that ended because an earlier step failed does not."""
    status = TaskStatus(row[0].decode()) if row[0] else TaskStatus.EXPIRED
    if status.is_final and row[1] == b"1" and not _by_dependency(row[2]):
        return TaskStatus.SUCCEEDED
    return status


def _by_dependency(error: bytes | None) -> bool:
    try:
        err = parse_error(error)
    except Exception:
        return False
    return err is not None and err.reason.startswith("dependency_")


class WorkflowHandle(Generic[R]):
    """A submitted workflow: its status, its steps, its result; pause, resume, cancel."""

    __slots__ = ("_client", "_decoder", "id", "queue")

    def __init__(self, client: Client, wf_id: str, decoder: TypedDecoder | None = None) -> None:
        self._client = client
        self.id = wf_id
        self.queue = queue_of(wf_id)
        self._decoder = decoder

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    async def _record(self) -> dict[bytes, bytes]:
        reads = await self._client.reads()
        rec = await reads.workflow_record(reads.keyspace(self.queue), self.id)
        if not rec:
            raise TaskNotFound(
                f"no workflow {self.id}: it never existed, or it ended and its record expired"
            )
        return rec

    async def step_count(self) -> int:
        return len(workflow_steps(self.id, await self._record()))

    async def _ids(self, field: bytes) -> list[str]:
        return (await self._record()).get(field, b"").decode().split()

    async def queues(self) -> list[str]:
        """The queues its steps live on, the workflow's own first."""
        return [self.queue, *await self._ids(W.QUEUES.b)]

    async def _fields_of(self, ids: list[str], fields: list[str]) -> list[list[bytes | None]]:
        """The same fields of steps on any queues, in the order of `ids`."""
        reads = await self._client.reads()
        by_queue: dict[str, list[int]] = {}
        for n, step_id in enumerate(ids):
            by_queue.setdefault(queue_of(step_id), []).append(n)
        rows: list[list[bytes | None]] = [[] for _ in ids]
        for queue, positions in by_queue.items():
            part = [ids[n] for n in positions]
            for n, row in zip(
                positions,
                await reads.task_fields(reads.keyspace(queue), part, fields),
                strict=True,
            ):
                rows[n] = row
        return rows

    async def status(self) -> TaskStatus:
        """SUCCEEDED, FAILED or CANCELLED once its last steps ended; else PAUSED, CANCELLED
        (being cancelled) or RUNNING."""
        rec = await self._record()
        saga = rec.get(W.SAGA_STATE.b)
        if saga == b"compensating":
            return TaskStatus.COMPENSATING
        if saga is not None:
            return TaskStatus(rec.get(W.SAGA_OUTCOME.b, b"failed").decode())
        if rec.get(W.STATE.b) == b"cancelled":
            return TaskStatus.CANCELLED
        last = rec.get(W.LAST.b, b"").decode().split()
        rows = await self._fields_of(last, [F.STATUS, F.OPTIONAL, F.ERROR])
        states = {_passed(r) for r in rows}
        if states == {TaskStatus.SUCCEEDED}:
            return TaskStatus.SUCCEEDED
        for final in (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED):
            if final in states:
                return final
        state = rec.get(W.STATE.b, b"running").decode()
        if state == "cancelled":
            return TaskStatus.CANCELLED
        return TaskStatus.PAUSED if state == "paused" else TaskStatus.RUNNING

    async def steps(self, *, offset: int = 0, limit: int | None = None) -> list[TaskInfo]:
        """Every step, in the order they were laid out, with status and result or error;
        `offset` and `limit` read one page of a large fan-out."""
        reads = await self._client.reads()
        infos: list[TaskInfo] = []
        wf = await self._record()
        ids = workflow_steps(self.id, wf)
        for step_id in ids[offset:] if limit is None else ids[offset : offset + limit]:
            rec = await reads.task_record(reads.keyspace(queue_of(step_id)), step_id)
            if rec:
                info = parse_info(step_id, rec, self._client.tasks)
                plan = wf.get(W.COMPENSATION_PREFIX.b + step_id.rsplit(".", 1)[1].encode())
                if plan is not None:
                    compensation = await self._compensation(json.loads(plan)["id"])
                    info = dataclasses.replace(info, compensation=compensation)
                infos.append(info)
        return infos

    async def _compensation(self, task_id: str) -> TaskInfo | None:
        reads = await self._client.reads()
        rec = await reads.task_record(reads.keyspace(queue_of(task_id)), task_id)
        return parse_info(task_id, rec, self._client.tasks) if rec else None

    async def wait_ended(self, timeout: float | None = None) -> TaskStatus:
        """Wait until the workflow has ended, its compensations included (a workflow
        without any ends with its last steps); returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.01
        while True:
            rec = await self._record()
            if W.ENDED_AT.b in rec:
                return await self.status()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id} has not ended after {timeout} s")
            # a saga's end is told through the forwarder, not the done channel: look again
            await asyncio.sleep(pause)
            pause = min(0.2, pause * 2)

    async def result(self, timeout: float | None = None) -> R:
        """The last step's value (a list when the workflow ends with a group); raises
        TaskFailed naming the step that failed, or TaskCancelled."""
        last = await self._ids(W.LAST.b)
        handles = [TaskHandle[Any](self._client, i, self._decoder) for i in last]
        # a bounded number at a time: each wait holds a pooled connection, and redis-py's
        # pool refuses more than 100 (a group of hundreds of last steps failed on a cluster)
        gate = asyncio.Semaphore(_WAIT_AT_ONCE)
        deadline = None if timeout is None else time.monotonic() + timeout

        async def one(handle: TaskHandle[Any]) -> Any:
            async with gate:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return await self._step_result(handle, left)

        try:
            results = await asyncio.gather(*(one(h) for h in handles))
        except (TaskFailed, TaskCancelled):
            if W.COMPENSATED_STEPS.b in await self._record():
                # its compensations have run when result() raises, as its steps have
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                await self.wait_ended(left)
            raise
        if len(handles) == 1:
            value: R = results[0]
            return value
        return list(results)  # type: ignore[return-value]

    async def _step_result(self, handle: TaskHandle[Any], timeout: float | None) -> Any:
        """A last step's value; None for an optional step that did not succeed."""
        try:
            return await handle.result(timeout)
        except (TaskFailed, TaskCancelled):
            [(optional, error)] = await self._fields_of([handle.id], [F.OPTIONAL, F.ERROR])
            if optional == b"1" and not _by_dependency(error):
                return None
            raise

    async def signal(
        self, step: str, name: str, data: Any = None, *, id: str | None = None
    ) -> TaskStatus:
        """Send the signal `name` to one step, named by its id or by its `name=` option:
        a step that has not started buffers it until it runs and waits for it. As
        `TaskHandle.signal` otherwise; returns the step's status."""
        rec = await self._record()
        ids = workflow_steps(self.id, rec)
        step_id = step if step in ids else None
        if step_id is None and W.STEP_NAMES.b in rec:
            step_id = decode_plain(rec[W.STEP_NAMES.b]).get(step)
        if step_id is None:
            raise TaskNotFound(f"workflow {self.id} has no step {step!r} (by id or name=)")
        return await TaskHandle[Any](self._client, step_id).signal(name, data, id=id)

    async def pause(self, *, running: bool = False, reason: str | None = None) -> TaskStatus:
        """Start no new step: steps waiting in the queue are held, running ones finish (or,
        with `running=True`, are paused too, through the task pause). Returns at once."""
        command = "pause_running" if running else "pause"
        await self._command(command, reason or f"workflow paused by {_WHO}")
        return await self.status()

    async def resume(self, reason: str | None = None) -> TaskStatus:
        """Continue from where it stopped: held steps go back to the queue."""
        await self._command("resume", reason or f"workflow resumed by {_WHO}")
        return await self.status()

    async def cancel(self, reason: str | None = None) -> TaskStatus:
        """Stop running steps and cancel every step not yet ended."""
        await self._command("cancel", reason or f"workflow cancelled by {_WHO}")
        return await self.status()

    async def _command(self, command: str, reason: str) -> str:
        """The command on the main record (which answers), then on each other queue's part:
        one workflow.lua per queue, each idempotent. A part that has ended refuses a pause
        or a resume, which the workflow as a whole does not."""
        broker = await self._client.broker()
        state = await broker.workflow_command(broker.keyspace(self.queue), self.id, command, reason)
        rec = await self._record()
        others = rec.get(W.QUEUES.b, b"").decode().split()
        for queue in others:
            with contextlib.suppress(TaskNotFound, InvalidTransition):
                await broker.workflow_command(broker.keyspace(queue), self.id, command, reason)
        if others or W.COMPENSATED_STEPS.b in rec:
            from segue._forward import forward_now

            # what the command ended is told to the other queues now, not at a worker's
            # poll; so are the compensations a cancel started (lib/saga.lua)
            await forward_now(broker, [self.queue, *others])
        return state
