"""Workflows: a chain or a group of signatures laid out as one graph of tasks, and enqueued.

A workflow is compiled into tasks that wait for one another (graph.lua): a chain step waits
for the step before it and receives its result as its first argument; a step after a group
waits for every member and receives the list of their results, in order. Each step lives on
its queue (its own `queue=`, else the workflow's, the first step's); every transition within
one queue is one atomic script in that queue's slot, and a dependency that crosses queues is
carried by the outbox and the forwarder (_forward.py). The workflow record (`wf:<id>`, on
the workflow's queue) holds the step ids, its other queues, and whether the workflow is
paused or cancelled; each other queue has a part record of its own steps. Chain and Group
are built in _task (next to Signature); WorkflowHandle follows a workflow (_handle).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ulid import ULID

from segue._errors import ConfigurationError, ServerOutOfMemory
from segue._handle import WorkflowHandle
from segue._keys import check_queue_name, queue_of
from segue._ops_actions import index_workflow
from segue._task import Chain, Signature
from segue._wire import GraphRecord, GraphStep

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from segue._app import App
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


log = logging.getLogger("segue.workflow")

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
    fields: dict[str, list[GraphStep]] = {queue: []}  # the workflow's queue first
    ids: dict[str, list[str]] = {queue: []}
    for step in steps:
        here = queue_of(step.id)
        local = [(d, i) for d, i in step.deps if queue_of(d) == here]
        cross = [(d, i) for d, i in step.deps if queue_of(d) != here]
        told = " ".join(xdependants.get(step.id, ()))
        part = app.graph_step(step.sig, here, step.id, local, step.mode, cross, told)
        fields.setdefault(here, []).append(part)
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
    try:
        await index_workflow(broker, broker.keyspace(queue), wf_id, json.dumps(shape))
    except ServerOutOfMemory:
        # the workflow exists and runs: only its line in the dashboard's list is missing
        log.warning("workflow %s is not listed on the dashboard: the server is full", wf_id)
    for q in others:
        record = GraphRecord(wf_id, ttl_ms, " ".join(ids[q]), "", len(ids[q]), part=q)
        await app.enqueue_graph(q, fields[q], record, levels)
    if watches:
        from segue._forward import watch

        await watch(await app.broker(), app.settings, watches, levels)
    decoder = by_id[last[0]].sig.task.result_decoder if len(last) == 1 else None
    return WorkflowHandle(app._client, wf_id, decoder)
