"""What the dashboard's lists show beyond one record: ended tasks newest first, runs of
progress events grouped, workflow rows with status and progress, schedule rows with the
outcome of their last run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from segue import _ops_reads
from segue._info import parse_info
from segue._keys import queue_of
from segue._state import TaskStatus
from segue._wire import workflow_steps

if TYPE_CHECKING:
    from segue._app import App
    from segue._client import Client
    from segue._cron import ScheduleInfo
    from segue._events import Event
    from segue._state import TaskInfo


async def ended_newest(
    client: Client, status: TaskStatus, queue: str, offset: int, limit: int
) -> list[TaskInfo]:
    """A page of the tasks that ended in this status, newest first (a sharded queue's:
    the newest of each shard, merged by when they ended)."""
    broker = await client.broker()
    reads = broker.reads
    names = (await broker.shards.read(queue)).serving(queue)
    start, count = (offset, limit) if len(names) == 1 else (0, offset + limit)
    infos: list[TaskInfo] = []
    for name in names:
        ks = reads.keyspace(name)
        for task_id in await _ops_reads.ended_ids_newest(reads, ks, status.value, start, count):
            rec = await reads.task_record(ks, task_id)
            if rec:
                infos.append(parse_info(task_id, rec, client.tasks))
    if len(names) == 1:
        return infos
    never = datetime.min.replace(tzinfo=UTC)
    infos.sort(key=lambda i: i.ended_at or never, reverse=True)
    return infos[offset : offset + limit]


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of a task page's events: an event, or a run of progress events."""

    kind: str
    at: datetime
    data: Any
    count: int = 1
    first_at: datetime | None = None  # for a run of progress events: when it began


def group_progress(events: list[Event]) -> list[EventRow]:
    """Events in order, with each run of consecutive `task.progress` events as one row
    (its count, first time, and the last progress): one call per item must not push
    everything else off the page."""
    rows: list[EventRow] = []
    for e in events:
        last = rows[-1] if rows else None
        if e.kind == "task.progress" and last is not None and last.kind == "task.progress":
            rows[-1] = EventRow(e.kind, e.at, e.data, last.count + 1, last.first_at or last.at)
        else:
            rows.append(EventRow(e.kind, e.at, e.data))
    return rows


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    id: str
    status: TaskStatus
    created_at: datetime | None
    ended_at: datetime | None
    steps: int
    done: int  # ended steps (or parts on other queues) the record counted
    units: int  # what `done` counts up to

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.units if self.units else 0.0


async def workflow_rows(app: App, queue: str, ids: list[str]) -> list[WorkflowRow]:
    """Rows of the workflows listed on a queue: status and progress; those whose record
    expired are left out."""
    from segue._state import from_ms

    reads = await app._client.reads()
    # each record where its id says (a sharded queue's in its shard), one read per shard
    by_shard: dict[str, list[str]] = {}
    for wf_id in ids:
        by_shard.setdefault(queue_of(wf_id), []).append(wf_id)
    found: dict[str, Any] = {}
    for shard, some in by_shard.items():
        got = await _ops_reads.workflow_records(reads, reads.keyspace(shard), some)
        found.update(zip(some, got, strict=True))
    records = [found[wf_id] for wf_id in ids]
    rows: list[WorkflowRow] = []
    for wf_id, rec in zip(ids, records, strict=True):
        if not rec:
            continue
        steps = workflow_steps(wf_id, rec)
        others = rec.get(b"queues", b"").decode().split()
        own = sum(1 for s in steps if queue_of(s) == queue_of(wf_id))
        units = own + len(others)
        left = _ops_reads.as_int(rec.get(b"left"), units)
        status = await (await app.workflow_handle(wf_id)).status()
        rows.append(
            WorkflowRow(
                id=wf_id,
                status=status,
                created_at=from_ms(_ops_reads.as_int(rec.get(b"ce"), 0) or None),
                ended_at=from_ms(_ops_reads.as_int(rec.get(b"et"), 0) or None),
                steps=len(steps),
                done=max(0, units - left),
                units=units,
            )
        )
    return rows


def shape_of(rec: dict[bytes, bytes]) -> Any:
    """The workflow's stored shape (see _workflow._shape), or None."""
    raw = rec.get(b"shape")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    info: ScheduleInfo
    last_status: TaskStatus | None  # of the task its last fired tick enqueued, if on record


async def schedule_rows(app: App) -> list[ScheduleRow]:
    rows: list[ScheduleRow] = []
    reads = await app._client.reads()
    for info in await app.schedules():
        status = None
        if info.last_task_id is not None:
            ks = reads.keyspace(queue_of(info.last_task_id))
            raw = await reads.task_status(ks, info.last_task_id)
            status = TaskStatus(raw.decode()) if raw else None
        rows.append(ScheduleRow(info, status))
    return rows


def duration(seconds: float | None) -> str:
    """A span of time for a table cell: 850 ms, 12.3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def runtime(info: TaskInfo) -> str:
    """How long an ended task's last run took (start of its last run to its end)."""
    if info.started_at is None or info.ended_at is None:
        return ""
    return duration((info.ended_at - info.started_at).total_seconds())
