"""A TCP fault proxy for the fault suite (RELIABILITY §7): clients connect to it, it forwards
to one upstream server, and the test switches what it does to the traffic at run time.

It runs its own event loop in a background thread, so sync tests, async tests (on any loop)
and worker subprocesses (given `proxy.url_for(engine.url)`) can all go through it, and every
control method may be called from any thread.

    with FaultProxy.for_url(engine.admin_url, seed=fault_seed) as proxy:
        app = App("t", redis_url=proxy.url_for(engine.url))
        proxy.delay(50, jitter_ms=20)           # both directions, each chunk (pipelined)
        proxy.blackhole("up")                   # read and discard client->server bytes
        proxy.reset(refuse_new=True)            # RST every connection, and new ones too
        proxy.drop_reply_then_reset(0.05)       # the ambiguous-write generator
        proxy.heal()                            # back to plain forwarding
        proxy.stats()                           # counters: resets, dropped replies, bytes

Directions: "up" is client to server, "down" is server to client, "both" is both.

`drop_reply_then_reset(p)`: each chunk a client sends (one read, so one command or one
pipeline) is, with probability p drawn from the proxy's seeded rng, forwarded upstream; the
proxy then waits for the server's reply to start (so the command did run), drops it, and
resets the client's connection. The client cannot tell whether its command ran. `match=`
limits the draw to chunks containing a byte string (e.g. b"EVALSHA", so that the handshake
is never the one hit).

TLS termination: pass `tls=` an `ssl.SSLContext` for the server side (e.g. from a `trustme`
CA, with `verify_mode = CERT_REQUIRED` to demand a client certificate); clients then speak
TLS to the proxy and the proxy speaks plaintext upstream.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import random
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

Direction = Literal["up", "down", "both"]
# how long a dropped request waits for the server's reply before resetting anyway: a
# blocking read (XREADGROUP BLOCK) may not reply for a while
_REPLY_WAIT_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class ProxyStats:
    """What the proxy did so far (a snapshot)."""

    accepted: int
    refused: int
    resets: int
    dropped_replies: int
    bytes_up: int
    bytes_down: int
    discarded_bytes: int
    tls_failures: int
    open_connections: int


@dataclasses.dataclass(frozen=True)
class _Mode:
    kind: Literal["pass", "delay", "blackhole"] = "pass"
    delay_ms: float = 0.0
    jitter_ms: float = 0.0


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.doomed: asyncio.Event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        for task in self.tasks:
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer sees a reset rather than an orderly close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class _Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...


class _TLSServerSide:
    """The server end of TLS over a plain stream, through memory BIOs. asyncio's own TLS
    server aborts a connection whose handshake fails before its alert is sent, so a client
    would see a bare reset; a real server (and this) sends the alert first."""

    def __init__(
        self, ctx: ssl.SSLContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._reader = reader
        self._writer = writer

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)

    async def _fill(self) -> bool:
        self._flush()
        await self._writer.drain()
        data = await self._reader.read(1 << 16)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self) -> bool:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                if not await self._fill():
                    return False
            except ssl.SSLError:
                self._flush()
                await self._writer.drain()
                return False
            else:
                self._flush()
                return True

    async def read(self) -> bytes:
        while True:
            try:
                data = self._tls.read(1 << 16)
            except ssl.SSLWantReadError:
                if not await self._fill():
                    return b""
            except ssl.SSLError:  # the client's close_notify or alert
                self._flush()
                return b""
            else:
                self._flush()
                return data

    def write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    async def drain(self) -> None:
        await self._writer.drain()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:  # pragma: no cover - TLS has no half-close
        raise NotImplementedError

    def close(self) -> None:
        self._writer.close()


class FaultProxy:
    """A fault-injecting TCP proxy to `upstream_host:upstream_port`; see the module doc."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        seed: int = 0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self._tls = tls
        self._rng = random.Random(seed)
        self._modes: dict[str, _Mode] = {"up": _Mode(), "down": _Mode()}
        self._drop_p = 0.0
        self._drop_match: bytes | None = None
        self._refuse = False
        self._pairs: set[_Pair] = set()
        self._counts: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @classmethod
    def for_url(cls, url: str, **options: Any) -> FaultProxy:
        """A proxy (not yet started) to the server of a `redis://` URL."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, **options)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free port of `host` (in `self.port`) and start forwarding."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            # failed TLS handshakes and peers that vanish are what the tests provoke: do
            # not log them as errors of the proxy
            loop.set_exception_handler(lambda _loop, _context: None)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, self.host, 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fault-proxy-{id(self)}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                pair.abort()
            self._pairs.clear()
            # connections still in their handshake or closing: end them here, not when
            # the loop is closed under them
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url_for(self, url: str, *, scheme: str | None = None) -> str:
        """`url` (credentials, db and query kept) pointed at this proxy instead."""
        parts = urlsplit(url)
        creds = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(
            (
                scheme or parts.scheme,
                f"{creds}{self.host}:{self.port}",
                parts.path,
                parts.query,
                parts.fragment,
            )
        )

    # --- modes (any thread) ------------------------------------------------------------

    def _set(self, direction: Direction, mode: _Mode) -> None:
        for d in ("up", "down") if direction == "both" else (direction,):
            self._modes[d] = mode

    def pass_through(self, direction: Direction = "both") -> None:
        self._set(direction, _Mode())

    def delay(self, ms: float, jitter_ms: float = 0.0, direction: Direction = "both") -> None:
        """Hold each chunk `ms` ± `jitter_ms` before forwarding it (order is kept)."""
        self._set(direction, _Mode("delay", ms, jitter_ms))

    def blackhole(self, direction: Direction = "both") -> None:
        """Read and discard, keeping the sockets open: a silent partition."""
        self._set(direction, _Mode("blackhole"))

    def reset(self, *, refuse_new: bool = False) -> int:
        """Reset every current connection; with `refuse_new`, reset new ones at once until
        `heal()`. Returns how many connections were reset."""
        self._refuse = refuse_new
        count: int = self._call(self._reset_all())
        return count

    def drop_reply_then_reset(
        self, p: float, *, match: bytes | None = None, seed: int | None = None
    ) -> None:
        """For a fraction `p` of client chunks (containing `match`, if given): forward,
        drop the reply, reset the client. `seed` restarts the proxy's rng."""
        if seed is not None:
            self._rng = random.Random(seed)
        self._drop_match = match
        self._drop_p = p

    def heal(self) -> None:
        """Plain forwarding again: no delay, no blackhole, no drops, no refusal."""
        self._set("both", _Mode())
        self._drop_p = 0.0
        self._drop_match = None
        self._refuse = False

    def stats(self) -> ProxyStats:
        c = self._counts
        return ProxyStats(
            accepted=c["accepted"],
            refused=c["refused"],
            resets=c["resets"],
            dropped_replies=c["dropped_replies"],
            bytes_up=c["bytes_up"],
            bytes_down=c["bytes_down"],
            discarded_bytes=c["discarded_bytes"],
            tls_failures=c["tls_failures"],
            open_connections=len(self._pairs),
        )

    # --- inside the proxy's loop -------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the fault proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    async def _reset_all(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            self._abort(pair)
        return len(pairs)

    def _abort(self, pair: _Pair) -> None:
        if pair in self._pairs:
            self._pairs.discard(pair)
            self._counts["resets"] += 1
        pair.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # stop() ends connections still being set up
            writer.transport.abort()
            raise

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            self._counts["refused"] += 1
            _reset(writer)
            return
        client_read: Callable[[], Awaitable[bytes]] = functools.partial(reader.read, 1 << 16)
        client_out: _Sink = writer
        if self._tls is not None:
            side = _TLSServerSide(self._tls, reader, writer)
            try:
                async with asyncio.timeout(10):
                    shaken = await side.handshake()
            except (TimeoutError, OSError):
                shaken = False
            if not shaken:
                self._counts["tls_failures"] += 1
                writer.close()  # orderly, so that the alert reaches the client
                return
            client_read, client_out = side.read, side
        pair = _Pair(writer)
        try:
            up_reader, pair.upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._counts["refused"] += 1
            _reset(writer)
            return
        self._counts["accepted"] += 1
        self._pairs.add(pair)
        up_read = functools.partial(up_reader.read, 1 << 16)
        pair.tasks = [
            asyncio.create_task(self._pump(pair, client_read, pair.upstream, "up")),
            asyncio.create_task(self._pump(pair, up_read, client_out, "down")),
        ]
        await asyncio.gather(*pair.tasks, return_exceptions=True)
        if pair in self._pairs:  # an orderly end on either side: close the other side too
            self._pairs.discard(pair)
            for w in (writer, pair.upstream):
                w.close()

    async def _pump(
        self,
        pair: _Pair,
        read: Callable[[], Awaitable[bytes]],
        writer: _Sink,
        direction: Literal["up", "down"],
    ) -> None:
        last_due = 0.0
        try:
            while True:
                try:
                    data = await read()
                except OSError:
                    data = b""
                if not data:
                    # pass the orderly end on; TLS cannot half-close, so close instead
                    if writer.can_write_eof():
                        writer.write_eof()
                    else:
                        writer.close()
                    return
                if direction == "down" and pair.doomed.is_set():
                    self._counts["discarded_bytes"] += len(data)
                    self._abort(pair)
                    return
                mode = self._modes[direction]
                if mode.kind == "blackhole":
                    self._counts["discarded_bytes"] += len(data)
                    continue
                loop = asyncio.get_running_loop()
                due = loop.time()
                if mode.kind == "delay":
                    wait = mode.delay_ms + self._rng.uniform(-mode.jitter_ms, mode.jitter_ms)
                    due += max(wait, 0.0) / 1000
                if due > loop.time() or last_due > loop.time():
                    # a delayed chunk (or one behind delayed ones) is forwarded at its time
                    # while the next ones are read: latency, not a stop-and-wait link that
                    # would also cap the connection at one chunk per delay. Due times only
                    # grow, so the chunks keep their order.
                    due = max(due, last_due + 1e-6)
                    last_due = due
                    loop.call_at(due, self._forward, pair, writer, data, direction)
                    continue
                writer.write(data)
                self._counts[f"bytes_{direction}"] += len(data)
                if direction == "up" and self._draw(data):
                    self._counts["dropped_replies"] += 1
                    pair.doomed.set()
                    asyncio.get_running_loop().call_later(
                        _REPLY_WAIT_SECONDS, self._abort_doomed, pair
                    )
                    await writer.drain()
                    return
                await writer.drain()
        except OSError:
            self._abort(pair)

    def _forward(self, pair: _Pair, writer: _Sink, data: bytes, direction: str) -> None:
        """Write a delayed chunk, unless its connection was reset meanwhile."""
        if pair not in self._pairs:
            return
        try:
            writer.write(data)
        except (OSError, RuntimeError):
            self._abort(pair)
            return
        self._counts[f"bytes_{direction}"] += len(data)

    def _draw(self, data: bytes) -> bool:
        p = self._drop_p
        if p <= 0.0:
            return False
        match = self._drop_match
        if match is not None and match not in data:
            return False
        return self._rng.random() < p

    def _abort_doomed(self, pair: _Pair) -> None:
        if pair in self._pairs:
            self._abort(pair)
