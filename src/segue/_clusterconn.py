"""The hot path of a cluster: one auto-pipelined FastConnection per primary, each script
call routed by its keys' slot.

A cluster worker used to send every claim and finish on its own through redis-py's cluster
client (one round trip per call, and more client time per call than redis-py's standalone
client, whose ~110 µs _fastconn.py was written to avoid). Here the calls
of one round are grouped by the primary that owns their slot and written on that primary's
connection at once, as a standalone server's are. The slot map is redis-py's own (its
nodes manager): what moves it (a MOVED or a failover met by the cluster client) moves this
routing too, so there is one map to keep right. What a connection cannot deliver (a
redirection, a dead primary) goes back through redis-py's client: Transport.run_calls
holds that one error path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.crc import key_slot

from segue._fastconn import FastConnection, ReplyError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from segue import _scripts

    Call = tuple[_scripts.Script, list[str], list[Any]]

# hash tags seen, with their slot: a worker meets a few queues' tags over and over, and
# CRC16 in Python costs more than the dict lookup (bounded: a flood of distinct tags, such
# as tagless keys, only clears it)
_MAX_TAGS = 4096


# error replies that say the command did not run on this node: sent elsewhere, or later
_NOT_RUN_HERE = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "NOSCRIPT")
_UNSENT: Any = object()


def undelivered(reply: Any) -> bool:
    """Whether a routed call's reply (or exception) says to send it again through the
    cluster client: a redirection, a refusal before running, a missing script, a dropped
    or refused connection (its primary may have died: the client waits for its
    replacement)."""
    if isinstance(reply, ReplyError):
        return str(reply).startswith(_NOT_RUN_HERE)
    return reply is _UNSENT or isinstance(reply, OSError)  # ConnectionLost is one


def _tag(key: str) -> str:
    """What decides `key`'s slot: its hash tag, or the whole key without one."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class ClusterRoutes:
    """The FastConnections of one cluster, one per primary, made at first use."""

    def __init__(self, client: Any, url: str, reply_timeout: float | None) -> None:
        """`client`: the Transport's redis-py cluster client, whose slot map routes;
        `url`: the cluster's plain URL (credentials, TLS options), whose host each node's
        connection replaces."""
        self._client = client
        self._url = urlsplit(url)
        self._reply_timeout = reply_timeout
        self._slots: dict[str, int] = {}
        self._conns: dict[str, FastConnection] = {}

    async def ready(self) -> None:
        """Load the slot map once (the cluster client does so at its first command)."""
        manager = self._client.nodes_manager
        if not manager.slots_cache:
            await self._client.initialize()

    def slot(self, key: str) -> int:
        tag = _tag(key)
        slot = self._slots.get(tag)
        if slot is None:
            if len(self._slots) >= _MAX_TAGS:
                self._slots.clear()
            slot = self._slots[tag] = key_slot(key.encode())
        return slot

    def connection(self, key: str) -> FastConnection:
        """The connection to the primary that owns `key`'s slot, by the current slot map
        (raises when the map covers no such slot: the caller sends through redis-py)."""
        node = self._client.nodes_manager.slots_cache[self.slot(key)][0]
        conn = self._conns.get(node.name)
        if conn is None:
            conn = self._conns[node.name] = FastConnection(
                self._node_url(node.host, node.port), reply_timeout=self._reply_timeout
            )
        return conn

    def group(self, keys: Sequence[list[str]]) -> dict[FastConnection | None, list[int]]:
        """The positions of the calls with these KEYS, by the connection each goes on
        (None: a call without keys, or a slot the map does not cover)."""
        groups: dict[FastConnection | None, list[int]] = {}
        for i, ks in enumerate(keys):
            conn: FastConnection | None = None
            if ks:
                try:
                    conn = self.connection(ks[0])
                except (KeyError, IndexError):
                    conn = None
            groups.setdefault(conn, []).append(i)
        return groups

    async def run(
        self, calls: Sequence[Call], resend: Callable[[Call], Awaitable[Any]]
    ) -> list[Any]:
        """The calls' replies, in order: each primary's calls pipelined on its connection,
        the primaries' at once; `resend(call)` for what undelivered() names (Transport's
        one error path). An error reply of a script raises, as on a standalone server."""
        await self.ready()
        sent: list[Any] = [_UNSENT] * len(calls)
        for conn, positions in self.group([keys for _, keys, _ in calls]).items():
            if conn is None:
                continue
            try:
                await conn.connect()
            except OSError:
                continue  # unsent: the cluster client finds where the slot went
            for i in positions:
                script, keys, args = calls[i]
                sent[i] = conn.send("EVALSHA", script.sha, len(keys), *keys, *args)
        futures = [f for f in sent if f is not _UNSENT]
        # every reply is collected, so that a dropped connection failing them all leaves no
        # future whose exception nobody retrieved
        replies = iter(await asyncio.gather(*futures, return_exceptions=True))
        results: list[Any] = []
        for call, fut in zip(calls, sent, strict=True):
            reply = _UNSENT if fut is _UNSENT else next(replies)
            if undelivered(reply):
                reply = await resend(call)
            elif isinstance(reply, BaseException):
                raise reply
            results.append(reply)
        return results

    def _node_url(self, host: str, port: int) -> str:
        u = self._url
        user = u.netloc.rsplit("@", 1)[0] + "@" if "@" in u.netloc else ""
        where = f"[{host}]" if ":" in host else host
        return urlunsplit((u.scheme, f"{user}{where}:{port}", "", u.query, ""))

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            await conn.close()
