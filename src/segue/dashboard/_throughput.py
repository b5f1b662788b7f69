"""The overview's throughput chart: tasks ended per minute over the last minutes, counted
from the queues' event streams, or per 5 minutes over the last 24 hours, read from the
history ring the scripts keep on the server (see _ops_reads.history); drawn as inline SVG
on the server (no script, no chart library).

Each queue's stream holds its lifecycle events with ids `<server ms>-<n>`; the chart reads
them newest first with XREVRANGE from the end back to the window's start, at most
`SCAN_PER_QUEUE` entries per queue and `MAX_QUEUES` queues, and counts `task.succeeded`
and `task.failed` by minute. A read cut by its cap says so (its oldest minutes count
less than happened).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from segue import _ops_reads

if TYPE_CHECKING:
    from segue._client import Client

MINUTES = 15
# the long view: 5-minute steps over a day
DAY_STEPS = 24 * 3600 * 1000 // _ops_reads.HIST_STEP_MS
SCAN_PER_QUEUE = 5000
MAX_QUEUES = 20
KINDS = {b"task.succeeded": "succeeded", b"task.failed": "failed"}

# the drawing, in SVG user units
BAR = 36
GAP = 8
HEIGHT = 120
TOP = 16
LEFT = 34
BOTTOM = 20


@dataclass
class Minute:
    """One bar: tasks ended in the step (a minute, or 5 minutes in the long view)."""

    start_ms: int
    succeeded: int = 0
    failed: int = 0

    @property
    def label(self) -> str:
        return datetime.fromtimestamp(self.start_ms / 1000, UTC).strftime("%H:%M")

    @property
    def ended(self) -> int:
        return self.succeeded + self.failed


@dataclass
class Throughput:
    minutes: list[Minute]
    queues: list[str]  # the queues counted
    queues_left_out: int = 0  # queues beyond MAX_QUEUES, not counted
    capped: list[str] = field(default_factory=list)  # queues whose read hit its cap
    step_minutes: int = 1

    @property
    def succeeded(self) -> int:
        return sum(m.succeeded for m in self.minutes)

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.minutes)


async def read(client: Client, queues: list[str]) -> Throughput:
    """Count the tasks that ended in each of the last MINUTES minutes (the last one is the
    current, partial minute), by the server's clock."""
    queries = await client.reads()
    counted, left_out = queues[:MAX_QUEUES], max(0, len(queues) - MAX_QUEUES)
    now_ms = await queries.server_time_ms()
    first = now_ms - now_ms % 60_000 - (MINUTES - 1) * 60_000
    minutes = [Minute(first + i * 60_000) for i in range(MINUTES)]

    async def scan(queue: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return await queries.events_since(queries.keyspace(queue), first, SCAN_PER_QUEUE)

    reads = await asyncio.gather(*(scan(q) for q in counted))
    capped: list[str] = []
    for queue, entries in zip(counted, reads, strict=True):
        if len(entries) >= SCAN_PER_QUEUE:
            capped.append(queue)
        for entry_id, fields in entries:
            kind = KINDS.get(fields.get(b"e", b""))
            if kind is None:
                continue
            ms = int(entry_id.split(b"-", 1)[0])
            i = (ms - first) // 60_000
            if 0 <= i < MINUTES:
                minute = minutes[i]
                if kind == "succeeded":
                    minute.succeeded += 1
                else:
                    minute.failed += 1
    return Throughput(minutes, counted, left_out, capped)


async def read_day(client: Client, queues: list[str]) -> Throughput:
    """Tasks ended per 5 minutes over the last 24 hours (the last step is the current one),
    from the counters the scripts keep on the server: nothing is scanned."""
    queries = await client.reads()
    counted, left_out = queues[:MAX_QUEUES], max(0, len(queues) - MAX_QUEUES)
    now_ms = await _ops_reads.server_ms(queries)
    reads = await asyncio.gather(
        *(_ops_reads.history(queries, queries.keyspace(q), now_ms, DAY_STEPS) for q in counted)
    )
    current = now_ms // _ops_reads.HIST_STEP_MS
    first = (current - DAY_STEPS + 1) * _ops_reads.HIST_STEP_MS
    steps = [Minute(first + i * _ops_reads.HIST_STEP_MS) for i in range(DAY_STEPS)]
    for history in reads:
        for i, step in enumerate(history):
            steps[i].succeeded += step.succeeded
            steps[i].failed += step.failed
    return Throughput(steps, counted, left_out, step_minutes=_ops_reads.HIST_STEP_MS // 60_000)


def _nice_top(peak: int) -> int:
    """The scale's top: the peak rounded up to 1, 2 or 5 times a power of ten."""
    if peak <= 1:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if peak <= step * m:
                return step * m
        step *= 10


def svg(data: Throughput) -> str:
    """The chart as an SVG element: one stacked bar per step (succeeded below, failed
    above), each bar a `<g>` carrying its numbers as data attributes and a tooltip."""
    day = data.step_minutes > 1
    # a day of 5-minute steps: thin bars, a label every 3 hours, no count over each bar
    bar, gap, tick_every = (4, 1, 36) if day else (BAR, GAP, 3)
    top = _nice_top(max((m.ended for m in data.minutes), default=0))
    width = LEFT + len(data.minutes) * (bar + gap)
    total_h = TOP + HEIGHT + BOTTOM
    base = TOP + HEIGHT
    per = f"{data.step_minutes} minutes" if day else "minute"
    span = "24 hours" if day else f"{MINUTES} minutes"
    label = f"Tasks ended per {per}: {data.succeeded} succeeded, {data.failed} failed"
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {total_h}"'
        f' width="{width}" height="{total_h}" role="img" aria-label="{label}"'
        f' data-succeeded="{data.succeeded}" data-failed="{data.failed}"'
        f' data-scale="{top}">',
        f"<title>{label} (last {span})</title>",
        f'<line class="axis" x1="{LEFT - 4}" y1="{base}" x2="{width}" y2="{base}"/>',
        f'<line class="grid" x1="{LEFT - 4}" y1="{TOP}" x2="{width}" y2="{TOP}"/>',
        f'<text class="scale" x="{LEFT - 8}" y="{TOP + 4}" text-anchor="end">{top}</text>',
        f'<text class="scale" x="{LEFT - 8}" y="{base + 4}" text-anchor="end">0</text>',
    ]
    for i, m in enumerate(data.minutes):
        x = LEFT + i * (bar + gap)
        ok_h = round(HEIGHT * m.succeeded / top, 1)
        bad_h = round(HEIGHT * m.failed / top, 1)
        current = i == len(data.minutes) - 1
        out.append(
            f'<g class="minute{" current" if current else ""}" data-minute="{m.label}"'
            f' data-succeeded="{m.succeeded}" data-failed="{m.failed}">'
            f"<title>{m.label}{' (now)' if current else ''}: "
            f"{m.succeeded} succeeded, {m.failed} failed</title>"
        )
        # a transparent box over the whole column makes an empty minute's tooltip reachable
        out.append(f'<rect class="hit" x="{x}" y="{TOP}" width="{bar}" height="{HEIGHT}"/>')
        if m.succeeded:
            y = base - ok_h
            out.append(f'<rect class="ok" x="{x}" y="{y:g}" width="{bar}" height="{ok_h:g}"/>')
        if m.failed:
            y = base - ok_h - bad_h
            out.append(f'<rect class="bad" x="{x}" y="{y:g}" width="{bar}" height="{bad_h:g}"/>')
        if m.ended and not day:
            y = base - ok_h - bad_h - 3
            out.append(
                f'<text class="count" x="{x + bar / 2:g}" y="{y:g}" text-anchor="middle">'
                f"{m.ended}</text>"
            )
        if i % tick_every == 0 or current:
            anchor = "end" if current and day else "middle"
            out.append(
                f'<text class="tick" x="{x + bar / 2:g}" y="{base + 14}" text-anchor="{anchor}">'
                f"{'now' if current else m.label}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
