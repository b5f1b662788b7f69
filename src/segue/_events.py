"""Events: what happened to tasks, as the queues' capped streams hold it.

Lifecycle events (`task.started`, `task.succeeded`, `task.failed`, `task.retried`,
`task.suspended`, `task.paused`, `task.resumed`, `task.cancelled`, `task.expired`) are
written by the scripts in the same atomic step as the transition; `task.progress` and a
task's own events by `ctx.progress()` and `ctx.emit()`. Each queue keeps about its last
10,000 events; `app.events()` follows one or more queues live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segue._codec import decode_plain
from segue._state import at_ms
from segue._wire import EventField as E

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Sequence
    from datetime import datetime

    from segue._client import Client


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a queue's event stream."""

    queue: str
    id: str  # the stream entry id: `<ms>-<n>`, increasing within a queue
    kind: str  # task.started, task.progress, ... or the name given to ctx.emit()
    task_id: str
    task_name: str
    at: datetime
    data: Any = None  # ctx.emit()'s data; for task.progress {"done": n, "total": m | None}


def parse_event(queue: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
    eid = entry_id.decode()
    kind = fields.get(E.KIND.b, b"").decode()
    data: Any = None
    if kind == "task.progress":
        total = fields.get(E.TOTAL.b, b"")
        data = {
            "done": float(fields.get(E.DONE.b, b"0")),
            "total": float(total) if total else None,
            "message": fields.get(E.MESSAGE.b, b"").decode() or None,
        }
    elif E.DATA.b in fields:
        data = decode_plain(fields[E.DATA.b])
    return Event(
        queue=queue,
        id=eid,
        kind=kind,
        task_id=fields.get(E.TASK_ID.b, b"").decode(),
        task_name=fields.get(E.TASK_NAME.b, b"").decode(),
        at=at_ms(int(eid.split("-", 1)[0])),
        data=data,
    )


async def follow(
    client: Client,
    queues: Sequence[str],
    since: str,
    block: float,
    task_id: str | None = None,
    kinds: Collection[str] | None = None,
) -> AsyncIterator[Event]:
    reads = await client.reads()
    keyspaces = [reads.keyspace(q) for q in queues]
    last = dict.fromkeys(queues, since)
    while True:
        entries = await reads.read_events(keyspaces, last, int(block * 1000))
        for queue, entry_id, fields in entries:
            last[queue] = entry_id.decode()
            event = parse_event(queue, entry_id, fields)
            if (task_id is None or event.task_id == task_id) and (
                kinds is None or event.kind in kinds
            ):
                yield event
