"""A multiplexed connection for the hot path: commands are written as soon as they are
issued and replies are matched to them in order (auto-pipelining, as ioredis does).

Why not redis-py here: on this project's 2-core machine a redis-py asyncio EVALSHA costs
about 110 µs of client time (pool checkout, retry wrapper, timeouts), which caps one-by-one
enqueue near 8,000/s and adds to every worker round trip; concurrent callers also each take a
pooled connection instead of sharing one pipeline. This connection parses with hiredis (the
parser redis-py uses) and carries only commands of a standalone server: scripts and a few
reads. Everything else (cluster, pub/sub, admin) goes through redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from segue import _tls

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable


log = logging.getLogger("segue.broker")


class ReplyError(Exception):
    """An error reply from the server (the text of the reply)."""


class ConnectionLost(ConnectionError):
    """The connection dropped before a reply came: the command may or may not have run."""


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        # hot (every argument of every command): the exact types first, by class, the
        # subclasses (bool, an IntEnum) as before
        t = a.__class__
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode()
        elif t is int:
            b = b"%d" % a
        elif isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int | float):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send a {type(a).__name__} to the server")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class FastConnection:
    """One connection shared by all callers of one process's App."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        reply_timeout: float | None = None,
        resolve: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        """`resolve`, when given, names the server's address at every (re)connect: under
        Sentinel it asks the sentinels for the current primary. `reply_timeout`: a command
        waiting longer than this with no reply at all drops the connection (None: never)."""
        parts = urlsplit(url)
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = unquote(parts.path) if parts.scheme == "unix" else ""
        query = parse_qs(parts.query)
        db_text = (
            query.get("db", ["0"])[0] if parts.scheme == "unix" else (parts.path.strip("/") or "0")
        )
        self._db = int(db_text)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        # when the oldest waiting command was sent, or the last reply came: a server that
        # vanished without a reset answers nothing, and only this notices
        self._progress = 0.0
        self._watch_task: asyncio.Task[None] | None = None
        self._tls = _tls.options(url)
        self._ssl: ssl.SSLContext | None = None
        self._resolve = resolve
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._read_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # counts the connections opened: a command that must follow an earlier one on the
        # same connection (WAIT after a write) checks that no reconnect came between them
        self.generation = 0

    async def _open(self) -> None:
        async with asyncio.timeout(self._connect_timeout):
            if self._resolve is not None:
                self._host, self._port = await self._resolve()
            if self._scheme == "unix":
                reader, writer = await asyncio.open_unix_connection(self._path)
            else:
                if self._tls is not None and self._ssl is None:
                    self._ssl = self._tls.context()
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl
                )
        # each connection has its own queue of waiting replies: a reconnect must not hand
        # the old connection's failure (seen late by its read loop) to the new one
        pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader, self._writer, self._pending = reader, writer, pending
        self.generation += 1
        self._read_task = asyncio.create_task(
            self._read_loop(reader, writer, pending), name="segue-fastconn"
        )
        if self._reply_timeout is not None:
            self._watch_task = asyncio.create_task(
                self._watch(writer, pending, self._reply_timeout), name="segue-fastconn-watch"
            )
        if self._password is not None:
            auth = (self._user, self._password) if self._user else (self._password,)
            await self._send(("AUTH", *auth))
        if self._db:
            await self._send(("SELECT", self._db))

    def _usable(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _ensure(self) -> None:
        async with self._lock:
            if not self._usable():
                # a reset connection is closing before its read loop has seen it: drop it
                # now, or every caller until then fails without a reconnect
                self._drop(ConnectionLost("the connection was closed"))
                try:
                    await self._open()
                except BaseException:
                    self._drop(ConnectionLost("could not connect"))
                    raise

    async def connect(self) -> None:
        if not self._usable():
            await self._ensure()

    def send(self, *args: Any) -> asyncio.Future[Any]:
        """Write one command now; the future gets its reply. Call connect() first."""
        return self._send(args)

    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionLost("not connected")
        loop = asyncio.get_running_loop()
        if not self._pending:
            self._progress = loop.time()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append(fut)
        writer.write(_pack(args))
        return fut

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (raises ReplyError on an error reply)."""
        if not self._usable():
            await self._ensure()
        fut = self._send(args)
        writer = self._writer
        if writer is not None and writer.transport.get_write_buffer_size() > 1 << 20:
            await writer.drain()
        return await fut

    async def _read_loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: collections.deque[asyncio.Future[Any]],
    ) -> None:
        parser = hiredis.Reader(replyError=ReplyError)
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionLost("the server closed the connection")
                self._progress = loop.time()
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    fut = pending.popleft()
                    if fut.done():
                        continue
                    if isinstance(reply, ReplyError):
                        if self._resolve is not None and str(reply).startswith("READONLY"):
                            # the primary was demoted: drop the connection so that the
                            # next command asks where the primary is now
                            lost = ConnectionLost(f"the server became a replica: {reply}")
                            fut.set_exception(lost)
                            raise lost
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
        except asyncio.CancelledError:
            self._drop(ConnectionLost("connection closed"), writer, pending)
            raise
        except Exception as exc:
            if isinstance(exc, ConnectionError):
                self._drop(exc, writer, pending)
            else:
                # keep the cause: a TLS 1.3 server refuses a client certificate only here,
                # at the first read, and the caller names that reason
                lost = ConnectionLost(str(exc))
                lost.__cause__ = exc
                self._drop(lost, writer, pending)

    async def _watch(
        self,
        writer: asyncio.StreamWriter,
        pending: collections.deque[asyncio.Future[Any]],
        timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        while writer is self._writer:
            await asyncio.sleep(min(1.0, timeout / 4))
            if pending and loop.time() - self._progress > timeout:
                log.warning(
                    "no reply from %s:%s for %g s: dropping the connection", *self._where(), timeout
                )
                self._drop(
                    ConnectionLost(f"no reply from the server within {timeout:g} s"),
                    writer,
                    pending,
                )
                return

    def _where(self) -> tuple[str, Any]:
        return (self._path, "") if self._scheme == "unix" else (self._host, self._port)

    def _drop(
        self,
        exc: BaseException,
        writer: asyncio.StreamWriter | None = None,
        pending: collections.deque[asyncio.Future[Any]] | None = None,
    ) -> None:
        """Forget a connection (the current one by default); every command waiting for a
        reply on it gets `exc`."""
        if writer is None or writer is self._writer:
            writer, self._writer, self._reader = self._writer, None, None
            pending = self._pending
            task, self._read_task = self._read_task, None
            watch, self._watch_task = self._watch_task, None
            for t in (task, watch):
                if t is not None and t is not asyncio.current_task():
                    t.cancel()
        if writer is not None:
            writer.close()
        while pending:
            fut = pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        task, self._read_task = self._read_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._drop(ConnectionLost("connection closed"))
