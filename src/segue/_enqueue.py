"""Enqueuer: every way a call gets into a queue (one, many, after=, a sub-task, a workflow).

The App holds one, over its Client. Tasks, chains and groups enqueue through it (it is their
TaskOwner), a worker's runs enqueue their sub-tasks through it, and the scheduler builds a
schedule's stored call with it. It reads the settings through the client, so a change of
the App's settings (segue.testing points an App at its server) is seen here.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from ulid import ULID

from segue._calls import parse_debounced
from segue._codec import encode_args
from segue._durability import need_for
from segue._errors import ConfigurationError, DuplicateTask, PayloadError, ServerOutOfMemory
from segue._handle import TaskHandle, WorkflowHandle
from segue._hooks import Hook, call_hooks
from segue._keys import check_queue_name, queue_of
from segue._offload import offload_specs
from segue._ops_actions import index_workflow
from segue._options import check_key, lane_of, seconds
from segue._send import from_worker
from segue._shards import logical_queue, routing_key
from segue._wire import EnqueueSpec, GraphRecord, GraphStep
from segue._workflow import (
    MAX_SHAPE_STEPS,
    _first_signature,
    _place,
    _shape,
    _Step,
    _step_ids,
    check_steps,
    compensated_after,
    cross_queue,
    step_number,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from segue._broker import Broker
    from segue._client import Client
    from segue._keys import Keyspace
    from segue._settings import Settings
    from segue._task import Chain, Group, Signature


R = TypeVar("R")
log = logging.getLogger("segue.workflow")  # as workflows logged before the move
_BATCH = 1000


def _headers(sig: Signature[Any]) -> str:
    """The JSON of a call's headers (its options', then those hooks added), '' for none."""
    given = sig.opts.get("headers")
    if not given and not sig.headers:
        return ""
    return json.dumps({**(given or {}), **sig.headers}, separators=(",", ":"))


class Enqueuer:
    """Builds what the enqueue scripts take from signatures, sends it, and hands back handles;
    runs the before/after_enqueue hooks."""

    def __init__(self, client: Client, hooks: list[Hook]) -> None:
        self._client = client
        self.hooks = hooks
        self._checked_queues: set[str] = set()

    def __repr__(self) -> str:
        return f"<Enqueuer {self._client!r}>"

    @property
    def settings(self) -> Settings:
        return self._client.settings

    @property
    def _broker(self) -> Broker | None:
        return self._client.connected

    async def broker(self) -> Broker:
        return await self._client.broker()

    def queue_for(self, sig: Signature[Any]) -> str:
        """The queue a signature goes to: its options, else its task's, else the App's."""
        queue = sig.opts.get("queue") or sig.task.opts.queue or self._client.settings.queue
        if queue not in self._checked_queues:
            self._checked_queues.add(check_queue_name(queue))
        return queue

    def spec(
        self,
        sig: Signature[Any],
        task_id: str | None = None,
        queue: str | None = None,
        *,
        first_to_come: bool = False,
        step: bool = False,
        route: bool = True,
    ) -> tuple[str, EnqueueSpec]:
        """The queue a call goes to, and the task enqueue.lua creates for it (`step`: a
        workflow step, which alone may have a compensation)."""
        task, o = sig.task, sig.opts
        if "compensate" in o and not step:
            raise ConfigurationError(
                f"{task.name}: compensate= is for workflow steps (a compensation runs when its "
                "workflow fails); in a durable task, compensate in an except block"
            )
        d = task.opts
        routed = queue is None and route
        if queue is None:
            queue = self.queue_for(sig)
        else:
            # a sub-task joins its parent's queue (wait.lua counts its sub-tasks in that
            # slot); a workflow step comes here with its own queue already chosen
            own = o.get("queue") or d.queue
            if own is not None and own != logical_queue(queue):
                where = (
                    f"{task.name}.options(queue={own!r})"
                    if o.get("queue")
                    else (f"@app.task(queue={own!r}) on {task.name}")
                )
                raise ConfigurationError(
                    f"{where} asks for queue {own!r}, but it is a sub-task of a task on "
                    f"queue {queue!r}: a task's sub-tasks share its queue"
                )
        key = o.get("key")
        settings = self._client.settings
        # offloading: what the record would not hold goes to the payload store, up to its
        # own bound; refused here, before anything is written, when over that too
        offload = settings.offload_bytes is not None
        payload = encode_args(
            sig.args,
            sig.kwargs,
            what=f"arguments of task {task.name}",
            limit=settings.max_offload_bytes if offload else settings.max_payload_bytes,
            setting="max_offload_bytes" if offload else "max_payload_bytes",
        )
        try:
            # what a worker would refuse to decode is refused here, before anything is written
            task.args_decoder.check(payload, first_to_come=first_to_come)
        except PayloadError as exc:
            raise PayloadError(
                f"arguments of task {task.name} do not decode for its parameters, so a worker "
                f"would refuse them: {exc}"
            ) from None
        # hot (once per task enqueued): options left out cost no call
        delay = o.get("delay")
        delay = (seconds(delay) or 0.0) if delay else 0.0
        at: datetime | None = o.get("at")
        expire = o.get("expire", d.expire)
        if isinstance(expire, datetime):
            expire = max(0.001, expire.timestamp() - time.time())
        expire_s = seconds(expire) if expire else None
        timeout = o.get("timeout", d.timeout)
        ttl = o.get("ttl", d.ttl)
        unique = "" if d.unique is False else self._unique_key(sig)
        lane = (
            lane_of(
                d,
                lambda: task.bound_arguments(sig.args, sig.kwargs),
                sig.args,
                sig.kwargs,
                o.get("limit_key"),
            )
            if d.limits.has_keyed or "limit_key" in o
            else ""
        )
        if routed:
            queue = self._route(queue, sig, key, unique, lane)
        if task_id is None:
            task_id = f"{queue}:k:{key}" if key is not None else f"{queue}:{ULID()}"
        return (
            queue,
            EnqueueSpec(
                id=task_id,
                name=task.name,
                payload=payload,
                priority=o.get("priority", d.priority),
                delay_ms=int(delay * 1000),
                at_ms=int(at.timestamp() * 1000) if at is not None else 0,
                max_tries=o.get("max_tries", d.max_tries),
                timeout_ms=int(timeout * 1000) if timeout else 0,
                ttl_ms=-1 if ttl is None else int(ttl * 1000),
                unique=unique,
                expire_ms=max(1, int(expire_s * 1000)) if expire_s else 0,
                headers=_headers(sig) if sig.headers or o.get("headers") else "",
                version=d.version,
                from_worker=from_worker(o, task.by_name) if task.by_name else "",
                lane=lane,
            ),
        )

    def _route(
        self, queue: str, sig: Signature[Any], key: str | None, unique: str, lane: str
    ) -> str:
        """The shard of a sharded queue a new task goes to (docs/sharding.md): by the first
        key it has that must stay exact (limit key, idempotency key, unique key, debounce
        key), else round-robin. Before the process read the queue's count: the queue itself
        (its base, which its workers serve too)."""
        broker = self._broker
        sc = broker.shards.cached(queue) if broker is not None else None
        if sc is None or broker is None or (sc.count == 1 and not sc.old):
            return queue
        debounce = sig.opts.get("debounce_key", sig.task.name) if "debounce" in sig.opts else None
        return broker.shards.router.pick(queue, sc, routing_key(lane, key, unique, debounce))

    @staticmethod
    def _unique_key(sig: Signature[Any]) -> str:
        unique = sig.task.opts.unique
        if unique is False:
            return ""
        if unique is True:
            return f"{sig.task.name}:"
        return f"{sig.task.name}:{unique(*sig.args, **sig.kwargs)}"

    def child_handle(self, sig: Signature[R], task_id: str) -> TaskHandle[R]:
        """The handle of a sub-task enqueued by an earlier run (from the step journal):
        nothing is sent, so a replay never enqueues it again, even after its record expired."""
        return TaskHandle(self._client, task_id, sig.task.result_decoder, keeps_result=True)

    def _handle_for(
        self, sig: Signature[R], task_id: str, reply: Any, spec: EnqueueSpec
    ) -> TaskHandle[R]:
        """The handle an enqueue gives back: a reply naming another task id means a live
        task already holds this unique task's key."""
        if isinstance(reply, bytes | str):
            holder = reply.decode() if isinstance(reply, bytes) else reply
            if sig.opts.get("on_duplicate", sig.task.opts.on_duplicate) == "raise":
                raise DuplicateTask(
                    f"task {sig.task.name} is unique and task {holder} is already "
                    "queued or running",
                    holder,
                )
            task_id = holder
        return TaskHandle(
            self._client, task_id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
        )

    def graph_step(
        self,
        sig: Signature[Any],
        queue: str | None,
        task_id: str | None,
        deps: list[tuple[str, int]],
        mode: str,
        xdeps: list[tuple[str, int]] | None = None,
        xdependants: str = "",
        *,
        step: bool = False,
    ) -> GraphStep:
        """The task graph.lua creates for a call that waits for `deps` (id, input index)
        of its own queue and `xdeps` of other queues; `xdependants` are the tasks of other
        queues that wait for it ("<id>|<index>|<workflow id>" ...)."""
        _, spec = self.spec(sig, task_id, queue, first_to_come=bool(mode), step=step)
        return GraphStep(
            spec=spec,
            deps=" ".join(f"{d}|{i}" for d, i in deps),
            input_mode=mode,
            on_failure=sig.opts.get("on_failure", "fail"),
            optional="1" if sig.opts.get("optional") else "0",
            xdeps=" ".join(f"{d}|{i}" for d, i in xdeps or ()),
            xdependants=xdependants,
            compensable="1" if step and "compensate" in sig.opts else "",
        )

    async def enqueue_graph(
        self,
        queue: str,
        steps: list[GraphStep],
        workflow: GraphRecord | None,
        levels: Collection[str] = (),
    ) -> list[Any]:
        """Create tasks with dependencies in one queue, in order, in ONE script call: split
        in parts, an early step could end (and, with ttl=0, lose its record) before a later
        part made its dependants wait for it. `levels`: the durability of its tasks."""
        broker = await self.broker()
        ks = broker.keyspace(queue)
        await broker.register_queue(queue)
        if self.settings.offload_bytes is not None:
            await offload_specs(broker, [step.spec for step in steps])
        call = broker.graph_call(ks, workflow, steps)
        need = need_for(levels, self.settings)
        if need is None:
            replies = await broker.run_calls([call], retry=True)
        else:
            ids = tuple(step.spec.id for step in steps)
            replies = await broker.run_durable([call], need, ids)
        return list(replies[0])

    def _compensation(self, step: _Step, queue: str, wf_id: str, later: list[str]) -> list[str]:
        """A step's compensation as the saga plan holds it (lib/saga.lua): its number, and
        {id, a: its enqueue fields, w: the numbers of the compensated steps after it}. Its
        task gets the step's result first, as a chain's next step would."""
        sig: Signature[Any] = step.sig.opts["compensate"]
        task = sig.task
        if "compensate" in sig.opts or "after" in sig.opts:
            raise ConfigurationError(
                f"the compensation {task.name} of step {step.sig.task.name} cannot have "
                "compensate= or after= of its own"
            )
        if task.opts.unique is not False:
            raise ConfigurationError(
                f"task {task.name} is unique: a compensation cannot be (it could be refused "
                "while its workflow waits for it)"
            )
        task.check_args((None, *sig.args), sig.kwargs)
        n = step_number(step.id)
        own = self.queue_for(sig)
        task_id = f"{wf_id}.c{n}" if own == logical_queue(queue) else f"{own}:{wf_id}.c{n}"
        _, spec = self.spec(sig, task_id, own, first_to_come=True)
        fields = [v.decode() if isinstance(v, bytes) else str(v) for v in spec.argv()]
        plan = {"id": task_id, "a": fields, "w": [int(step_number(s)) for s in later]}
        return [n, json.dumps(plan, separators=(",", ":"))]

    async def enqueue_child(
        self, sig: Signature[R], task_id: str, on_parent_end: str = "cancel"
    ) -> TaskHandle[R]:
        """Enqueue a sub-task under a given id ('<parent id>.<n>'), in its parent's queue
        (the id's), counted in its parent's record for the cascades (_forward.py,
        "Cascades"); a repeat finds the task already there and changes nothing."""
        sig.check()
        queue, spec = self.spec(sig, task_id, queue_of(task_id))
        # the parent reads its sub-tasks' results, and finds them again by id when it runs
        # again: their records must outlive it, so they are kept at least the default ttl
        default = self.settings.result_ttl_seconds
        keep = -1 if default is None else int(max(default, 3600.0) * 1000)
        if spec.ttl_ms >= 0 and (keep < 0 or spec.ttl_ms < keep):
            spec.ttl_ms = keep
        broker = self._broker or await self.broker()
        ks = broker.keyspace(queue)
        if self.settings.offload_bytes is not None:
            await offload_specs(broker, (spec,))
        level = sig.opts.get("durability", self.settings.durability)
        parent, _, number = task_id.rpartition(".")
        call = broker.subtask_call(ks, spec, parent, int(number), on_parent_end)
        need = need_for((level,), self.settings)
        if need is None:
            reply = (await broker.run_calls([call], retry=True))[0]
        else:
            reply = (await broker.run_durable([call], need, (spec.id,)))[0]
        return self._handle_for(sig, task_id, reply, spec)

    async def _enqueue_after(self, sig: Signature[R]) -> TaskHandle[R]:
        after = sig.opts.get("after") or []
        await (await self.broker()).shards.get(self.queue_for(sig))
        # the task's shard first: a dependency in the same shard is local to it
        queue, first = self.spec(sig)
        deps: list[tuple[str, int]] = []
        xdeps: list[tuple[str, int]] = []
        for dep in after:
            dep_id = dep if isinstance(dep, str) else dep.id
            (deps if queue_of(dep_id) == queue else xdeps).append((dep_id, -1))
        step = self.graph_step(sig, queue, first.id, deps, "", xdeps)
        level = sig.opts.get("durability", self.settings.durability)
        replies = await self.enqueue_graph(queue, [step], None, (level,))
        task_id = step.spec.id
        handle = self._handle_for(sig, task_id, replies[0], step.spec)
        if xdeps and handle.id == task_id:
            # the task exists (waiting) before its dependencies on other queues learn of
            # it: a client that stops in between leaves it WAITING, visible, not lost
            from segue._forward import watch

            watches: dict[str, list[Any]] = {}
            for dep_id, _ in xdeps:
                watches.setdefault(queue_of(dep_id), []).extend((dep_id, task_id, -1, ""))
            await watch(await self.broker(), self.settings, watches, (level,))
        return handle

    async def enqueue_one(self, sig: Signature[R]) -> TaskHandle[R]:
        """Enqueue one call (the path of `task.enqueue`, kept short: it is hot)."""
        if self.hooks:
            await call_hooks(self.hooks, "before_enqueue", sig)
            handle = await self._enqueue_one(sig)
            await call_hooks(self.hooks, "after_enqueue", sig, handle)
            return handle
        return await self._enqueue_one(sig)

    async def _enqueue_one(self, sig: Signature[R]) -> TaskHandle[R]:
        if "after" in sig.opts:
            return await self._enqueue_after(sig)
        if "debounce" in sig.opts:
            return await self._enqueue_debounced(sig)
        broker = self._broker or await self.broker()
        await broker.shards.get(self.queue_for(sig))
        queue, spec = self.spec(sig)
        ks = broker.keyspace(queue)
        await broker.register_queue(queue)
        settings = self._client.settings
        if settings.offload_bytes is not None:
            await offload_specs(broker, (spec,))
        level = sig.opts.get("durability", settings.durability)
        mark = broker.ended_mark(ks)  # before the send, for the handle's result()
        if level == "memory":
            reply = (await broker.run_calls([broker.enqueue_call(ks, (spec,))], retry=True))[0][0]
        else:
            reply = await self._enqueue_durable(broker, ks, spec, level)
        if reply.__class__ is int:
            return TaskHandle(
                self._client,
                spec.id,
                sig.task.result_decoder,
                keeps_result=spec.ttl_ms != 0,
                mark=mark if reply == 1 else None,  # 0: an older task of this id
            )
        return self._handle_for(sig, spec.id, reply, spec)

    async def _enqueue_debounced(self, sig: Signature[R]) -> TaskHandle[R]:
        """One enqueue collapsed with the others of its debounce key (debounce.lua): the
        handle is its window's task, new or already there."""
        o = sig.opts
        window = seconds(o["debounce"]) or 0.0
        edge = o.get("debounce_edge", "trailing")
        if window <= 0 or edge not in ("trailing", "leading"):
            raise ConfigurationError(
                f"task {sig.task.name}: debounce= must be positive seconds and debounce_edge "
                f"'trailing' or 'leading', not {o['debounce']!r}, {edge!r}"
            )
        max_wait = seconds(o.get("max_wait"))
        key = o.get("debounce_key", sig.task.name)
        broker = self._broker or await self.broker()
        await broker.shards.get(self.queue_for(sig))
        queue, spec = self.spec(sig)
        if len(spec.payload) > self.settings.max_payload_bytes:
            # not offloaded: a collapse hands the arguments to a task of another id, and
            # an offloaded value's chunk keys are named for the task that enqueued them
            raise PayloadError(
                f"arguments of debounced task {sig.task.name} are {len(spec.payload)} bytes, "
                f"over max_payload_bytes ({self.settings.max_payload_bytes}): debounced "
                "arguments are not offloaded"
            )
        if edge == "trailing":
            spec = msgspec.structs.replace(spec, delay_ms=int(window * 1000), at_ms=0)
        ks = broker.keyspace(queue)
        await broker.register_queue(queue)
        call = broker.debounce_call(
            ks,
            spec,
            check_key(key),
            int(window * 1000),
            int(max_wait * 1000) if max_wait else 0,
            edge,
        )
        reply = (await broker.run_calls([call], retry=True))[0]
        task_id, _ = parse_debounced(reply)
        return TaskHandle(
            self._client, task_id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
        )

    async def _enqueue_durable(
        self, broker: Broker, ks: Keyspace, spec: EnqueueSpec, level: str
    ) -> Any:
        """One enqueue that waits for its durability level (not "memory")."""
        need = need_for((level,), self.settings)
        assert need is not None
        call = broker.enqueue_call(ks, (spec,))
        replies = await broker.run_durable([call], need, (spec.id,))
        return replies[0][0]

    async def enqueue_many(self, signatures: Iterable[Signature[R]]) -> list[TaskHandle[R]]:
        """Enqueue many calls: one script call per queue and batch of 1,000."""
        sigs = list(signatures)
        for sig in sigs:
            if "debounce" in sig.opts:
                raise ConfigurationError(
                    "enqueue_many does not debounce: enqueue debounced calls one at a time"
                )
        for sig in sigs if self.hooks else ():
            await call_hooks(self.hooks, "before_enqueue", sig)
        by_queue: dict[str, list[EnqueueSpec]] = {}
        order: dict[str, list[int]] = {}
        kept: list[EnqueueSpec] = []
        handles: list[TaskHandle[R]] = []
        levels: set[str] = set()
        settings = self._client.settings
        default_level = settings.durability
        broker = await self.broker()
        for q in {self.queue_for(sig) for sig in sigs}:
            await broker.shards.get(q)
        for n, sig in enumerate(sigs):
            if "after" in sig.opts:
                raise ConfigurationError(
                    "enqueue_many does not take signatures with after=; enqueue them one by "
                    "one, or build a workflow"
                )
            sig.check()
            levels.add(sig.opts.get("durability", default_level))
            queue, spec = self.spec(sig)
            by_queue.setdefault(queue, []).append(spec)
            order.setdefault(queue, []).append(n)
            kept.append(spec)
            handles.append(
                TaskHandle(
                    self._client, spec.id, sig.task.result_decoder, keeps_result=spec.ttl_ms != 0
                )
            )
        broker = await self.broker()
        if self.settings.offload_bytes is not None:
            await offload_specs(broker, kept)
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for queue, specs in by_queue.items():
            ks = broker.keyspace(queue)
            await broker.register_queue(queue)
            calls.extend(
                broker.enqueue_call(ks, specs[i : i + _BATCH]) for i in range(0, len(specs), _BATCH)
            )
        need = need_for(levels, self.settings)
        if need is None:
            done = await broker.run_calls(calls, retry=True)
        else:
            done = await broker.run_durable(calls, need, tuple(h.id for h in handles))
        replies = [r for reply in done for r in reply]
        positions = [n for queue in by_queue for n in order[queue]]
        for n, reply in zip(positions, replies, strict=True):
            if reply.__class__ is not int:  # a live task holds this unique task's key
                handles[n] = self._handle_for(sigs[n], handles[n].id, reply, kept[n])
        for sig, handle in zip(sigs, handles, strict=True) if self.hooks else ():
            await call_hooks(self.hooks, "after_enqueue", sig, handle)
        return handles

    async def enqueue_workflow(self, root: Chain[Any] | Group[Any]) -> WorkflowHandle[Any]:
        """Enqueue a chain or a group as one graph (what their `enqueue()` calls)."""
        first = _first_signature(root)
        queue = self.queue_for(first)
        await (await self.broker()).shards.get(queue)
        # the workflow's shard, and every step of its queue with it (docs/sharding.md)
        queue = self._route(queue, first, None, "", "")
        wf_id = f"{queue}:wf-{ULID()}"
        steps: list[_Step] = []
        last, _ = _place(root, [], "", steps, _step_ids(queue, wf_id))
        by_id = {s.id: s for s in steps}
        labels = check_steps(steps)
        xdependants, watches = cross_queue(steps, wf_id)
        fields: dict[str, list[GraphStep]] = {queue: []}  # the workflow's queue first
        ids: dict[str, list[str]] = {queue: []}
        for step in steps:
            here = queue_of(step.id)
            local = [(d, i) for d, i in step.deps if queue_of(d) == here]
            cross = [(d, i) for d, i in step.deps if queue_of(d) != here]
            told = " ".join(xdependants.get(step.id, ()))
            part = self.graph_step(
                step.sig, here, step.id, local, step.mode, cross, told, step=True
            )
            fields.setdefault(here, []).append(part)
            ids.setdefault(here, []).append(step.id)
        later = compensated_after(steps)
        compensations = [
            text
            for step in steps
            if "compensate" in step.sig.opts
            for text in self._compensation(step, queue, wf_id, later[step.id])
        ]
        ttl = self.settings.result_ttl_seconds
        ttl_ms = -1 if ttl is None else int(ttl * 1000)
        others = [q for q in fields if q != queue]
        levels = {s.sig.opts.get("durability", self.settings.durability) for s in steps}
        # the main record first: a workflow whose creation stopped half-way is visible (and
        # can be cancelled); an end forwarded to a part not created yet waits for it (early:)
        main = GraphRecord(
            wf_id,
            ttl_ms,
            " ".join(s.id for s in steps),
            " ".join(last),
            len(ids[queue]) + len(others),
            " ".join(others),
            compensations=tuple(compensations),
        )
        await self.enqueue_graph(queue, fields[queue], main, levels)
        broker = await self.broker()
        shape = _shape(root, iter(range(1, 1 << 62))) if len(steps) <= MAX_SHAPE_STEPS else None
        try:
            names = json.dumps(labels) if labels else ""
            await index_workflow(broker, broker.keyspace(queue), wf_id, json.dumps(shape), names)
        except ServerOutOfMemory:
            # the workflow exists and runs: only its line in the dashboard's list is missing
            log.warning("workflow %s is not listed on the dashboard: the server is full", wf_id)
        for q in others:
            record = GraphRecord(wf_id, ttl_ms, " ".join(ids[q]), "", len(ids[q]), part=q)
            await self.enqueue_graph(q, fields[q], record, levels)
        if watches:
            from segue._forward import watch

            await watch(await self.broker(), self.settings, watches, levels)
        decoder = by_id[last[0]].sig.task.result_decoder if len(last) == 1 else None
        return WorkflowHandle(self._client, wf_id, decoder)
