"""A task's output stream: `ctx.stream(chunk)` writes it, `handle.stream()` reads it.

The stream is the Redis stream `<prefix>:{<queue>}:out:<id>`, in the task's slot. The worker
batches: a chunk given while the previous write is still on its way waits for it, and goes
with every other chunk given meanwhile in one entry (stream.lua), so a task that streams
faster than a round trip writes several chunks per entry. A chunk's position is
`"<entry id>:<index in the entry>"`, the text a reader resumes after (and the SSE event id of
`segue.web`). Besides chunk entries the stream holds restart markers (a later run of the task
starts writing) and one end marker, written by every script that ends the task
(lib/finalize.lua); entries are numbered, so a reader notices entries trimmed under it. A
task that never streamed has no stream unless its record went at its end (ttl=0): its
reader learns the end from the record's status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import msgspec

from segue._codec import encode
from segue._errors import LeaseLost, StreamTruncated, TaskNotFound
from segue._faults import faultpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from segue._broker import Broker
    from segue._keys import Keyspace
    from segue._queries import Queries

T = TypeVar("T")


class RunControl(Protocol):
    """The run a writer belongs to (_run_control.RunControl, which sits above this module)."""

    broker: Broker
    ks: Keyspace
    gen: str

    async def call(self, what: str, send: Callable[[], Awaitable[T]]) -> T: ...


log = logging.getLogger("segue.worker")
_BATCH_MOST = 1000  # chunks in one entry; past this many waiting, ctx.stream waits too
_BATCH_BYTES = 1 << 20  # and bytes: an entry holds at most about this much (one chunk more)
_BLOCK_MS = 1000  # a reader's wait for news before it looks at the task's record
_READ_COUNT = 200


class StreamRestarted:
    """Yielded by `handle.stream()` where a new run of the task starts writing (a retry, a
    re-run after a lost worker, a durable function resumed): what follows comes from that
    run, which may say again what the earlier one said. `tries` is the new run's try;
    `position` where it is; `resumed` is True when the run found the task's durable state
    (`ctx.state` values or a step journal) left by an earlier run: it goes on from there,
    so what came before stays (a chunk written after the earlier run's last checkpoint may
    come again); False: it starts over."""

    __slots__ = ("position", "resumed", "tries")

    def __init__(self, tries: int, position: str, resumed: bool = False) -> None:
        self.tries = tries
        self.position = position
        self.resumed = resumed

    def __repr__(self) -> str:
        return (
            f"StreamRestarted(tries={self.tries}, position={self.position!r}, "
            f"resumed={self.resumed})"
        )


class OutputWriter:
    """The worker's side of one run's output stream: batches chunks, one write in flight."""

    __slots__ = (
        "_batch",
        "_error",
        "_flusher",
        "_limit",
        "_pending",
        "_pending_bytes",
        "_resumed",
        "_run",
        "_task_id",
        "_tries",
    )

    def __init__(self, run: RunControl, task_id: str, tries: int, limit: int) -> None:
        self._run = run
        self._task_id = task_id
        self._tries = tries
        self._limit = limit
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._resumed = False
        self._flusher: asyncio.Task[None] | None = None
        self._batch = 0
        self._error: BaseException | None = None

    async def put(self, chunk: Any, *, resumed: bool) -> None:
        """Queue a chunk. `resumed`: this run found durable state of an earlier run, so its
        restart marker (before its first write) says it goes on instead of starting over."""
        if self._error is not None:
            raise self._error
        self._resumed = resumed
        data = encode(chunk, what="a stream chunk", limit=self._limit)
        self._pending.append(data)
        self._pending_bytes += len(data)
        flusher = self._flusher
        if flusher is None or flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
            # let the write go out now: the chunks that come while it travels form the next
            await asyncio.sleep(0)
        elif len(self._pending) >= _BATCH_MOST or self._pending_bytes >= _BATCH_BYTES:
            await asyncio.shield(flusher)  # the producer is far ahead: wait for the server
            if self._error is not None:
                raise self._error

    async def close(self) -> None:
        """Write what is left (before the run's outcome, so the end marker comes last)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._pending and self._error is None:
            await self._flush()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()

    async def _flush(self) -> None:
        run = self._run
        while self._pending and self._error is None:
            take, size = 0, 0
            while take < min(len(self._pending), _BATCH_MOST) and (
                take == 0 or size + len(self._pending[take]) <= _BATCH_BYTES
            ):
                size += len(self._pending[take])
                take += 1
            chunks = self._pending[:take]
            del self._pending[:take]
            self._pending_bytes -= size
            self._batch += 1
            body = b"[" + b",".join(chunks) + b"]"
            batch = self._batch
            try:
                ok = await run.call(
                    f"task {self._task_id}: ctx.stream",
                    functools.partial(
                        run.broker.write_stream,
                        run.ks,
                        self._task_id,
                        run.gen,
                        self._tries,
                        body,
                        batch,
                        self._resumed,
                    ),
                )
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # ServerUnreachable too: the next put raises it
                self._error = exc
                return
            faultpoint("after_stream_write")
            if not ok:
                self._error = LeaseLost(
                    f"task {self._task_id}: this run no longer holds the task (its lease was "
                    "taken over, or it was cancelled), so its stream write was refused"
                )


def _position(entry_id: str, index: int) -> str:
    return f"{entry_id}:{index}"


def parse_position(position: str) -> tuple[str, int]:
    entry_id, sep, index = position.rpartition(":")
    if not sep or not entry_id or not index.isdigit():
        raise ValueError(
            f"stream position {position!r} is not '<entry id>:<index>' (as handle.stream "
            "gives in TaskStream.position)"
        )
    return entry_id, int(index)


class TaskStream:
    """`async for chunk in handle.stream(after=...)`: the chunks a task streams, in order,
    then the end. `position` is the position of the last item yielded (None before the
    first): pass it as `after=` to resume exactly after it. A `StreamRestarted` item marks
    where a new run begins. Raises StreamTruncated when entries after the position asked
    for were trimmed, TaskNotFound when there is neither a stream nor a task."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Queries]],
        queue: str,
        task_id: str,
        after: str | None,
    ) -> None:
        if after is not None:
            parse_position(after)  # a malformed position fails here, not at the first read
        self._connect = connect
        self._queue = queue
        self._reads: Queries = cast("Queries", None)
        self._ks: Keyspace = cast("Keyspace", None)
        self._task_id = task_id
        self._after = after
        self.position: str | None = after
        self.ended = False
        self._last_id = "0-0"
        self._next_n: int | None = 1
        self._items: list[tuple[Any, str]] = []
        self._ready: deque[tuple[Any, str]] = deque()
        self._started = False
        self._seen_any = False
        self._waited = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while not self._ready:
            if self.ended:
                raise StopAsyncIteration
            self._ready.extend(await self.read(_BLOCK_MS))
        item, self.position = self._ready.popleft()
        return item

    async def read(self, block_ms: int) -> list[tuple[Any, str]]:
        """The next items (with their positions) that came within `block_ms`; sets `ended`
        at the end marker. The SSE route reads with it between its other checks."""
        if not self._started:
            self._reads = await self._connect()
            self._ks = self._reads.keyspace(self._queue)
            self._started = True
            await self._start()
            if self._items or self.ended:
                return self._take()
        # the first read does not wait: a task that ended without streaming has no stream,
        # and its record says at once that it ended
        rows = await self._reads.read_output(
            self._ks,
            self._task_id,
            self._last_id,
            _READ_COUNT,
            block_ms if self._waited else None,
        )
        self._waited = True
        if rows:
            self._seen_any = True
            self._take_rows(rows, skip_through=-1)
        else:
            await self._check_ended()
        return self._take()

    async def exists(self) -> bool:
        """Whether the stream holds anything now (for a task whose record went at its end,
        ttl=0, the stream is all that is left of it)."""
        reads = await self._connect()
        rows = await reads.read_output(reads.keyspace(self._queue), self._task_id, "0-0", 1, None)
        return bool(rows)

    def _take(self) -> list[tuple[Any, str]]:
        items, self._items = self._items, []
        return items

    async def _start(self) -> None:
        if self._after is None:
            return
        entry_id, index = parse_position(self._after)
        row = await self._reads.output_entry(self._ks, self._task_id, entry_id)
        if row is None:
            raise StreamTruncated(
                f"task {self._task_id}: its output stream no longer holds position "
                f"{self._after} (trimmed past max_stream_entries, or gone after its linger)",
                self._after,
            )
        self._seen_any = True
        self._next_n = None  # the entry read below sets it
        self._take_rows([row], skip_through=index)

    def _take_rows(self, rows: list[tuple[bytes, dict[bytes, bytes]]], skip_through: int) -> None:
        for raw_id, fields in rows:
            entry_id = raw_id.decode()
            self._last_id = entry_id
            n = int(fields.get(b"n", b"0"))
            if self._next_n is not None and n != self._next_n:
                raise StreamTruncated(
                    f"task {self._task_id}: entries of its output stream were trimmed "
                    f"before this reader read them (max_stream_entries): expected entry "
                    f"{self._next_n}, found {n}",
                    self.position,
                )
            self._next_n = n + 1
            if b"end" in fields:
                self.ended = True
                return
            restarted = fields.get(b"r")
            if restarted is not None:
                if skip_through < 0:
                    item = StreamRestarted(
                        int(restarted), _position(entry_id, 0), fields.get(b"rp") == b"1"
                    )
                    self._items.append((item, item.position))
                continue
            chunks = msgspec.json.decode(fields.get(b"c", b"[]"))
            for i, chunk in enumerate(chunks):
                if i > skip_through:
                    self._items.append((chunk, _position(entry_id, i)))
            skip_through = -1

    async def _check_ended(self) -> None:
        """No news: a task that ended without streaming has no stream (and one ended by a
        worker of a release before streams has no end marker); neither must hold a reader."""
        status = await self._reads.task_status(self._ks, self._task_id)
        if status is not None and status.decode() not in _FINAL:
            return
        # the end marker may have come since the wait ended: read once more before giving up
        rows = await self._reads.read_output(self._ks, self._task_id, self._last_id, 10, None)
        if rows:
            self._seen_any = True
            self._take_rows(rows, skip_through=-1)
            return
        if status is None and not self._seen_any:
            raise TaskNotFound(
                f"no task {self._task_id} and no output stream of it: it never existed, or "
                "it ended and its stream outlived its linger"
            )
        self.ended = True


_FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
