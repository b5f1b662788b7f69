"""Durability levels of an enqueue: after the write, wait until the server confirms that it
reached its append-only file on disk (`WAITAOF 1 0`, level "fsync") or replicas (`WAIT n`,
level "replicated"), and raise DurabilityError when it does not within the timeout.

WAIT and WAITAOF count the writes of the connection they are sent on, so the confirmation
follows the writes on one connection: a FastConnection of its own to the server (on the
hot path's connection, other callers' commands would queue behind a WAIT blocked for up to
the timeout), or to the node that owns the queue's slot on a cluster. Concurrent enqueues
share one confirmation per event-loop turn (group commit): it is sent after every write
sent before it, and confirms them all.

A write that finds its task already there (a resend after a lost reply, a repeat with the
same key) writes nothing, so a WAIT behind it would confirm nothing of the earlier write:
then a marker key is written first. The replication stream and the AOF are in order, so
what confirms the marker confirms every write before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from segue._errors import BrokerError, DurabilityError
from segue._fastconn import ConnectionLost, FastConnection, ReplyError
from segue._scripts import is_noscript

if TYPE_CHECKING:
    from collections.abc import Collection

    from segue._scripts import Script
    from segue._settings import Settings

Calls = list[tuple["Script", list[str], list[Any]]]
_MARKER_PX = 60_000  # the marker key only has to outlive the confirmation


@dataclasses.dataclass(frozen=True, slots=True)
class Need:
    """What the enqueues of one call wait for."""

    fsync: bool
    replicas: int  # 0: none
    timeout_ms: int

    @property
    def level(self) -> str:
        return "+".join(n for n, on in (("fsync", self.fsync), ("replicated", self.replicas)) if on)

    def commands(self) -> tuple[tuple[Any, ...], ...]:
        out: list[tuple[Any, ...]] = []
        if self.fsync:
            out.append(("WAITAOF", 1, 0, self.timeout_ms))
        if self.replicas:
            out.append(("WAIT", self.replicas, self.timeout_ms))
        return tuple(out)

    def asked(self) -> str:
        parts = []
        if self.fsync:
            parts.append("written to the server's append-only file and fsynced")
        if self.replicas:
            parts.append(f"copied to {_replicas(self.replicas)}")
        within = f"within {self.timeout_ms / 1000:g} s"
        return f"durability={self.level!r} ({' and '.join(parts)} {within})"


def need_for(levels: Collection[str], settings: Settings) -> Need | None:
    """The Need of enqueues at these levels together; None when all are "memory"."""
    fsync = "fsync" in levels
    replicas = settings.durability_replicas if "replicated" in levels else 0
    if not fsync and not replicas:
        return None
    return Need(fsync, replicas, max(1, round(settings.durability_timeout_seconds * 1000)))


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def _what(task_ids: tuple[str, ...]) -> str:
    if len(task_ids) == 1:
        return f"task {task_ids[0]}"
    return f"{len(task_ids)} tasks (first {task_ids[0]})" if task_ids else "tasks"


class _Redirect(Exception):
    """A cluster node answered MOVED or ASK: the slot is served at `address`."""

    def __init__(self, address: tuple[str, int], ask: bool) -> None:
        super().__init__(f"redirected to {address[0]}:{address[1]}")
        self.address = address
        self.ask = ask


def _copy(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    exc = source.exception() if not source.cancelled() else ConnectionLost("cancelled")
    if target.done():
        return
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


class _Link:
    """One connection for durable enqueues, and the confirmation each turn shares."""

    def __init__(self, conn: FastConnection, where: str) -> None:
        self.conn = conn
        self.where = where
        self._next: dict[tuple[int, tuple[Any, ...]], asyncio.Future[Any]] = {}

    def confirm(self, command: tuple[Any, ...], generation: int) -> asyncio.Future[Any]:
        """The reply of the next `command` on this connection, sent after every command
        sent so far (at the end of this event-loop turn)."""
        key = (generation, command)
        fut = self._next.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._next[key] = loop.create_future()
            # nobody may be left to read a failure (callers cancelled): read it here
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            loop.call_soon(self._flush, key)
        return fut

    def _flush(self, key: tuple[int, tuple[Any, ...]]) -> None:
        fut = self._next.pop(key)
        generation, command = key
        if self.conn.generation != generation:
            # a reconnect came between the writes and this: it would confirm nothing of them
            fut.set_exception(ConnectionLost("reconnected before the writes were confirmed"))
            return
        try:
            reply = self.conn.send(*command)
        except ConnectionError as exc:
            fut.set_exception(exc)
            return
        reply.add_done_callback(functools.partial(_copy, fut))


class Connections(Protocol):
    """What durable enqueues use of the transport (_transport.Transport)."""

    settings: Settings
    url: str
    client: Any
    cluster: bool
    server_version: tuple[str, str] | None

    @property
    def where(self) -> str: ...

    def new_fast_connection(self, reply_timeout: float | None = None) -> FastConnection | None: ...


class Confirmer:
    """Durable enqueues of one Broker: its connections, and the server capability check."""

    def __init__(self, broker: Connections) -> None:
        self._broker = broker
        self._links: dict[tuple[str, int] | None, _Link] = {}
        self._fsync_checked = False

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.conn.close()

    def _link(self, address: tuple[str, int] | None) -> _Link:
        link = self._links.get(address)
        if link is None:
            b = self._broker
            if address is None:
                # a WAIT rightly waits its whole timeout for its reply
                s = b.settings
                conn = b.new_fast_connection(
                    max(s.reply_timeout_seconds, s.durability_timeout_seconds + 5.0)
                )
                assert conn is not None
                where = b.where
            else:
                conn = FastConnection(_node_url(b.url, *address))
                where = f"{address[0]}:{address[1]}"
            link = self._links[address] = _Link(conn, where)
        return link

    def _cluster_address(self, key: str) -> tuple[str, int]:
        node = self._broker.client.get_node_from_key(key)
        return (str(node.host), int(node.port))

    # --- what the server can give ------------------------------------------------------------

    async def check(self, need: Need) -> None:
        """Refuse "fsync" (before writing) on a server that cannot give it: no WAITAOF
        (Redis before 7.2), appendonly off, or a user not allowed to run WAITAOF."""
        if not need.fsync or self._fsync_checked:
            return
        if self._broker.cluster:
            nodes = self._broker.client.get_primaries()
            links = [self._link((str(n.host), int(n.port))) for n in nodes]
        else:
            links = [self._link(None)]
        for link in links:
            try:
                await link.conn.execute("WAITAOF", 1, 0, need.timeout_ms)
            except ReplyError as exc:
                raise DurabilityError(
                    "durability='fsync' cannot be had from the server at "
                    f"{link.where}: {self._reason(str(exc))}",
                    asked="fsync",
                ) from exc
        self._fsync_checked = True

    def _reason(self, text: str) -> str:
        name, version = self._broker.server_version or ("the server", "of unknown version")
        if "unknown command" in text.lower():
            return (
                f"it has no WAITAOF command ({name} {version}; WAITAOF came with Redis 7.2 "
                "and is in every Valkey): use durability='memory' or 'replicated' there"
            )
        if "appendonly" in text.lower():
            return (
                "its append-only file is off (appendonly no): turn it on (appendonly yes) or "
                "use durability='memory' or 'replicated'"
            )
        if text.startswith("NOPERM"):
            return f"its user may not run WAITAOF (allow +waitaof, in @connection): {text}"
        return text

    # --- durable enqueues ------------------------------------------------------------------

    async def run(self, calls: Calls, need: Need, task_ids: tuple[str, ...]) -> list[Any]:
        """Run enqueue/graph script calls and wait for `need`; the scripts' replies."""
        await self.check(need)
        if not self._broker.cluster:
            replies, confirmed = await self._on(self._link(None), calls, need)
            self._judge(need, confirmed, self._link(None).where, task_ids)
            return replies
        # a cluster: each node gets its queues' calls, and confirms them itself
        groups: dict[tuple[str, int], list[int]] = {}
        for i, (_script, keys, _args) in enumerate(calls):
            groups.setdefault(self._cluster_address(keys[0]), []).append(i)
        results = await asyncio.gather(
            *(self._on_node(addr, [calls[i] for i in idx], need) for addr, idx in groups.items())
        )
        out: list[Any] = [None] * len(calls)
        for idx, (replies, _confirmed, _where) in zip(groups.values(), results, strict=True):
            for i, reply in zip(idx, replies, strict=True):
                out[i] = reply
        for _replies, confirmed, where in results:
            self._judge(need, confirmed, where, task_ids)
        return out

    async def _on_node(
        self, address: tuple[str, int], calls: Calls, need: Need
    ) -> tuple[list[Any], list[Any], str]:
        ask = False
        for _ in range(5):
            link = self._link(address)
            try:
                replies, confirmed = await self._on(link, calls, need, ask=ask)
            except _Redirect as moved:
                address, ask = moved.address, moved.ask
                continue
            return replies, confirmed, link.where
        raise BrokerError(
            f"the cluster redirected a durable enqueue 5 times, last to {address[0]}:{address[1]}"
        )

    async def _on(
        self, link: _Link, calls: Calls, need: Need, *, ask: bool = False, loaded: bool = False
    ) -> tuple[list[Any], list[Any]]:
        conn = link.conn
        await conn.connect()
        generation = conn.generation
        asking: list[asyncio.Future[Any]] = []
        writes: list[asyncio.Future[Any]] = []
        for script, keys, args in calls:
            if ask:
                asking.append(conn.send("ASKING"))
            writes.append(conn.send("EVALSHA", script.sha, len(keys), *keys, *args))
        confirms = [link.confirm(c, generation) for c in need.commands()]
        await asyncio.gather(*asking, return_exceptions=True)
        replies = await asyncio.gather(*writes, return_exceptions=True)
        for reply in replies:
            if not isinstance(reply, BaseException):
                continue
            text = str(reply)
            if is_noscript(reply) and not loaded:
                for script in {c[0].sha: c[0] for c in calls}.values():
                    await conn.execute("SCRIPT", "LOAD", script.source)
                # every call again: the id-keyed scripts create only what is missing
                return await self._on(link, calls, need, ask=ask, loaded=True)
            if isinstance(reply, ReplyError) and text.startswith(("MOVED ", "ASK ")):
                host, _, port = text.split()[2].rpartition(":")
                here = link.where.rpartition(":")[0]
                raise _Redirect((host or here, int(port)), text.startswith("ASK "))
            raise reply
        written: list[Any] = list(replies)
        confirmed = await asyncio.gather(*confirms, return_exceptions=True)
        # enqueue.lua answers a list (one reply per task), subtask.lua one reply
        rows = [r for reply in written for r in (reply if isinstance(reply, list) else [reply])]
        if not all(r == 1 for r in rows):
            # some task was already there: confirm it too, behind a write of this connection
            generation = conn.generation
            marker = conn.send("SET", calls[0][2][0] + "durable", 1, "PX", _MARKER_PX)
            confirms = [link.confirm(c, generation) for c in need.commands()]
            await marker
            confirmed = await asyncio.gather(*confirms, return_exceptions=True)
        for reply in confirmed:
            if isinstance(reply, ConnectionError):
                raise reply
        return written, list(confirmed)

    def _judge(
        self, need: Need, confirmed: list[Any], where: str, task_ids: tuple[str, ...]
    ) -> None:
        ok = True
        got: list[str] = []
        for command, reply in zip(need.commands(), confirmed, strict=True):
            if isinstance(reply, BaseException):
                ok = False
                got.append(f"{command[0]} failed: {reply}")
            elif command[0] == "WAITAOF":
                local = int(reply[0])
                ok = ok and local >= 1
                got.append("fsynced" if local >= 1 else "not fsynced")
            else:
                n = int(reply)
                ok = ok and n >= need.replicas
                got.append(_replicas(n))
        if ok:
            return
        confirmed_text = ", ".join(got)
        raise DurabilityError(
            f"the enqueue of {_what(task_ids)} asked {need.asked()}, but the server at "
            f"{where} confirmed: {confirmed_text}; it was written and may still exist, so "
            "enqueue it again with the same key= to make sure",
            task_ids,
            need.level,
            confirmed_text,
        )


def _node_url(url: str, host: str, port: int) -> str:
    """The URL of one cluster node: `url`'s scheme, credentials and options, its address."""
    parts = urlsplit(url)
    scheme = parts.scheme.replace("+cluster", "")
    creds = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((scheme, f"{creds}{host}:{port}", "", parts.query, ""))
