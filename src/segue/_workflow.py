"""Workflows: chains and groups of signatures, enqueued as one graph, followed by a handle.

A workflow is compiled into tasks that wait for one another (graph.lua): a chain step waits
for the step before it and receives its result as its first argument; a step after a group
waits for every member and receives the list of their results, in order. Each step lives on
its queue (its own `queue=`, else the workflow's, the first step's); every transition within
one queue is one atomic script in that queue's slot, and a dependency that crosses queues is
carried by the outbox and the forwarder (_forward.py). The workflow record (`wf:<id>`, on
the workflow's queue) holds the step ids, its other queues, and whether the workflow is
paused or cancelled; each other queue has a part record of its own steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ulid import ULID

from segue._broker import GraphRecord
from segue._errors import (
    ConfigurationError,
    InvalidTransition,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
)
from segue._handle import TaskHandle, parse_error, parse_info
from segue._keys import check_queue_name, queue_of
from segue._ops_actions import index_workflow
from segue._state import TaskInfo, TaskStatus
from segue._task import Signature, Task

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from segue._app import App
    from segue._codec import TypedDecoder

R = TypeVar("R")
R2 = TypeVar("R2")
P2 = ParamSpec("P2")
_WHO = f"{socket.gethostname()}:{os.getpid()}"
_WAIT_AT_ONCE = 32  # last steps whose results one result() call waits for at once


def _as_node(app: App, other: Any) -> Signature[Any] | Chain[Any] | Group[Any]:
    if isinstance(other, Task):
        return Signature(other, (), {}, other.call_options)
    if isinstance(other, Signature | Chain | Group):
        return other
    raise TypeError(f"cannot chain {other!r}: expected a task, a signature, a chain or a group")


class Chain(Generic[R]):
    """Steps run one after another, each receiving the previous step's result first."""

    __slots__ = ("app", "stages")

    def __init__(self, app: App, stages: tuple[Signature[Any] | Chain[Any] | Group[Any], ...]):
        self.app = app
        self.stages = stages

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.stages)

    @overload
    def __or__(self, other: Group[R2]) -> Chain[list[R2]]: ...
    @overload
    def __or__(self, other: Signature[R2] | Chain[R2] | Task[Any, R2]) -> Chain[R2]: ...
    def __or__(self, other: Any) -> Chain[Any]:
        return Chain(self.app, (*self.stages, _as_node(self.app, other)))

    def then(
        self, task: Task[Concatenate[R, P2], R2], *args: P2.args, **kwargs: P2.kwargs
    ) -> Chain[R2]:
        """Add a step that receives this chain's result as its first argument."""
        return Chain(self.app, (*self.stages, Signature(task, args, kwargs, task.call_options)))

    async def enqueue(self) -> WorkflowHandle[R]:
        return await enqueue_workflow(self.app, self)


class Group(Generic[R]):
    """Steps run in parallel; a step after the group receives the list of their results."""

    __slots__ = ("app", "members")

    def __init__(
        self, app: App, members: Iterable[Signature[R] | Chain[R] | Group[Any] | Task[Any, R]]
    ):
        self.app = app
        self.members = tuple(_as_node(app, m) for m in members)
        if not self.members:
            raise ConfigurationError("a group needs at least one step")

    def __repr__(self) -> str:
        return f"group({', '.join(repr(m) for m in self.members)})"

    @overload
    def __or__(self, other: Group[R2]) -> Chain[list[R2]]: ...
    @overload
    def __or__(self, other: Signature[R2] | Chain[R2] | Task[Any, R2]) -> Chain[R2]: ...
    def __or__(self, other: Any) -> Chain[Any]:
        return Chain(self.app, (self, _as_node(self.app, other)))

    def then(
        self, task: Task[Concatenate[list[R], P2], R2], *args: P2.args, **kwargs: P2.kwargs
    ) -> Chain[R2]:
        """Add a step that receives the list of the members' results as its first argument."""
        return Chain(self.app, (self, Signature(task, args, kwargs, task.call_options)))

    async def enqueue(self) -> WorkflowHandle[list[R]]:
        return await enqueue_workflow(self.app, self)


@dataclass(slots=True)
class _Step:
    sig: Signature[Any]
    id: str
    deps: list[tuple[str, int]]
    mode: str  # '' no input, '1' the previous result, 'l' the list of previous results


def _place(
    node: Signature[Any] | Chain[Any] | Group[Any],
    inputs: list[str],
    mode: str,
    out: list[_Step],
    new_id: Callable[[Signature[Any]], str],
) -> tuple[list[str], str]:
    """Lay `node` out after `inputs`; returns its terminal step ids and the input mode a
    step after it gets ('1' after a single step, 'l' after a group)."""
    if isinstance(node, Signature):
        sid = new_id(node)
        deps = [(d, i) for i, d in enumerate(inputs)] if mode else []
        out.append(_Step(node, sid, deps, mode))
        return [sid], "1"
    if isinstance(node, Chain):
        cur, cur_mode = inputs, mode
        for stage in node.stages:
            cur, cur_mode = _place(stage, cur, cur_mode, out, new_id)
        return cur, cur_mode
    outs: list[str] = []
    for member in node.members:
        ids, _ = _place(member, inputs, mode, out, new_id)
        outs.extend(ids)
    return outs, "l"


# a workflow of more steps than this keeps no shape (its page lists its steps only)
MAX_SHAPE_STEPS = 500


def _shape(node: Signature[Any] | Chain[Any] | Group[Any], numbers: Iterator[int]) -> Any:
    """The workflow's structure for the dashboard: a step is its number (the `.n` of its
    id), a chain `{"chain": [...]}`, a group `{"group": [...]}`; numbered in layout order,
    as _step_ids numbers them."""
    if isinstance(node, Signature):
        return next(numbers)
    if isinstance(node, Chain):
        return {"chain": [_shape(stage, numbers) for stage in node.stages]}
    return {"group": [_shape(member, numbers) for member in node.members]}


def _first_signature(node: Signature[Any] | Chain[Any] | Group[Any]) -> Signature[Any]:
    while not isinstance(node, Signature):
        node = node.stages[0] if isinstance(node, Chain) else node.members[0]
    return node


def _step_ids(queue: str, wf_id: str) -> Callable[[Signature[Any]], str]:
    """Step ids: `<workflow id>.<n>` on the workflow's queue, `<queue>:<workflow id>.<n>`
    on another (a step asking for its own queue), so that the id names its queue."""
    counter = iter(range(1, 1 << 62))

    def new_id(sig: Signature[Any]) -> str:
        own = sig.opts.get("queue") or sig.task.opts.queue
        n = next(counter)
        if own is None or own == queue:
            return f"{wf_id}.{n}"
        return f"{check_queue_name(own)}:{wf_id}.{n}"

    return new_id


async def enqueue_workflow(app: App, root: Chain[Any] | Group[Any]) -> WorkflowHandle[Any]:
    first = _first_signature(root)
    queue = app.queue_for(first)
    wf_id = f"{queue}:wf-{ULID()}"
    steps: list[_Step] = []
    last, _ = _place(root, [], "", steps, _step_ids(queue, wf_id))
    by_id = {s.id: s for s in steps}
    for step in steps:
        sig = step.sig
        sig.task.check_args((None, *sig.args) if step.mode else sig.args, sig.kwargs)
        if sig.task.opts.unique is not False:
            raise ConfigurationError(
                f"task {sig.task.name} is unique: a workflow step cannot be (its step could "
                "be refused while the rest of the workflow waits for it)"
            )
        # after= on a step: it also waits for those tasks (no value passed on)
        for dep in sig.opts.get("after") or ():
            step.deps.append((dep if isinstance(dep, str) else dep.id, -1))
    # a dependency on another queue: a step of this workflow learns of its dependant when
    # it is created (xdependants); a task outside it is watched once the parts exist
    xdependants: dict[str, list[str]] = {}
    watches: dict[str, list[Any]] = {}
    for step in steps:
        here = queue_of(step.id)
        for dep_id, index in step.deps:
            there = queue_of(dep_id)
            if there == here:
                continue
            if dep_id in by_id:
                xdependants.setdefault(dep_id, []).append(f"{step.id}|{index}|{wf_id}")
            else:
                watches.setdefault(there, []).extend((dep_id, step.id, index, wf_id))
    fields: dict[str, list[Any]] = {queue: []}  # the workflow's queue first
    ids: dict[str, list[str]] = {queue: []}
    for step in steps:
        here = queue_of(step.id)
        local = [(d, i) for d, i in step.deps if queue_of(d) == here]
        cross = [(d, i) for d, i in step.deps if queue_of(d) != here]
        told = " ".join(xdependants.get(step.id, ()))
        part = app.graph_fields(step.sig, here, step.id, local, step.mode, cross, told)
        fields.setdefault(here, []).extend(part)
        ids.setdefault(here, []).append(step.id)
    ttl = app.settings.result_ttl_seconds
    ttl_ms = -1 if ttl is None else int(ttl * 1000)
    others = [q for q in fields if q != queue]
    levels = {s.sig.opts.get("durability", app.settings.durability) for s in steps}
    # the main record first: a workflow whose creation stopped half-way is visible (and
    # can be cancelled); an end forwarded to a part not created yet waits for it (early:)
    main = GraphRecord(
        wf_id,
        ttl_ms,
        " ".join(s.id for s in steps),
        " ".join(last),
        len(ids[queue]) + len(others),
        " ".join(others),
    )
    await app.enqueue_graph(queue, fields[queue], main, levels)
    broker = await app.broker()
    shape = _shape(root, iter(range(1, 1 << 62))) if len(steps) <= MAX_SHAPE_STEPS else None
    await index_workflow(broker, broker.keyspace(queue), wf_id, json.dumps(shape))
    for q in others:
        record = GraphRecord(wf_id, ttl_ms, " ".join(ids[q]), "", len(ids[q]), part=q)
        await app.enqueue_graph(q, fields[q], record, levels)
    if watches:
        from segue._forward import watch

        await watch(await app.broker(), app.settings, watches, levels)
    decoder = by_id[last[0]].sig.task.result_decoder if len(last) == 1 else None
    return WorkflowHandle(app, wf_id, decoder)


def _passed(row: list[bytes | None]) -> TaskStatus:
    """A last step's status as the workflow counts it: an optional one that failed on its
    own counts as succeeded; one that ended because an earlier step failed does not."""
    status = TaskStatus(row[0].decode()) if row[0] else TaskStatus.EXPIRED
    if status.is_final and row[1] == b"1" and not _by_dependency(row[2]):
        return TaskStatus.SUCCEEDED
    return status


def _by_dependency(error: bytes | None) -> bool:
    err = parse_error(error)
    return err is not None and err.reason.startswith("dependency_")


class WorkflowHandle(Generic[R]):
    """A submitted workflow: its status, its steps, its result; pause, resume, cancel."""

    __slots__ = ("_app", "_decoder", "id", "queue")

    def __init__(self, app: App, wf_id: str, decoder: TypedDecoder | None = None) -> None:
        self._app = app
        self.id = wf_id
        self.queue = queue_of(wf_id)
        self._decoder = decoder

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    async def _record(self) -> dict[bytes, bytes]:
        broker = await self._app.broker()
        rec = await broker.workflow_record(broker.keyspace(self.queue), self.id)
        if not rec:
            raise TaskNotFound(
                f"no workflow {self.id}: it never existed, or it ended and its record expired"
            )
        return rec

    async def step_count(self) -> int:
        return len(await self._ids(b"steps"))

    async def _ids(self, field: bytes) -> list[str]:
        return (await self._record()).get(field, b"").decode().split()

    async def queues(self) -> list[str]:
        """The queues its steps live on, the workflow's own first."""
        return [self.queue, *await self._ids(b"queues")]

    async def _fields_of(self, ids: list[str], fields: list[str]) -> list[list[bytes | None]]:
        """The same fields of steps on any queues, in the order of `ids`."""
        broker = await self._app.broker()
        by_queue: dict[str, list[int]] = {}
        for n, step_id in enumerate(ids):
            by_queue.setdefault(queue_of(step_id), []).append(n)
        rows: list[list[bytes | None]] = [[] for _ in ids]
        for queue, positions in by_queue.items():
            part = [ids[n] for n in positions]
            for n, row in zip(
                positions,
                await broker.task_fields(broker.keyspace(queue), part, fields),
                strict=True,
            ):
                rows[n] = row
        return rows

    async def status(self) -> TaskStatus:
        """SUCCEEDED, FAILED or CANCELLED once its last steps ended; else PAUSED, CANCELLED
        (being cancelled) or RUNNING."""
        rec = await self._record()
        if rec.get(b"st") == b"cancelled":
            return TaskStatus.CANCELLED
        last = rec.get(b"last", b"").decode().split()
        rows = await self._fields_of(last, ["s", "opt", "e"])
        states = {_passed(r) for r in rows}
        if states == {TaskStatus.SUCCEEDED}:
            return TaskStatus.SUCCEEDED
        for final in (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED):
            if final in states:
                return final
        state = rec.get(b"st", b"running").decode()
        if state == "cancelled":
            return TaskStatus.CANCELLED
        return TaskStatus.PAUSED if state == "paused" else TaskStatus.RUNNING

    async def steps(self, *, offset: int = 0, limit: int | None = None) -> list[TaskInfo]:
        """Every step, in the order they were laid out, with status and result or error;
        `offset` and `limit` read one page of a large fan-out."""
        broker = await self._app.broker()
        infos: list[TaskInfo] = []
        ids = await self._ids(b"steps")
        for step_id in ids[offset:] if limit is None else ids[offset : offset + limit]:
            rec = await broker.task_record(broker.keyspace(queue_of(step_id)), step_id)
            if rec:
                infos.append(parse_info(step_id, rec, self._app))
        return infos

    async def result(self, timeout: float | None = None) -> R:
        """The last step's value (a list when the workflow ends with a group); raises
        TaskFailed naming the step that failed, or TaskCancelled."""
        last = await self._ids(b"last")
        handles = [TaskHandle[Any](self._app, i, self._decoder) for i in last]
        # a bounded number at a time: each wait holds a pooled connection, and redis-py's
        # pool refuses more than 100 (a group of hundreds of last steps failed on a cluster)
        gate = asyncio.Semaphore(_WAIT_AT_ONCE)
        deadline = None if timeout is None else time.monotonic() + timeout

        async def one(handle: TaskHandle[Any]) -> Any:
            async with gate:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return await self._step_result(handle, left)

        results = await asyncio.gather(*(one(h) for h in handles))
        if len(handles) == 1:
            value: R = results[0]
            return value
        return list(results)  # type: ignore[return-value]

    async def _step_result(self, handle: TaskHandle[Any], timeout: float | None) -> Any:
        """A last step's value; None for an optional step that did not succeed."""
        try:
            return await handle.result(timeout)
        except (TaskFailed, TaskCancelled):
            [(optional, error)] = await self._fields_of([handle.id], ["opt", "e"])
            if optional == b"1" and not _by_dependency(error):
                return None
            raise

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
        broker = await self._app.broker()
        state = await broker.workflow_command(broker.keyspace(self.queue), self.id, command, reason)
        others = await self._ids(b"queues")
        for queue in others:
            with contextlib.suppress(TaskNotFound, InvalidTransition):
                await broker.workflow_command(broker.keyspace(queue), self.id, command, reason)
        if others:
            from segue._forward import forward_now

            # what the command ended is told to the other queues now, not at a worker's poll
            await forward_now(broker, [self.queue, *others])
        return state
