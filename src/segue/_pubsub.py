"""Sharded pub/sub: one connection per subscriber, handlers per channel.

The stored records stay the truth everywhere; pub/sub only makes waiting for them fast
(result() waiters, control requests reaching workers), or carries what is never stored
(the answers to queries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from segue import _cancel
from segue._wire import text as _text

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from segue._keys import Keyspace

log = logging.getLogger("segue.broker")


class Connections(Protocol):
    """What pub/sub uses of the transport (_transport.Transport): its client, whether it
    is a cluster's, and its error translation."""

    client: Any
    cluster: bool

    def errors(self) -> AbstractAsyncContextManager[None]: ...


Handler = Callable[[bytes], None]

# How long one read waits on one node of a cluster whose subscriptions span several nodes.
# redis-py reads a cluster's nodes in turn, each for the whole timeout: with channels on
# several nodes (a worker of queues, or of a sharded queue, spread over the primaries), a
# message from a node not being read waits for the reads of the others. Short reads keep
# that wait near this figure times the nodes (a pause or cancel must reach its run within
# 100 ms), for ~50 reads a second; on one node a read waits for the message itself.
CLUSTER_READ_SECONDS = 0.02


class Subscriber:
    """Sharded pub/sub on one connection: handlers per channel, run on the event loop."""

    def __init__(self, broker: Connections) -> None:
        self._broker = broker
        self._pubsub: Any = broker.client.pubsub(ignore_subscribe_messages=False)
        self._handlers: dict[str, Handler] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        # counts the connections lost: what was published meanwhile never arrives
        self.generation = 0
        self._on_lost: list[Callable[[], None]] = []

    def confirmed(self, channel: str) -> bool:
        """Whether the server confirmed `channel` on the current connection."""
        event = self._confirmed.get(channel)
        return event is not None and event.is_set()

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the connection is lost (messages may have been missed)."""
        self._on_lost.append(callback)

    async def subscribe(self, channel: str, handler: Handler, *, listen: bool = True) -> None:
        """Subscribe and wait (briefly) for the server to confirm it. With `listen=False`
        the caller runs `listen()` itself, after `read_confirmations()`."""
        if channel in self._handlers:
            return
        self._handlers[channel] = handler
        event = self._confirmed[channel] = asyncio.Event()
        async with self._broker.errors():
            await self._pubsub.ssubscribe(channel)
        if not listen:
            return
        if self._task is None:
            self._task = asyncio.create_task(self.listen(), name="segue-subscriber")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await event.wait()

    def _get(self, timeout: float) -> Any:
        if self._broker.cluster:
            if len(getattr(self._pubsub, "node_pubsub_mapping", (1, 2))) > 1:
                timeout = min(timeout, CLUSTER_READ_SECONDS)
            return self._pubsub.get_sharded_message(timeout=timeout)
        return self._pubsub.get_message(timeout=timeout)

    async def read_confirmations(self, timeout: float = 2.0) -> None:
        """Read until the server confirmed every subscription (or `timeout` passed), for a
        caller that starts `listen()` only after; messages read meanwhile are handled."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not all(e.is_set() for e in self._confirmed.values()):
                    try:
                        msg = await self._get(timeout)
                    except Exception:
                        return  # listen() reconnects and reports it
                    if msg is not None:
                        self._dispatch(msg)

    async def listen(self) -> None:
        """Hand each message to its channel's handler, until cancelled."""
        while True:
            try:
                msg = await self._get(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
                self._lost()
                await asyncio.sleep(0.5)
                continue
            if msg is not None:
                self._dispatch(msg)

    def _lost(self) -> None:
        # the subscriptions come back with the connection, each confirmed anew
        self.generation += 1
        for event in self._confirmed.values():
            event.clear()
        for callback in self._on_lost:
            callback()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = _text(msg["type"])
        channel = _text(msg["channel"])
        if kind == "ssubscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                if event.is_set():
                    # confirmed again: the client reconnected by itself and subscribed
                    # anew, and what was published in between never arrived
                    self._lost()
                event.set()
        elif kind == "smessage":
            handler = self._handlers.get(channel)
            if handler is not None:
                data = msg["data"]
                handler(data if isinstance(data, bytes) else str(data).encode())

    async def close(self) -> None:
        if self._task is not None:
            await _cancel.cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()


# ended messages kept for the result() calls that come after them (EndedWaiters.mark)
_RECENT = 1024


class EndedMark(NamedTuple):
    """Where the ended messages stood when an enqueue was sent (EndedWaiters.mark)."""

    generation: int
    received: int


class EndedWaiters:
    """Futures of result() calls, woken by the outcome channel of their queue: set to the
    result of a success that the message carries, else to None (read the record).

    The stored status stays the truth (result() re-reads it when a message carries no
    result, and every second); this only makes it fast. A task enqueued by this process
    while its queue's channel was confirmed cannot end unseen: its handle carries a mark
    taken before the enqueue was sent, and as long as the connection held and fewer than
    _RECENT messages arrived since, its end is among the messages kept, or still to come.
    Its result() then reads nothing before the message (EndedWaiters.unseen).
    """

    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber
        self._waiters: dict[str, set[asyncio.Future[bytes | None]]] = {}
        self._recent: dict[str, bytes | None] = {}
        self._received = 0
        subscriber.on_lost(self._lost)

    def mark(self, ks: Keyspace) -> EndedMark | None:
        """Taken before an enqueue is sent: None unless the queue's channel is confirmed."""
        if not self._subscriber.confirmed(ks.outcome_channel):
            return None
        return EndedMark(self._subscriber.generation, self._received)

    async def watch(
        self, ks: Keyspace, task_id: str, mark: EndedMark | None = None
    ) -> tuple[asyncio.Future[bytes | None], bool]:
        """A future for the task's end, and whether it has surely not ended unseen (then
        the record needs no read before the future is set). With a `mark` still good, an
        end already announced sets the future at once."""
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        unseen = self._good(ks, mark)
        if unseen and task_id in self._recent:
            fut.set_result(self._recent[task_id])
            unseen = False
        else:
            self._waiters.setdefault(task_id, set()).add(fut)
        await self._subscriber.subscribe(ks.outcome_channel, self._ended)
        return fut, unseen

    def _good(self, ks: Keyspace, mark: EndedMark | None) -> bool:
        return (
            mark is not None
            and mark.generation == self._subscriber.generation
            and self._received - mark.received <= _RECENT
            and self._subscriber.confirmed(ks.outcome_channel)
        )

    def _ended(self, data: bytes) -> None:
        raw_id, sep, value = data.partition(b"\0")
        task_id = raw_id.decode()
        result = value if sep else None
        self._received += 1
        recent = self._recent
        recent[task_id] = result
        if len(recent) > _RECENT:
            del recent[next(iter(recent))]
        for fut in self._waiters.pop(task_id, ()):
            if not fut.done():
                fut.set_result(result)

    def _lost(self) -> None:
        # what ended meanwhile was announced to no one: every waiter reads its record
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    def unwatch(self, task_id: str, fut: asyncio.Future[bytes | None]) -> None:
        futs = self._waiters.get(task_id)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self._waiters[task_id]

    async def close(self) -> None:
        await self._subscriber.close()


class QueryReplies:
    """Futures of this process's queries, by query id, set by the answers that workers send
    on this process's reply channel of the task's queue (`token` names the channel).

    An answer lost on the way (a reconnect) leaves its query to time out; a late answer,
    after its query gave up, is dropped."""

    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber
        self.token = secrets.token_hex(8)
        self._waiters: dict[str, asyncio.Future[bytes]] = {}

    async def expect(self, ks: Keyspace, query_id: str) -> asyncio.Future[bytes]:
        """A future for the answer to `query_id`, made before the query is sent, and set to
        the answer's body; the reply channel is subscribed (and confirmed) at the first use
        of a queue."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[query_id] = fut
        await self._subscriber.subscribe(ks.reply_channel(self.token), self._answered)
        return fut

    def _answered(self, data: bytes) -> None:
        query_id, _, body = data.partition(b" ")
        fut = self._waiters.pop(query_id.decode(), None)
        if fut is not None and not fut.done():
            fut.set_result(body)

    def forget(self, query_id: str) -> None:
        self._waiters.pop(query_id, None)

    async def close(self) -> None:
        await self._subscriber.close()
