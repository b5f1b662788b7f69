"""Workflows: a chain or a group of signatures laid out as one graph of tasks (no I/O).

A workflow is compiled into tasks that wait for one another (graph.lua): a chain step waits
for the step before it and receives its result as its first argument; a step after a group
waits for every member and receives the list of their results, in order. Each step lives on
its queue (its own `queue=`, else the workflow's, the first step's); every transition within
one queue is one atomic script in that queue's slot, and a dependency that crosses queues is
carried by the outbox and the forwarder (_forward.py). The workflow record (`wf:<id>`, on
the workflow's queue) holds the step ids, its other queues, and whether the workflow is
paused or cancelled; each other queue has a part record of its own steps. Chain and Group
are built in _task (next to Signature), laid out and checked here, the laid-out graph is
enqueued by the Enqueuer (_enqueue), and WorkflowHandle follows a workflow (_handle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segue._errors import ConfigurationError
from segue._keys import check_queue_name, queue_of
from segue._shards import logical_queue
from segue._task import Chain, Signature

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from segue._task import Group


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
        if own is None or own == logical_queue(queue):
            return f"{wf_id}.{n}"
        return f"{check_queue_name(own)}:{wf_id}.{n}"

    return new_id


def compensated_after(steps: list[_Step]) -> dict[str, list[str]]:
    """For each step with a compensation (`compensate=`), the nearest steps with one after
    it, through steps without one: its compensation waits for theirs (lib/saga.lua), so
    compensations run in the reverse order of their steps, a group's members together."""
    after: dict[str, list[str]] = {}
    ids = {s.id for s in steps}
    for step in steps:
        for dep, _ in step.deps:
            if dep in ids:
                after.setdefault(dep, []).append(step.id)
    has = {s.id for s in steps if s.sig.opts.get("compensate") is not None}
    plan: dict[str, list[str]] = {}
    for sid in has:
        found: list[str] = []
        seen: set[str] = set()
        todo = list(after.get(sid, ()))
        while todo:
            nxt = todo.pop()
            if nxt in seen:
                continue
            seen.add(nxt)
            if nxt in has:
                found.append(nxt)
            else:
                todo.extend(after.get(nxt, ()))
        plan[sid] = found
    return plan


def step_number(step_id: str) -> str:
    """The `.n` of a step id (a step of another queue has its queue in front)."""
    return step_id.rsplit(".", 1)[1]


def check_steps(steps: list[_Step]) -> dict[str, str]:
    """Check each step's arguments and options before anything is sent, and add its after=
    to its dependencies; returns the steps' ids by their name=."""
    labels: dict[str, str] = {}
    for step in steps:
        label: Any = step.sig.opts.get("name")
        if label is None:
            continue
        if not isinstance(label, str) or not label or label in labels:
            raise ConfigurationError(
                f"workflow step name {label!r}: a step's name= must be a non-empty "
                "string, unique within its workflow"
            )
        labels[label] = step.id
    for step in steps:
        sig = step.sig
        sig.task.check_args((None, *sig.args) if step.mode else sig.args, sig.kwargs)
        if sig.task.opts.unique is not False:
            raise ConfigurationError(
                f"task {sig.task.name} is unique: a workflow step cannot be (its step could "
                "be refused while the rest of the workflow waits for it)"
            )
        if "debounce" in sig.opts:
            raise ConfigurationError(
                f"task {sig.task.name} is debounced: a workflow step cannot be (its step "
                "could be collapsed into another task while the workflow waits for it)"
            )
        # after= on a step: it also waits for those tasks (no value passed on)
        for dep in sig.opts.get("after") or ():
            step.deps.append((dep if isinstance(dep, str) else dep.id, -1))
    return labels


def cross_queue(
    steps: list[_Step], wf_id: str
) -> tuple[dict[str, list[str]], dict[str, list[Any]]]:
    """The dependencies that cross queues: a step of this workflow learns of its dependant
    when it is created (the first dict, by step id); a task outside the workflow is watched
    once the parts exist (the second, by the queue of the task watched)."""
    by_id = {s.id for s in steps}
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
    return xdependants, watches
