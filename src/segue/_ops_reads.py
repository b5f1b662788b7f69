"""Server reads for the operator's views (dashboard, metrics, CLI): readiness and latency of
a queue, the counters and history the scripts keep, and the workflow index.

Every read is bounded: a queue of a million tasks costs what a queue of a thousand does.
All keys read here share the queue's hash tag, so each pipeline goes to one node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segue._wire import NAME_MARK, history_lines, plain_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from segue._keys import CronKeys, Keyspace
    from segue._queries import Queries

# How many of the next tasks to run per priority (and due scheduled ones) are read to tell
# ready from held: few when no task name of the queue has a limit (only the oldest-ready
# age needs reading then), more when some may be held.
SCAN_FREE = 20
SCAN_LIMITED = 500
# the ring the scripts keep (see _lib.lua count_stat)
HIST_STEP_MS = 300_000
HIST_SLOTS = 300
STAT_FIELDS = ("started", "retried", "succeeded", "failed", "cancelled", "expired")
_WAITING_TO_RUN = {b"queued", b"suspended"}
_DUE_STATES = {b"scheduled", b"retrying", b"suspended"}


@dataclass(frozen=True, slots=True)
class Readiness:
    """How many tasks of a queue a worker could start now, and how long the oldest of them
    has waited since it became QUEUED (seconds; 0.0 when none is ready).

    Ready: queued (or due to be: its delay or retry time passed; a signal wait past its
    deadline), not held back by its name's or its limit key's rate or concurrency limit or
    a RateLimited hold, in a queue that is not paused. `exact` is False when
    the queue holds more tasks than were read and some names are limited: the tasks not
    read (those that run last) are then counted as ready."""

    ready: int
    oldest_age: float
    exact: bool = True


def _since(long: bytes | None, compact: bytes | None, created: bytes | None) -> int | None:
    """When a task entered its present status: the time of the last line of its history."""
    try:
        created_ms = int(created) if created is not None else None
    except ValueError:
        created_ms = None
    lines, _ = history_lines(long, compact, created_ms)
    return lines[-1][1] if lines else None


async def server_ms(reads: Queries) -> int:
    async with reads.errors():
        secs, micros = await reads.client.time()
    return int(secs) * 1000 + int(micros) // 1000


async def readiness(reads: Queries, ks: Keyspace) -> Readiness:
    rate_key, conc_key = ks.limits
    # TIME names no key: a cluster pipeline refuses it, so it goes first, on its own
    now = await server_ms(reads)
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        pipe.hget(ks.meta, "paused")
        for key in ks.pending:
            pipe.llen(key)
        pipe.hgetall(rate_key)
        pipe.hgetall(conc_key)
        pipe.hget(ks.meta, "kq")
        pipe.zrangebyscore(ks.base + "holds", now + 1, "+inf")
        # a signal wait past its deadline needs a worker to end it (claim.lua): ready
        pipe.zrangebyscore(ks.signal_due, "-inf", now, start=0, num=1, withscores=True)
        pipe.zcount(ks.signal_due, "-inf", now)
        first = await pipe.execute()
    if first[0] == b"1":
        return Readiness(0, 0.0)
    lengths: list[int] = first[1:4]
    rates: dict[bytes, bytes] = first[4]
    most: dict[bytes, bytes] = first[5]
    keyed = int(first[6] or 0) > 0
    scan = SCAN_LIMITED if rates or most or keyed else SCAN_FREE
    # keyed tasks wait in lanes, not in the lists: (head id, tasks) of each lane whose key
    # lets it start now
    lanes, lanes_read_all = await _ready_lanes(reads, ks, now, scan) if keyed else ([], True)
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        for key in ks.pending:
            pipe.lrange(key, -scan, -1)  # the next to run are at the tail
        pipe.zrangebyscore(ks.scheduled, "-inf", now, start=0, num=scan, withscores=True)
        pipe.zcount(ks.scheduled, "-inf", now)
        names = list(rates.keys() | most.keys())
        for name in names:
            pipe.scard(ks.base + "running:" + name.decode())
            pipe.hmget(ks.base + "bucket:" + name.decode(), "tk", "ts")
        second = await pipe.execute()
    tails: list[list[bytes]] = second[0:3]
    due: list[tuple[bytes, float]] = second[3]
    due_count: int = second[4]
    # names a task raised RateLimited for, until their hold ends
    held_names = set(first[7])
    for i, name in enumerate(names):
        running, (tokens, at) = second[5 + 2 * i], second[6 + 2 * i]
        if name in most and running >= int(most[name]):
            held_names.add(name)
        elif name in rates:
            per_ms, burst = (float(x) for x in rates[name].split())
            have = float(tokens) if tokens is not None else burst
            last = int(at) if at is not None else now
            if min(burst + 0.5, have + (now - last) * per_ms) < 1:
                held_names.add(name)
    ids = [i for tail in tails for i in tail] + [i for i, _ in due] + [i for i, _ in lanes]
    timed_out: int = first[9]
    if not ids and not timed_out:
        return Readiness(0, 0.0)
    rows: list[list[bytes | None]] = []
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(ks.task(task_id.decode()), "n", "s", "h", "hc", "ce")
        if ids:
            rows = await pipe.execute()
    listed = sum(len(t) for t in tails)
    heads = listed + len(due)
    due_at = {i: int(score) for i, score in due}
    not_ready = 0
    # the longest past its deadline has waited to be ended since then
    oldest = int(first[8][0][1]) if timed_out else now
    for n, (task_id, (task_name, status, *history)) in enumerate(zip(ids, rows, strict=True)):
        in_list = n < listed or n >= heads
        waiting = status in (_WAITING_TO_RUN if in_list else _DUE_STATES)
        if task_name is not None and NAME_MARK.encode() in task_name:
            task_name = plain_name(task_name.decode()).encode()
        if not waiting or task_name in held_names:
            # a lane's head held back holds its whole lane
            not_ready += lanes[n - heads][1] if n >= heads else 1
            continue
        queued_at = _since(*history) if in_list else due_at[task_id]
        if queued_at is not None:
            oldest = min(oldest, queued_at)
    total = sum(lengths) + due_count + sum(count for _, count in lanes) + timed_out
    read_all = listed == sum(lengths) and len(due) == due_count and lanes_read_all
    return Readiness(
        max(0, total - not_ready), max(0.0, (now - oldest) / 1000), read_all or not held_names
    )


async def _ready_lanes(
    reads: Queries, ks: Keyspace, now: int, scan: int
) -> tuple[list[tuple[bytes, int]], bool]:
    """The lanes of keyed tasks that could start now, as (head task id, tasks in the lane),
    and whether every such lane was read (at most `scan` per level and structure). A lane
    whose key is held back is not ready, as claim.lua's kadmit decides: its key's
    concurrency is full, a RateLimited hold is not over, or its rate has no token."""
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        for level in (1, 2, 3):
            pipe.lrange(ks.key("ring", str(level)), 0, scan - 1)
            # a lane waiting for a token or a hold that is due takes its turn at the next claim
            pipe.zrangebyscore(ks.key("kdue", str(level)), "-inf", now, start=0, num=scan)
        pipe.hgetall(ks.keyed_limits)
        found = await pipe.execute()
    specs: dict[bytes, bytes] = found[6]
    lanes = [
        (level, lane) for level in (1, 2, 3) for lane in found[2 * level - 2] + found[2 * level - 1]
    ]
    if not lanes:
        return [], True
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        for level, lane in lanes:
            key = ks.key("lane", str(level), lane.decode())
            pipe.llen(key)
            pipe.lindex(key, -1)  # the head: lanes pop from the right, as the lists do
            pipe.scard(ks.lane_key("krun", lane.decode()))
            pipe.hmget(ks.lane_key("kbucket", lane.decode()), "tk", "ts", "hold")
        got = await pipe.execute()
    ready = []
    for i, (_, lane) in enumerate(lanes):
        count, head, running, (tokens, at, hold) = got[4 * i : 4 * i + 4]
        if not count or head is None:
            continue
        spec = specs.get(lane.partition(b"|")[0], b"").split()
        most, per_ms, burst = (float(x) for x in (spec + [b"0", b"0", b"1"][len(spec) :])[:3])
        if most > 0 and running >= most:
            continue
        if hold is not None and int(hold) > now:
            continue
        if per_ms > 0:
            have = float(tokens) if tokens is not None else burst
            last = int(at) if at is not None else now
            if min(burst + 0.5, have + (now - last) * per_ms) < 1:
                continue
        ready.append((head, int(count)))
    return ready, all(len(group) < scan for group in found[:6])


async def stats(reads: Queries, ks: Keyspace) -> dict[str, int]:
    """The queue's counters kept by the scripts: `started` (runs), `retried` (runs that
    ended in a retry), and tasks ended `succeeded`, `failed`, `cancelled`, `expired`."""
    async with reads.errors():
        raw: dict[bytes, bytes] = await reads.client.hgetall(ks.stats)
    got = {k.decode(): int(v) for k, v in raw.items()}
    return {f: got.get(f, 0) for f in STAT_FIELDS}


@dataclass(frozen=True, slots=True)
class Step:
    """Tasks ended in one step of the history (start in server ms)."""

    start_ms: int
    succeeded: int
    failed: int


async def history(reads: Queries, ks: Keyspace, now_ms: int, steps: int) -> list[Step]:
    """The last `steps` steps of HIST_STEP_MS (the last one is the current, partial step),
    oldest first; steps nothing ended in count zero."""
    async with reads.errors():
        raw: dict[bytes, bytes] = await reads.client.hgetall(ks.hist)
    current = now_ms // HIST_STEP_MS
    wanted = range(current - min(steps, HIST_SLOTS) + 1, current + 1)
    out: list[Step] = []
    for step in wanted:
        slot = str(step % HIST_SLOTS).encode()
        stored = raw.get(slot)
        if stored is not None and int(stored) == step:
            ok, bad = int(raw.get(slot + b":s", 0)), int(raw.get(slot + b":f", 0))
        else:
            ok = bad = 0
        out.append(Step(step * HIST_STEP_MS, ok, bad))
    return out


async def workflow_ids(reads: Queries, ks: Keyspace, offset: int, limit: int) -> list[str]:
    """Ids of the workflows whose record lives on this queue, newest first, paged."""
    async with reads.errors():
        ids: list[bytes] = await reads.client.zrevrange(ks.workflows, offset, offset + limit - 1)
    return [i.decode() for i in ids]


async def workflow_total(reads: Queries, ks: Keyspace) -> int:
    async with reads.errors():
        return int(await reads.client.zcard(ks.workflows))


async def workflow_records(
    reads: Queries, ks: Keyspace, ids: list[str]
) -> list[dict[bytes, bytes]]:
    """The records of these workflows ({} for one that expired), in one round trip."""
    if not ids:
        return []
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        for wf_id in ids:
            pipe.hgetall(ks.workflow(wf_id))
        rows: list[dict[bytes, bytes]] = await pipe.execute()
    return rows


async def ended_ids_newest(
    reads: Queries, ks: Keyspace, status: str, offset: int, limit: int
) -> list[str]:
    """A page of the ids of tasks that ended in `status`, newest first: the index of ended
    tasks is scored by record expiry, so among tasks of one ttl the latest end is last."""
    async with reads.errors():
        raw: list[bytes] = await reads.client.zrevrange(
            ks.key("done", status), offset, offset + limit - 1
        )
    return [i.decode() for i in raw]


async def paused_schedules(
    reads: Queries, ck: CronKeys
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The paused schedules (id -> since, ms) and the last tick each one skipped."""
    async with reads.errors():
        pipe = reads.client.pipeline(transaction=False)
        pipe.hgetall(ck.paused)
        pipe.hgetall(ck.skipped)
        paused, skipped = await pipe.execute()
    return paused, skipped


async def overlapped_schedules(reads: Queries, ck: CronKeys) -> dict[bytes, bytes]:
    """The last tick each unique schedule skipped because its previous run still went on."""
    async with reads.errors():
        overlapped: dict[bytes, bytes] = await reads.client.hgetall(ck.overlapped)
    return overlapped


async def schedules_paused(
    reads: Queries, ck: CronKeys, ids: Sequence[bytes | str]
) -> list[bytes | None]:
    """For each schedule id, when it was paused (ms), or None when it is not."""
    async with reads.errors():
        held: list[bytes | None] = await reads.client.hmget(ck.paused, list(ids))
    return held


def as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
