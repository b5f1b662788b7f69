"""The read side: what the CLI, the dashboard, /metrics and handles read from the server.

Plain reads (no script): records, statuses, index pages, counts, event streams, worker and
schedule records. They change nothing, so a reader can send them again at will.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segue._blobs import is_ref
from segue._keys import dashboard_sessions_key, queues_key
from segue._offload import fetch
from segue._state import KeyCount
from segue._transport import while_migrating
from segue._wire import text as _text

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence
    from contextlib import AbstractAsyncContextManager

    from segue._keys import CronKeys, Keyspace, WorkerKeys
    from segue._pubsub import EndedMark
    from segue._settings import Settings
    from segue._transport import Transport


class Queries:
    """The reads of one App's server, over its transport (no script, no write).

    The CLI, the dashboard, /metrics and handles hold this, not the Broker: what they
    can do to the server is read it."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @property
    def settings(self) -> Settings:
        return self._t.settings

    @property
    def where(self) -> str:
        """The server's URL without credentials, for messages."""
        return self._t.where

    def keyspace(self, queue: str) -> Keyspace:
        return self._t.keyspace(queue)

    async def ping(self) -> None:
        await self._t.ping()

    @property
    def client(self) -> Any:
        """The transport's client, for the read modules that build their own pipelines
        (_ops_reads.py); reads only."""
        return self._t.client

    def errors(self) -> AbstractAsyncContextManager[None]:
        return self._t.errors()

    async def watch_ended(
        self, ks: Keyspace, task_id: str, mark: EndedMark | None = None
    ) -> tuple[asyncio.Future[bytes | None], bool]:
        """A future set when the server announces that this task ended (best effort): to
        the result it carries, or None; and whether the task surely did not end unseen."""
        return await self._t.watch_ended(ks, task_id, mark)

    def unwatch(self, task_id: str, fut: asyncio.Future[bytes | None]) -> None:
        self._t.unwatch(task_id, fut)

    async def queues(self) -> list[str]:
        async with self._t.errors():
            names = await self._t.client.smembers(queues_key(self._t.settings.prefix))
        return sorted(n.decode() for n in names)

    async def task_record(self, ks: Keyspace, task_id: str) -> dict[bytes, bytes]:
        async with self._t.errors():
            if self._t.fast is not None:
                flat = await self._t.fast.execute("HGETALL", ks.task(task_id))
                return dict(zip(flat[::2], flat[1::2], strict=True))
            rec: dict[bytes, bytes] = await self._t.client.hgetall(ks.task(task_id))
        return rec

    async def task_status(self, ks: Keyspace, task_id: str) -> bytes | None:
        async with self._t.errors():
            if self._t.fast is not None:
                raw: bytes | None = await self._t.fast.execute("HGET", ks.task(task_id), "s")
                return raw
            st: bytes | None = await self._t.client.hget(ks.task(task_id), "s")
        return st

    async def list_ids(self, ks: Keyspace, status: str, offset: int, limit: int) -> list[str]:
        """Ids of one queue's tasks in a status, newest index entries last, paged."""
        end = offset + limit - 1
        ids: list[bytes] = []
        async with self._t.errors():
            if status == "queued":
                ids = await self._pending_page(ks, offset, limit, with_scheduled=False)
            elif status == "running":
                ids = await self._t.client.zrange(ks.leases, offset, end)
            elif status == "suspended":
                # suspended tasks wait in the queued lists, or scheduled when delayed;
                # the caller keeps those whose record says suspended
                ids = await self._pending_page(ks, offset, limit, with_scheduled=True)
            elif status == "paused":
                ids = await self._t.client.zrange(ks.paused, offset, end)
            elif status == "waiting":
                ids = await self._t.client.zrange(ks.waiting, offset, end)
            elif status in ("scheduled", "retrying"):
                ids = await self._t.client.zrange(ks.scheduled, offset, end)
            elif status in ("succeeded", "failed", "cancelled", "expired"):
                ids = await self._t.client.zrange(ks.key("done", status), offset, end)
            else:
                ids = []
        return [i.decode() for i in ids]

    async def _pending_page(
        self, ks: Keyspace, offset: int, limit: int, *, with_scheduled: bool
    ) -> list[bytes]:
        """A page of the queued lists read as one sequence (highest priority first, next to
        run first), then the scheduled set: only the page is read, however long the lists
        (a dashboard pages through a million queued tasks without loading them)."""
        pipe = self._t.client.pipeline(transaction=False)
        for key in ks.pending:
            pipe.llen(key)
        lengths: list[int] = await pipe.execute()
        ids: list[bytes] = []
        skip, want = offset, limit
        for key, length in zip(ks.pending, lengths, strict=True):
            if want <= 0:
                break
            if skip >= length:
                skip -= length
                continue
            # LPUSH puts the newest at the head: the i-th to run is at index -(i + 1)
            chunk = await self._t.client.lrange(key, -(skip + want), -(skip + 1))
            ids.extend(reversed(chunk))
            want -= len(chunk)
            skip = 0
        if with_scheduled and want > 0:
            ids.extend(await self._t.client.zrange(ks.scheduled, skip, skip + want - 1))
        return ids

    async def recent_events(
        self, ks: Keyspace, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The last `count` entries of a queue's event stream, newest first (bounded)."""
        async with self._t.errors():
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._t.client.xrevrange(
                ks.events, count=count
            )
        return entries

    async def dead_count(self, ks: Keyspace) -> int:
        async with self._t.errors():
            return int(await self._t.client.llen(ks.dead))

    async def has_retrying(self, ks: Keyspace) -> bool:
        """Whether a task of this queue waits for its next try (bounded look: 1,000 ids)."""
        async with self._t.errors():
            ids = await self._t.client.zrange(ks.scheduled, 0, 999)
            if not ids:
                return False
            pipe = self._t.client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(ks.task(task_id.decode()), "s")
            states = await pipe.execute()
        return b"retrying" in states

    async def count(self, ks: Keyspace) -> dict[str, int]:
        async with self._t.errors():
            pipe = self._t.client.pipeline(transaction=False)
            for key in ks.pending:
                pipe.llen(key)
            pipe.zcard(ks.scheduled)
            pipe.zcard(ks.leases)
            for key in ks.done:
                pipe.zcard(key)
            pipe.zcard(ks.paused)
            pipe.zcard(ks.waiting)
            pipe.hget(ks.meta, "kq")  # queued in the lanes of limit keys (claim.lua)
            r = await pipe.execute()
        return {
            "queued": sum(r[0:3]) + max(0, int(r[11] or 0)),
            "scheduled": r[3],
            "running": r[4],
            "succeeded": r[5],
            "failed": r[6],
            "cancelled": r[7],
            "expired": r[8],
            "paused": r[9],
            "waiting": r[10],
        }

    async def outbox(self, ks: Keyspace, limit: int) -> list[bytes]:
        """The oldest entries of a queue's outbox (see _forward.py)."""
        async with self._t.errors():
            entries: list[bytes] = await while_migrating(
                lambda: self._t.client.lrange(ks.outbox, 0, limit - 1)
            )
        return entries

    async def workflow_record(self, ks: Keyspace, wf_id: str) -> dict[bytes, bytes]:
        async with self._t.errors():
            rec: dict[bytes, bytes] = await self._t.client.hgetall(ks.workflow(wf_id))
        return rec

    async def task_fields(
        self, ks: Keyspace, task_ids: Sequence[str], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """The same few fields of many task records, in one round trip."""
        async with self._t.errors():
            # one queue's keys share a slot: a cluster pipeline goes to one node too
            pipe = self._t.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hmget(ks.task(task_id), *fields)
            rows: list[list[bytes | None]] = await pipe.execute()
        return rows

    async def read_events(
        self, keyspaces: Sequence[Keyspace], last: dict[str, str], block_ms: int
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """New entries of the queues' event streams after `last` ids (queue → id):
        (queue, entry id, fields), oldest first per queue."""
        found: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        async with self._t.errors():
            blocking = self._t.blocking_client()
            # one slot per queue: on a cluster, read them one at a time
            groups = [[ks] for ks in keyspaces] if self._t.cluster else [list(keyspaces)]
            wait = max(1, block_ms // max(1, len(groups)))
            for group in groups:
                streams = {ks.events: last[ks.queue] for ks in group}
                reply = await blocking.xread(streams, count=500, block=wait)
                by_key = {ks.events: ks.queue for ks in group}
                for key, entries in reply or []:
                    queue = by_key[key.decode() if isinstance(key, bytes) else key]
                    for entry_id, fields in entries:
                        found.append((queue, entry_id, fields))
        return found

    async def read_output(
        self, ks: Keyspace, task_id: str, after: str, count: int, block_ms: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries of a task's output stream after entry id `after`, oldest first; with
        `block_ms`, waiting up to that long for one (on the blocking connection)."""
        key = ks.output(task_id)
        async with self._t.errors():
            if block_ms is None:
                rows: list[tuple[bytes, dict[bytes, bytes]]] = await self._t.client.xrange(
                    key, min="(" + after, max="+", count=count
                )
                return rows
            reply = await self._t.blocking_client().xread({key: after}, count=count, block=block_ms)
        for _key, entries in reply or []:
            found: list[tuple[bytes, dict[bytes, bytes]]] = entries
            return found
        return []

    async def output_entry(
        self, ks: Keyspace, task_id: str, entry_id: str
    ) -> tuple[bytes, dict[bytes, bytes]] | None:
        """One entry of a task's output stream, or None when it is not there (trimmed)."""
        async with self._t.errors():
            rows = await self._t.client.xrange(ks.output(task_id), entry_id, entry_id)
        return rows[0] if rows else None

    async def dead_ids(self, ks: Keyspace, offset: int, limit: int) -> list[str]:
        async with self._t.errors():
            ids = await self._t.client.lrange(ks.dead, offset, offset + limit - 1)
        return [i.decode() for i in ids]

    async def offloaded(self, data: bytes) -> bytes:
        """The value an offloaded reference names (KeyError when it is gone); any other
        stored value as it is."""
        if not is_ref(data):
            return data
        return await fetch(self._t, data)

    async def read_state(
        self, ks: Keyspace, task_id: str, limit: int | None = None
    ) -> dict[bytes, bytes]:
        """A task's state values; with `limit`, at most that many (a reader that shows the
        state, like the dashboard, needs no unbounded read of a state with many keys)."""
        key = ks.state(task_id)
        async with self._t.errors():
            if limit is not None and await self._t.client.hlen(key) > limit:
                _, part = await self._t.client.hscan(key, 0, count=limit)
                return dict(list(part.items())[:limit])
            rec: dict[bytes, bytes] = await self._t.client.hgetall(key)
        return rec

    async def queue_paused(self, ks: Keyspace) -> bool:
        async with self._t.errors():
            return bool(await self._t.client.hget(ks.meta, "paused") == b"1")

    async def key_counts(self, ks: Keyspace, top: int, most: int = 1000) -> list[KeyCount]:
        """The busiest limit keys of a queue: waiting and running per lane, the `top` with
        the most, among at most `most` lanes of each structure (ring, due, parked): a
        bounded read, whatever the number of keys."""
        async with self._t.errors():
            pipe = self._t.client.pipeline(transaction=False)
            for level in (1, 2, 3):
                pipe.lrange(ks.key("ring", str(level)), 0, most - 1)
                pipe.zrange(ks.key("kdue", str(level)), 0, most - 1)
            pipe.zrange(ks.key("kparked"), 0, most - 1)
            found = await pipe.execute()
            lanes = sorted({x.decode(errors="replace") for group in found for x in group})
            if not lanes:
                return []
            pipe = self._t.client.pipeline(transaction=False)
            for lane in lanes:
                for level in (1, 2, 3):
                    pipe.llen(ks.key("lane", str(level), lane))
                pipe.scard(ks.lane_key("krun", lane))
            counts = await pipe.execute()
        rows = []
        for i, lane in enumerate(lanes):
            waiting, running = sum(counts[4 * i : 4 * i + 3]), counts[4 * i + 3]
            limit, _, key = lane.partition("|")
            rows.append(KeyCount(limit, key, int(waiting), int(running)))
        rows.sort(key=lambda r: (-(r.waiting + r.running), r.limit, r.key))
        return rows[:top]

    async def key_weights(self, ks: Keyspace) -> dict[str, int]:
        async with self._t.errors():
            raw = await self._t.client.hgetall(ks.weights)
        return {k.decode(errors="replace"): int(v) for k, v in raw.items() if v.isdigit()}

    async def worker_records(
        self, wk: WorkerKeys, worker_id: str | None = None
    ) -> tuple[int, list[tuple[str, float | None, dict[bytes, bytes]]]]:
        """Server time (ms), and (id, last beat in ms or None, record) for one worker or all
        in the index; a record that expired reads as {}."""
        async with self._t.errors():
            secs, micros = await self._t.client.time()
            entries: list[tuple[str, float | None]]
            if worker_id is None:
                scored = await self._t.client.zrange(wk.index, 0, -1, withscores=True)
                entries = [(_text(m), float(score)) for m, score in scored]
            else:
                entries = [(worker_id, await self._t.client.zscore(wk.index, worker_id))]
            records: list[dict[bytes, bytes]] = []
            if entries:
                # one {workers} slot: a cluster pipeline goes to one node too
                pipe = self._t.client.pipeline(transaction=False)
                for wid, _ in entries:
                    pipe.hgetall(wk.record(wid))
                records = await pipe.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        rows = [(wid, score, rec) for (wid, score), rec in zip(entries, records, strict=True)]
        return now_ms, rows

    async def schedule_rows(
        self, ck: CronKeys
    ) -> tuple[dict[bytes, bytes], list[tuple[bytes, float]], dict[bytes, bytes]]:
        """Definitions, next ticks and last fired ticks of every schedule (one slot)."""
        async with self._t.errors():
            pipe = self._t.client.pipeline(transaction=False)
            pipe.hgetall(ck.defs)
            pipe.zrange(ck.due, 0, -1, withscores=True)
            pipe.hgetall(ck.fired)
            defs, due, fired = await pipe.execute()
        return defs, due, fired

    async def session_generation(self) -> int:
        """The dashboard's session generation (see Broker.advance_session_generation)."""
        async with self._t.errors():
            value = await self._t.client.get(dashboard_sessions_key(self._t.settings.prefix))
        return int(value or 0)

    async def server_time_ms(self) -> int:
        """The server's clock, in ms (what leases, due times and event ids are read by)."""
        async with self._t.errors():
            secs, micros = await self._t.client.time()
        return int(secs) * 1000 + int(micros) // 1000

    async def events_since(
        self, ks: Keyspace, first_ms: int, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """A queue's events from server time `first_ms` on, newest first, at most `count`."""
        async with self._t.errors():
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._t.client.xrevrange(
                ks.events, max="+", min=str(first_ms), count=count
            )
        return entries
