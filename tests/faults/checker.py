"""The checker of the fault suite (RELIABILITY §7): after a run drains, compare what the
producers were told (ledger.History), what the tasks did (ledger.Ledger) and what segue's
own records say, and measure what the faults cost.

`await check(...)` returns one `Verdict`; tests assert on its fields and put
`verdict.figures()` in their report. Definitions:

- acked / ambiguous: enqueues that returned, or whose connection broke (the task may exist);
- lost: acked tasks that apply an effect and whose effect never happened;
- phantom: tasks that ran although no enqueue of them was acked or ambiguous;
- dup_exec: Σ max(0, executions − 1) over tasks; max_exec: the most executions of one task;
- dup_effect: tasks whose effect was applied twice (impossible by construction: SET NX),
  or whose segue record (history) or event stream shows SUCCEEDED more than once;
- bound: a task's executions may exceed one only by the runs segue itself interrupted and
  recorded (lease losses, shutdown requeues, retries, suspends, pauses);
- orphans: runs in flight on a SIGKILLed worker; recovery: from the kill to the orphan's
  next start (server time of the claim), as p50/p99;
- leaks (when `retention` is given): after the task records' lifetime, per-task keys left
  under the queue, keys without a TTL outside the documented structural set, ended-task
  index entries not yet pruned, anything still queued or running, cascade markers whose walk
  to sub-tasks is not over, `used_memory` delta. Records kept longer than the run's
  retention by design (`outlive`: sub-tasks, kept at least an hour) are not counted, but
  must have a TTL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from segue._broker import make_async_client
from segue._keys import Keyspace, queue_of
from segue._wire import history_lines
from tests._workers import Signal
from tests.faults.ledger import Effects, History

# Kinds of key `<prefix>:{<queue>}:<kind>...` that live as long as their queue (no TTL).
STRUCTURAL = frozenset(
    {"q", "sched", "leases", "wake", "meta", "paused", "waiting", "events", "dead", "done"}
    | {"limits"}
    # the outcome counters and the bounded throughput ring of the dashboard's metrics
    | {"stats", "hist"}
    # keyed flow control: weights a user set, a turn cut short, RateLimited holds of task
    # names (trimmed by the next claim); the lanes and their turn structures empty themselves
    | {"kweight", "kcredit", "holds"}
    # the deadlines of waits for a signal (removed when empty)
    | {"sigdue"}
)
# Kinds that belong to one task (or workflow, or unique key) and must go with it.
# `out`: a task's output stream, kept its linger (or the record's ttl) after its end.
# `blob`: an offloaded value's chunks (issue 21): they live and go with their record.
PER_TASK = frozenset({"task", "state", "next", "wf", "uniq", "sig", "sgi", "out", "blob"})
# A run that segue stopped and recorded, after which the task may run again.
_RERUN_REASONS = {"worker shutdown", "resumed", "retry", "paused itself", "due"}
FINAL = {"succeeded", "failed", "cancelled", "expired"}


@dataclasses.dataclass(frozen=True)
class Transition:
    """One entry of a task record's history: `status|at_ms|reason`."""

    status: str
    at_ms: int
    reason: str


def parse_history(text: str) -> list[Transition]:
    out = []
    for line in text.splitlines():
        status, _, rest = line.partition("|")
        at, _, reason = rest.partition("|")
        if status:
            out.append(Transition(status, int(at), reason))
    return out


def read_history(
    long: bytes | None, compact: bytes | None, created: bytes | None
) -> list[Transition]:
    """A record's history from its fields: the long form, the compact one (this release's
    records), or both (merged by time), as segue reads them (segue._wire.history_lines)."""
    lines, _ = history_lines(long, compact, int(created) if created else None)
    return [Transition(status, at, reason) for status, at, reason in lines]


@dataclasses.dataclass(frozen=True)
class Record:
    """What segue's record of one task says, read right after the drain."""

    status: str | None  # None: no record (never created, or expired)
    history: list[Transition]

    def count(self, status: str, reason: str | None = None) -> int:
        return sum(
            1 for t in self.history if t.status == status and (reason is None or t.reason == reason)
        )

    @property
    def lease_losses(self) -> int:
        return self.count("queued", "lease expired") + self.count("failed", "worker_lost")

    @property
    def interruptions(self) -> int:
        """Runs segue stopped and recorded other than by lease loss."""
        return sum(
            1
            for a, b in zip(self.history, self.history[1:], strict=False)
            if a.status == "running"
            and b.status not in FINAL
            and (b.reason in _RERUN_REASONS or b.status in ("retrying", "suspended", "paused"))
        )


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A run in flight on a worker when it was SIGKILLed."""

    task_id: str
    pid: int
    killed_at: float  # time.time()
    restarted_ms: float | None  # ms from the kill to the task's next start; None: none


@dataclasses.dataclass(frozen=True)
class Leaks:
    """What is left under the queue once the task records' lifetime is over."""

    keys: int  # every key of the queue
    per_task: list[str]  # per-task keys that should be gone (dead-lettered records excepted)
    no_ttl: list[str]  # keys without a TTL outside the structural set
    index_entries: int  # ended-task index entries not pruned (dead-lettered excepted)
    queued: int  # tasks in the queued lists, the schedule, paused or waiting
    running: int  # leases still held
    cascading: int  # cascade markers whose walk down to sub-tasks is not over
    used_memory_delta: int | None  # bytes, against the `memory_before` given to check()
    waited_s: float  # how long the checker waited for the records to expire
    retention: bool  # whether the records' lifetime was over (else per-task keys are live)

    @property
    def clean(self) -> bool:
        return (
            not self.per_task
            and not self.no_ttl
            and not (self.index_entries or self.queued or self.running or self.cascading)
        )


def _percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Everything the checker found; `figures()` is the report's part of it."""

    acked: int
    ambiguous: int
    refused: int
    done: int
    lost: list[str]
    phantom: list[str]
    not_succeeded: dict[str, str | None]  # acked effectful tasks not SUCCEEDED: their status
    stuck: list[str]  # tasks neither ended nor dead-lettered after the drain
    executions: int
    dup_exec: int
    max_exec: int
    effect_repeats: int  # runs that reached their effect after another run had applied it
    dup_effect: list[str]
    lease_losses: int
    bound_violations: list[str]
    orphans: list[Orphan]
    events_complete: bool  # the event stream still held every event of the run
    events_succeeded: int  # tasks with a task.succeeded event
    leaks: Leaks | None

    @property
    def in_flight_killed(self) -> int:
        return len(self.orphans)

    def recovery_ms(self, p: float) -> float | None:
        values = [o.restarted_ms for o in self.orphans if o.restarted_ms is not None]
        return _percentile(values, p)

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "acked": self.acked,
            "ambiguous": self.ambiguous,
            "refused": self.refused,
            "done": self.done,
            "lost": len(self.lost),
            "phantom": len(self.phantom),
            "not_succeeded": len(self.not_succeeded),
            "stuck": len(self.stuck),
            "executions": self.executions,
            "dup_exec": self.dup_exec,
            "max_exec": self.max_exec,
            "effect_repeats": self.effect_repeats,
            "dup_effect": len(self.dup_effect),
            "lease_losses": self.lease_losses,
            "dup_bound_ok": not self.bound_violations,
            "in_flight_killed": self.in_flight_killed,
            "recovery_ms_p50": self.recovery_ms(50),
            "recovery_ms_p99": self.recovery_ms(99),
            "recovery_ms_max": self.recovery_ms(100),
            "events_complete": self.events_complete,
            "events_succeeded": self.events_succeeded,
        }
        if self.leaks is not None and self.leaks.retention:
            figures.update(
                leaked_keys=len(self.leaks.per_task) + len(self.leaks.no_ttl),
                leaked_per_task_keys=len(self.leaks.per_task),
                leftover_index_entries=self.leaks.index_entries,
                retention_wait_s=round(self.leaks.waited_s, 3),
            )
        if self.leaks is not None:
            figures.update(
                leaked_no_ttl_keys=len(self.leaks.no_ttl),
                left_queued=self.leaks.queued,
                left_running=self.leaks.running,
                left_cascading=self.leaks.cascading,
                used_memory_delta=self.leaks.used_memory_delta,
            )
        return figures


async def used_memory(admin_url: str) -> int:
    """`used_memory` of the server (summed over the nodes of a cluster)."""
    client: Any = make_async_client(admin_url, cluster="+cluster://" in admin_url)
    try:
        info = await client.info("memory")
    finally:
        await client.aclose()
    if "used_memory" in info:
        return int(info["used_memory"])
    return sum(int(v["used_memory"]) for v in info.values() if isinstance(v, dict))


async def _records(client: Any, prefix: str, ids: Iterable[str]) -> dict[str, Record]:
    ordered = sorted(ids)
    records: dict[str, Record] = {}
    for i in range(0, len(ordered), 500):
        chunk = ordered[i : i + 500]
        pipe = client.pipeline(transaction=False)
        for task_id in chunk:
            # each record where its id says: a sharded queue's tasks live in its shards
            pipe.hmget(Keyspace(prefix, queue_of(task_id)).task(task_id), "s", "h", "hc", "ce")
        for task_id, (status, *history) in zip(chunk, await pipe.execute(), strict=True):
            records[task_id] = Record(status.decode() if status else None, read_history(*history))
    return records


async def _succeeded_events(client: Any, ks: Keyspace) -> tuple[Counter[str], bool]:
    """task id → task.succeeded events; and whether the stream still starts with the run
    (a stream trimmed past the run's first events cannot prove the absence of a second)."""
    counts: Counter[str] = Counter()
    last = "-"
    first_seen = None
    while True:
        entries = await client.xrange(ks.events, min=last, max="+", count=5000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for entry_id, fields in entries:
            if first_seen is None:
                first_seen = entry_id
            if fields.get(b"e") == b"task.succeeded":
                counts[fields[b"id"].decode()] += 1
        last = entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0]
    info = await client.xinfo_stream(ks.events) if first_seen is not None else None
    # the run's tasks were all enqueued into this queue of its own: its first event is an
    # enqueue-time one only if nothing was trimmed; with no deletions the stream is whole
    complete = info is None or int(info.get("entries-added", info["length"])) == info["length"]
    return counts, complete


def _orphans(records: dict[str, Record], kills: Sequence[Signal]) -> list[Orphan]:
    orphans = []
    for kill in kills:
        marker = f"-{kill.pid}-"
        kill_ms = kill.at * 1000
        for task_id, record in records.items():
            h = record.history
            for n, t in enumerate(h):
                if t.status != "running" or marker not in t.reason or t.at_ms > kill_ms + 1:
                    continue
                after = h[n + 1] if n + 1 < len(h) else None
                lost_lease = after is not None and (
                    (after.status == "queued" and after.reason == "lease expired")
                    or (after.status == "failed" and after.reason == "worker_lost")
                )
                if not lost_lease:
                    continue
                assert after is not None
                rerun = next((x for x in h[n + 2 :] if x.status == "running"), None)
                orphans.append(
                    Orphan(
                        task_id,
                        kill.pid,
                        kill.at,
                        None if rerun is None else rerun.at_ms - kill_ms,
                    )
                )
    return orphans


async def _leaks(
    client: Any,
    ks: Keyspace,
    *,
    structural: frozenset[str],
    memory_before: int | None,
    admin_url: str,
    waited: float,
    retention: bool,
    outlive: frozenset[str],
) -> Leaks:
    dead = {d.decode() for d in await client.lrange(ks.dead, 0, -1)}
    # a dead letter keeps its record, and the signal ids it accepted with it
    keep = {ks.task(i) for i in dead} | {ks.signal_ids(i) for i in dead}
    kept_longer = {ks.task(i) for i in outlive}
    keys = [k.decode() async for k in client.scan_iter(match=ks.base + "*", count=1000)]
    per_task, no_ttl = [], []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    ttls = await pipe.execute() if keys else []
    for key, ttl in zip(keys, ttls, strict=True):
        kind = key[len(ks.base) :].split(":", 1)[0]
        if key in kept_longer:
            if ttl == -1:
                no_ttl.append(key)
        elif kind in PER_TASK and key not in keep:
            per_task.append(key)
        elif ttl == -1 and kind not in structural and key not in keep:
            no_ttl.append(key)
    index = 0
    for done_key in ks.done:
        members = {m.decode() for m in await client.zrange(done_key, 0, -1)}
        index += len(members - dead - outlive)
    queued = sum([await client.llen(k) for k in ks.pending])
    queued += await client.zcard(ks.scheduled)
    queued += await client.zcard(ks.paused)
    queued += await client.zcard(ks.waiting)
    running = int(await client.zcard(ks.leases))
    # a marker left after the run drained is a cascade that never finished (sub-tasks a
    # parent's cancel or pause did not reach): unfinished work, not a structure
    cascading = int(await client.hlen(ks.base + "cascade"))
    delta = None if memory_before is None else await used_memory(admin_url) - memory_before
    return Leaks(
        len(keys), per_task, no_ttl, index, queued, running, cascading, delta, waited, retention
    )


def _together(found: list[Leaks]) -> Leaks:
    """The leaks of a queue's shards as one (the first: the queue's own keys, with the
    memory delta)."""
    first = found[0]
    return Leaks(
        sum(f.keys for f in found),
        [k for f in found for k in f.per_task],
        [k for f in found for k in f.no_ttl],
        sum(f.index_entries for f in found),
        sum(f.queued for f in found),
        sum(f.running for f in found),
        sum(f.cascading for f in found),
        first.used_memory_delta,
        first.waited_s,
        first.retention,
    )


async def check(
    *,
    history: History,
    effects: Effects,
    admin_url: str,
    queue: str,
    prefix: str = "segue",
    kills: Sequence[Signal] = (),
    leaks: bool = False,
    retention: float = 0.0,
    memory_before: int | None = None,
    structural: Iterable[str] = (),
    outlive: Iterable[str] = (),
    shards: Sequence[str] = (),
) -> Verdict:
    """Check one drained run. `kills`: the fleet's signals (its SIGKILLs make orphans).
    With `leaks`, also read what is left under the queue; with a `retention` (the task
    records' lifetime, seconds) wait up to that long, plus a margin for expiry and pruning,
    for it to be clean first. `structural`: kinds of queue key that other features add and
    that have no TTL. `outlive`: ids of tasks whose records are kept longer than
    `retention` by design (sub-tasks: at least an hour), left out of the per-task keys and
    index entries found, but each must have a TTL. `shards`: the queue's shards, checked
    with it (a sharded queue, docs/sharding.md)."""
    spaces = [Keyspace(prefix, q) for q in (queue, *shards)]
    client: Any = make_async_client(admin_url, cluster="+cluster://" in admin_url)
    try:
        acked = history.ids("ok")
        maybe = history.ids("ambiguous")
        effectful = history.ids("ok", effect=True)
        ran = set(effects.executions)
        records = await _records(client, prefix, acked | maybe | ran)
        succeeded_events: Counter[str] = Counter()
        events_complete = True
        for ks in spaces:
            counted, complete = await _succeeded_events(client, ks)
            succeeded_events.update(counted)
            events_complete = events_complete and complete
        lost = sorted(effectful - set(effects.effects))
        phantom = sorted((ran | set(effects.effects)) - acked - maybe)
        not_succeeded = {
            i: records[i].status for i in sorted(effectful) if records[i].status != "succeeded"
        }
        stuck = sorted(
            i
            for i in acked | (maybe & ran)
            if records[i].status is not None and records[i].status not in FINAL
        )
        counts = {i: len(runs) for i, runs in effects.executions.items()}
        dup_effect = sorted(
            {i for i, r in records.items() if r.count("succeeded") > 1}
            | {i for i, n in succeeded_events.items() if n > 1}
        )
        bound_violations = sorted(
            i
            for i, n in counts.items()
            # an expired record tells nothing about its runs
            if i in records
            and records[i].status is not None
            and n > 1 + records[i].lease_losses + records[i].interruptions
        )
        verdict_leaks = None
        if leaks:
            started = time.monotonic()
            deadline = started + retention + 10.0 if retention > 0 else started
            while True:
                per_shard = [
                    await _leaks(
                        client,
                        ks,
                        structural=STRUCTURAL | frozenset(structural),
                        memory_before=memory_before if ks is spaces[0] else None,
                        admin_url=admin_url,
                        waited=time.monotonic() - started,
                        retention=retention > 0,
                        outlive=frozenset(outlive),
                    )
                    for ks in spaces
                ]
                verdict_leaks = _together(per_shard)
                if verdict_leaks.clean or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
        return Verdict(
            acked=len(acked),
            ambiguous=len(maybe),
            refused=len(history.ids("fail")),
            done=len(effects.effects),
            lost=lost,
            phantom=phantom,
            not_succeeded=not_succeeded,
            stuck=stuck,
            executions=sum(counts.values()),
            dup_exec=sum(max(0, n - 1) for n in counts.values()),
            max_exec=max(counts.values(), default=0),
            effect_repeats=sum(
                1 for runs in effects.executions.values() for r in runs if r.repeated
            ),
            dup_effect=dup_effect,
            lease_losses=sum(r.lease_losses for r in records.values()),
            bound_violations=bound_violations,
            orphans=_orphans(records, [k for k in kills if k.signal == "SIGKILL"]),
            events_complete=events_complete,
            events_succeeded=len(succeeded_events),
            leaks=verdict_leaks,
        )
    finally:
        await client.aclose()
