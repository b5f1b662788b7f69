"""One thin wrapper per script: the KEYS it takes, its ARGV from typed values, and the
parsing of its reply (the layouts are documented in each script's header).

A wrapper builds a call, `(script, keys, args)`, that the Broker sends alone or pipelined
with others in one round trip; what comes back is read by the wrapper's `parse_*`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgspec.structs import astuple as _astuple

from segue import _scripts
from segue._outcome import Finished, FinishResult, Succeeded
from segue._wire import ENQUEUE_WIDTH, ClaimReply, EnqueueSpec, GraphRecord, GraphStep
from segue._wire import text as _text

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from segue._keys import CronKeys, Keyspace, WorkerKeys
    from segue._settings import Settings

ScriptCall = tuple[_scripts.Script, list[str], list[Any]]
# scripts are loaded at their first call (load() caches them): a process that sends none,
# like most CLI commands, reads none


def enqueue(ks: Keyspace, specs: Sequence[EnqueueSpec], max_len: int) -> ScriptCall:
    """Create tasks, each idempotent by id (enqueue.lua). `max_len`: 0 for no limit."""
    args: list[Any] = [ks.base, len(specs), max_len]
    for spec in specs:
        args += _astuple(spec)[:ENQUEUE_WIDTH]  # hot: EnqueueSpec.argv inline
    return (_scripts.load("enqueue"), ks.enqueue_keys, _with_lanes(args, specs))


def _with_lanes(args: list[Any], specs: Iterable[EnqueueSpec]) -> list[Any]:
    """The lanes of a call's keyed tasks after its specs: their count, then index (from 0)
    and lane of each; a call without keyed tasks sends nothing more."""
    lanes = [(i, spec.lane) for i, spec in enumerate(specs) if spec.lane]
    if lanes:
        args.append(len(lanes))
        args.extend(x for pair in lanes for x in pair)
    return args


def debounce(
    ks: Keyspace,
    spec: EnqueueSpec,
    max_len: int,
    key: str,
    window_ms: int,
    max_wait_ms: int,
    edge: str,
) -> ScriptCall:
    """One debounced enqueue (debounce.lua); see parse_debounced for the reply."""
    args: list[Any] = [ks.base, max_len, key, window_ms, max_wait_ms, edge, *spec.argv()]
    if spec.lane:
        args.append(spec.lane)
    return (_scripts.load("debounce"), ks.enqueue_keys, args)


def parse_debounced(reply: list[Any]) -> tuple[str, int]:
    """The window's task id, and 1 created, 2 collapsed into it, 0 dropped."""
    return _text(reply[0]), int(reply[1])


def parse_created(reply: list[Any]) -> list[int | str]:
    """enqueue.lua's and graph.lua's reply: per task 1 created, 0 already existed, or the
    id of the live task that holds its unique key."""
    return [r if r.__class__ is int else _text(r) for r in reply]


def graph(
    ks: Keyspace, record: GraphRecord | None, steps: Sequence[GraphStep], max_len: int
) -> ScriptCall:
    """Create tasks with dependencies, and a workflow's record on this queue when given
    (graph.lua)."""
    w = record or GraphRecord("", -1, "", "", 0)
    args: list[Any] = [ks.base, ks.done_channel, w.id, w.ttl_ms, w.steps, w.last, w.left]
    args.extend((w.queues, w.part, len(steps), max_len, len(w.compensations) // 2))
    args.extend(w.compensations)
    for step in steps:
        args.extend(step.argv())
    return (_scripts.load("graph"), ks.graph_keys, _with_lanes(args, (s.spec for s in steps)))


def claim(
    ks: Keyspace,
    settings: Settings,
    worker_id: str,
    want: int,
    token: str = "",
    answered: str = "",
    *,
    holds_last: bool = False,
) -> ScriptCall:
    """A claim of up to `want` tasks (claim.lua); sent again with the same `token` after a
    lost reply, it returns the tasks the first call leased. `answered`: the token of the
    previous claim, whose reply came, so its record can go. `holds_last`: the worker runs a
    task on its last delivery, so it gets no other."""
    args = [
        ks.base,
        worker_id,
        want,
        int(settings.lease_seconds * 1000),
        settings.max_deliveries,
        ks.done_channel,
        settings.dead_letter_cap,
        token,
        answered,
        "1" if holds_last else "0",
    ]
    return (_scripts.load("claim"), ks.claim_keys, args)


def parse_claim(reply: list[Any]) -> ClaimReply:
    return ClaimReply.parse(reply)


def finish(
    ks: Keyspace, finished: Sequence[Finished], dead_letter_cap: int, *, claim_follows: bool
) -> ScriptCall:
    """Record the outcomes of runs, fenced by lease generation (finish.lua)."""
    args: list[Any] = [ks.base, ks.done_channel, dead_letter_cap, 1 if claim_follows else 0]
    args.append(len(finished))
    for f in finished:
        o = f.outcome
        if type(o) is Succeeded:  # hot (once per run): Finished.argv inline, no calls
            args += (f.id, f.gen, "ok", o.result, "")
        else:
            args.extend(f.argv())
    return (_scripts.load("finish"), ks.finish_keys, args)


_FINISH_RESULTS = tuple(FinishResult)  # by value 0..3: indexing costs less than the enum's call


def parse_finish(reply: list[Any]) -> list[FinishResult]:
    return [_FINISH_RESULTS[r] for r in reply]


def renew(ks: Keyspace, worker_id: str, lease_ms: int, held: Sequence[str]) -> ScriptCall:
    """Extend the leases a worker holds (`held`: id, gen, id, gen ...) (renew.lua)."""
    return (_scripts.load("renew"), [ks.leases, ks.meta], [ks.base, worker_id, lease_ms, *held])


def parse_renew(reply: list[Any]) -> tuple[list[str], list[tuple[str, str]]]:
    """The ids whose lease the worker lost, and (id, stored request) of the others."""
    gone, requests = reply
    return [_text(x) for x in gone], [(_text(i), _text(r)) for i, r in requests]


def control(ks: Keyspace, task_id: str, command: str, reason: str) -> ScriptCall:
    """An operator's pause | resume | cancel of one task (control.lua)."""
    return (
        _scripts.load("control"),
        ks.control_keys,
        [ks.base, task_id, command, reason, ks.done_channel],
    )


def parse_control(reply: list[Any]) -> tuple[str, bool, bool]:
    """The status after the command, whether a running task was asked, and whether it left
    work for the forwarder (a cascade to sub-tasks to walk)."""
    status, asked = reply[0], reply[1]
    return _text(status), bool(int(asked)), len(reply) > 2 and bool(int(reply[2]))


def subtask(
    ks: Keyspace, spec: EnqueueSpec, max_len: int, parent: str, number: int, policy: str
) -> ScriptCall:
    """Create sub-task number `number` of `parent` (subtask.lua); `policy`: cancel | abandon.
    The reply is one of parse_created's."""
    args: list[Any] = [ks.base, max_len, parent, number, policy, *spec.argv()]
    if spec.lane:
        args.append(spec.lane)
    return (_scripts.load("subtask"), ks.enqueue_keys, args)


def cascade(ks: Keyspace, most: int) -> ScriptCall:
    """Advance this queue's cascade markers by at most `most` sub-tasks (cascade.lua)."""
    return (_scripts.load("cascade"), ks.control_keys, [ks.base, ks.done_channel, most])


def parse_cascade(reply: list[Any]) -> tuple[int, int]:
    """Sub-tasks looked at, and markers left."""
    return int(reply[0]), int(reply[1])


def workflow(ks: Keyspace, wf_id: str, command: str, reason: str) -> ScriptCall:
    """pause | pause_running | resume | cancel of a whole workflow (workflow.lua); replies
    its state after the command."""
    return (
        _scripts.load("workflow"),
        ks.control_keys,
        [ks.base, wf_id, command, reason, ks.done_channel],
    )


def retry(ks: Keyspace, task_id: str, reason: str) -> ScriptCall:
    """Queue an ended task again, as new (retry.lua); replies 'queued'."""
    return (_scripts.load("retry"), ks.retry_keys, [ks.base, task_id, reason])


def purge(ks: Keyspace, most: int, reason: str, include_sleeping: bool = False) -> ScriptCall:
    """Cancel up to `most` tasks that wait to run (purge.lua); replies how many."""
    args = [ks.base, ks.done_channel, most, reason, "1" if include_sleeping else "0"]
    return (_scripts.load("purge"), ks.purge_keys, args)


def wait(ks: Keyspace, parent: str, gen: str, children: Sequence[str]) -> ScriptCall:
    """A running task waits for its sub-tasks (wait.lua): -1 the run lost its task, 0 all
    ended, n it now waits for n."""
    return (_scripts.load("wait"), [ks.leases, ks.waiting], [ks.base, parent, gen, *children])


def signal(
    ks: Keyspace, task_id: str, name: str, data: bytes, signal_id: str, most: int
) -> ScriptCall:
    """Deliver a signal, once per signal id (signal.lua); replies [outcome, status]:
    delivered | buffered | duplicate."""
    args: list[Any] = [ks.base, task_id, name, data, signal_id, most]
    return (_scripts.load("signal"), ks.signal_keys, args)


def parse_signal(reply: Any) -> tuple[str, str]:
    return _text(reply[0]), _text(reply[1])


def signal_wait(
    ks: Keyspace, task_id: str, gen: str, name: str, field: str, deadline_ms: int, began_ms: int
) -> ScriptCall:
    """A running task waits for a signal (signal_wait.lua); replies [-1] lost, [1, data]
    taken, [2] timed out, [0] the run must stop."""
    args: list[Any] = [ks.base, task_id, gen, name, field, deadline_ms, began_ms]
    args.append(ks.done_channel)
    return (_scripts.load("signal_wait"), ks.signal_wait_keys, args)


def event(
    ks: Keyspace, task_id: str, gen: str, kind: str, a: str, b: str, c: str = ""
) -> ScriptCall:
    """A running task's progress (kind 'progress': done, total, message) or own event
    ('emit': name, JSON data) (event.lua); replies 1, or 0 when the run lost the task."""
    return (_scripts.load("event"), [ks.events], [ks.base, task_id, gen, kind, a, b, c])


def query(ks: Keyspace, task_id: str, message: str) -> ScriptCall:
    """Hand a query to the worker running the task (query.lua)."""
    return (_scripts.load("query"), [ks.task(task_id), ks.control_channel], [task_id, message])


def parse_query(reply: Any) -> tuple[str, int, str] | None:
    """query.lua's reply: (status, workers listening, the holding worker's id), or None
    when there is no record."""
    if not reply:
        return None
    return _text(reply[0]), int(reply[1]), _text(reply[2])


def state(
    ks: Keyspace, task_id: str, gen: str, values: dict[str, bytes], deletes: Sequence[str]
) -> ScriptCall:
    """Write a running task's durable state (state.lua); replies 1, or 0 when rejected."""
    args: list[Any] = [ks.base, task_id, gen, len(values)]
    for k, v in values.items():
        args.extend((k, v))
    args.extend(deletes)
    return (_scripts.load("state"), [ks.state(task_id)], args)


def migrate(
    ks: Keyspace,
    task_id: str,
    gen: str,
    versions: tuple[int, int],
    values: dict[str, bytes],
    deletes: Sequence[str],
) -> ScriptCall:
    """Move a running task from `versions[0]` to `versions[1]` with its upgraded state
    (migrate.lua); replies 1, or 0 when rejected."""
    args: list[Any] = [ks.base, task_id, gen, versions[0], versions[1], len(values)]
    for k, v in values.items():
        args.extend((k, v))
    args.extend(deletes)
    return (_scripts.load("migrate"), [ks.state(task_id)], args)


def journal(
    ks: Keyspace, task_id: str, gen: str, field: str, entry: bytes, line: str
) -> ScriptCall:
    """Record one step journal entry and its summary line (journal.lua); replies 1, or 0
    when rejected."""
    args: list[Any] = [ks.base, task_id, gen, field, entry, line]
    return (_scripts.load("journal"), [ks.state(task_id)], args)


def stream(
    ks: Keyspace,
    task_id: str,
    gen: str,
    tries: int,
    max_entries: int,
    linger_ms: int,
    chunks: bytes,
    batch: int,
    resumed: bool,
) -> ScriptCall:
    """Append a batch of chunks (a JSON array) to a running task's output stream
    (stream.lua); replies the entry id, or 0 when rejected."""
    args: list[Any] = [gen, tries, max_entries, linger_ms, chunks, batch, 1 if resumed else 0]
    return (_scripts.load("stream"), [ks.task(task_id), ks.output(task_id)], args)


def watch(ks: Keyspace, watches: Sequence[Any]) -> ScriptCall:
    """Tasks of other queues wait for tasks of this one (watch.lua, 4 fields each:
    dependency, waiting task, input index, workflow id); replies the entries it added."""
    return (_scripts.load("watch"), [ks.outbox], [ks.base, *watches])


def forward(ks: Keyspace, entries: Sequence[bytes]) -> ScriptCall:
    """Deliver outbox entries of other queues to this one (forward.lua); replies how many
    changed something."""
    return (_scripts.load("forward"), ks.graph_keys, [ks.base, ks.done_channel, *entries])


def beat(
    wk: WorkerKeys,
    worker_id: str,
    ttl_ms: int,
    keep_ms: int,
    started_ms: int,
    fields: dict[str, str | int],
) -> ScriptCall:
    """Register or refresh a worker's record (beat.lua); replies (server now, started)."""
    args: list[Any] = [wk.record_prefix, worker_id, ttl_ms, keep_ms, started_ms]
    for item in fields.items():
        args.extend(item)
    return (_scripts.load("beat"), [wk.index, wk.record(worker_id)], args)


def cron_put(ck: CronKeys, sid: str, definition: bytes, spec: str, first: int | str) -> ScriptCall:
    """Create or update a schedule (cron_put.lua); `first`: its first tick, '' when not
    computed yet. Replies { outcome, server now }."""
    return (_scripts.load("cron_put"), ck.all, [sid, definition, spec, first])


def cron_take(ck: CronKeys, lease_ms: int, most: int) -> ScriptCall:
    """Lease the due schedules (cron_take.lua); replies { now, soonest, {id, tick, def}... }."""
    return (_scripts.load("cron_take"), ck.all, [lease_ms, most])


def cron_advance(ck: CronKeys, sid: str, tick: int, fired: int, following: int | str) -> ScriptCall:
    """Advance a schedule past the tick it fired, fenced on that tick (cron_advance.lua);
    `following` '' when it has no later tick. Replies 1 advanced, 0 stale."""
    return (_scripts.load("cron_advance"), ck.all, [sid, tick, fired, following])


def cron_remove(ck: CronKeys, sid: str) -> ScriptCall:
    """Remove a schedule (cron_remove.lua); replies 1 removed, 0 there was none."""
    return (_scripts.load("cron_remove"), ck.all, [sid])


def cron_skip(ck: CronKeys, sid: str, tick: int, following: int | str) -> ScriptCall:
    """Move a paused schedule past its due tick without firing it, fenced on that tick:
    cron_advance.lua with the tick noted in the `skipped` hash instead of `fired`;
    `following` '' when it has no later tick. Replies 1 skipped, 0 stale."""
    keys = [ck.defs, ck.due, ck.firing, ck.skipped]
    return (_scripts.load("cron_advance"), keys, [sid, tick, tick, following])


def cron_overlap(ck: CronKeys, sid: str, tick: int, following: int | str) -> ScriptCall:
    """Move a unique schedule past a tick it skipped because its previous run is still
    going, fenced on that tick: cron_advance.lua with the tick noted in the `overlapped`
    hash instead of `fired`. Replies 1 skipped, 0 stale."""
    keys = [ck.defs, ck.due, ck.firing, ck.overlapped]
    return (_scripts.load("cron_advance"), keys, [sid, tick, tick, following])


def cron_skipped(ks: Keyspace, task_id: str, name: str, data: str) -> ScriptCall:
    """Record a `cron.skipped` event in a queue's stream (cron_skipped.lua): the tick that
    would have enqueued `task_id` was skipped; `data` JSON says why. Replies 1."""
    return (_scripts.load("cron_skipped"), [ks.events], [task_id, name, data])


def delete(ks: Keyspace, task_id: str) -> ScriptCall:
    """Delete an ended task's record and index entries (delete.lua); replies its final
    status, or 0 when it had no record."""
    return (_scripts.load("delete"), [*ks.done, ks.dead], [ks.base, task_id])


def wf_index(ks: Keyspace, wf_id: str, shape: str, names: str = "") -> ScriptCall:
    """List a workflow in its queue's index with its shape (wf_index.lua); replies 1
    listed, 0 no such record."""
    return (_scripts.load("wf_index"), [ks.workflows], [ks.base, wf_id, shape, names])


def reconcile(ks: Keyspace, lease_ms: int, most: int, phase: str, cursor: str) -> ScriptCall:
    """One step of a queue's reconcile pass (reconcile.lua); replies { next phase, next
    cursor, kind, id, kind, id ... } of what it repaired."""
    return (_scripts.load("reconcile"), ks.reconcile_keys, [ks.base, lease_ms, most, phase, cursor])


def generation(ks: Keyspace, worker_id: str, last: int, keep_ms: int, cursor: str) -> ScriptCall:
    """Advance this worker's generation mark of a queue (generation.lua); replies { went
    back 1/0, n written, next prune cursor, n found }."""
    return (
        _scripts.load("generation"),
        [ks.generation, ks.events],
        [worker_id, last, keep_ms, cursor],
    )


def shards(ks: Keyspace, action: str, count: int = 0) -> ScriptCall:
    """Create, change or read a queue's shard count in its base meta hash (shards.lua);
    replies [count, old count (0: none), done (1 changed, 0 nothing to do, -1 refused)]."""
    return (_scripts.load("shards"), [ks.meta], [action, count])
