"""The transport: the connections to Redis/Valkey and the one way commands and scripts go.

It makes the clients (standalone, cluster, Sentinel, TLS) with their retry tuning, keeps the
fast auto-pipelined connection of a standalone server, translates every redis-py error into
segue's own (map_errors: callers never see a redis-py exception), and sends script calls,
alone or pipelined, reloading a script the server forgot (NOSCRIPT) and resending only that
call, and again a call that a cluster's slot migration made redis-py give up (TRYAGAIN).
Pub/sub (_pubsub.py) and durability waits (_durability.py) run on its clients; the lease
thread sends its renewals through a SyncScripts of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.backoff
import redis.cluster
import redis.retry
from redis import exceptions as rexc

from segue import _scripts, _sentinel, _tls
from segue._clusterconn import ClusterRoutes
from segue._durability import Confirmer, Need
from segue._errors import (
    BrokerError,
    ConfigurationError,
    QueueFull,
    ScriptError,
    ServerOutOfMemory,
)
from segue._fastconn import FastConnection, ReplyError
from segue._keys import Keyspace
from segue._pubsub import EndedMark, EndedWaiters, QueryReplies, Subscriber
from segue._versions import warn_if_unpatched
from segue._wire import ScriptErrorCode as Code
from segue._wire import text as _text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

    from segue._settings import Settings

log = logging.getLogger("segue.broker")
T = TypeVar("T")


def _plain_url(url: str) -> str:
    """`redis+cluster://` → `redis://` for redis-py, which picks the cluster class itself."""
    if "+cluster" not in url and "," not in url:
        # urlunsplit would turn the embedded server's `unix:///path` into `unix:/path`
        return url
    parts = urlsplit(url)
    scheme = parts.scheme.replace("+cluster", "")
    netloc = parts.netloc.split(",", 1)[0]
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


def _cluster_seeds(url: str) -> list[tuple[str, int]]:
    """The host:port of every node a cluster URL lists after the first (which is in the
    URL redis-py parses), so the client can discover the cluster through any of them."""
    netloc = urlsplit(url).netloc.rsplit("@", 1)[-1]
    seeds = []
    for part in netloc.split(",")[1:]:
        host, sep, port = part.rpartition(":")
        if not sep or host.endswith(":"):  # no port, or a bare IPv6 address
            host, port = part, "6379"
        if not port.isdigit() or not host:
            raise ConfigurationError(f"the cluster URL {_safe(url)} lists a node {part!r}")
        seeds.append((host.strip("[]"), int(port)))
    return seeds


def _safe(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@contextlib.contextmanager
def map_errors(url: str) -> Iterator[None]:
    try:
        yield
    except rexc.NoScriptError as exc:  # pragma: no cover - the NOSCRIPT path reloads first
        raise BrokerError(f"script missing on {_safe(url)}: {exc}") from exc
    except ReplyError as exc:
        raise _reply_error(url, exc) from exc
    except _sentinel.NO_PRIMARY as exc:
        raise BrokerError(_sentinel.no_primary_message(url, exc)) from exc
    except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
        reason = _tls.handshake_failure(exc)
        if reason is not None:
            raise BrokerError(f"TLS with the server at {_safe(url)} failed: {reason}") from exc
        raise BrokerError(f"cannot reach the Redis/Valkey server at {_safe(url)}: {exc}") from exc
    except rexc.ResponseError as exc:
        raise _reply_error(url, exc) from exc
    except rexc.RedisError as exc:
        raise BrokerError(f"Redis/Valkey error at {_safe(url)}: {exc}") from exc


def _reply_error(url: str, exc: Exception) -> BrokerError | QueueFull:
    """segue's error for an error reply of the server or of a script."""
    text = str(exc)
    # redis-py strips the OOM code from the text, into the exception's class
    if isinstance(exc, rexc.OutOfMemoryError) or "used memory > 'maxmemory'" in text:
        return ServerOutOfMemory(
            f"the server at {_safe(url)} is out of memory (maxmemory reached, policy "
            "noeviction) and refused the write, so nothing of it was stored: let workers "
            "drain the queues, lower result_ttl_seconds, or raise maxmemory"
        )
    if text.startswith(Code.QUEUE_FULL + " "):
        return _queue_full(text)
    if isinstance(exc, rexc.NoPermissionError) or text.startswith("NOPERM"):
        return ScriptError(
            "NOPERM",
            f"the server at {_safe(url)} refused this ACL user ({text.removeprefix('NOPERM ')}): "
            "its key and channel patterns must cover the App's prefix (Settings.prefix), "
            "e.g. ~segue:* &segue:*",
        )
    code = text.split(" ", 1)[0] if text.startswith("SEGUE_") else "SERVER_ERROR"
    return ScriptError(code, f"server at {_safe(url)} replied with an error: {text}")


def _queue_full(text: str) -> QueueFull:
    """From `SEGUE_QUEUE_FULL <prefix:{queue}:> <length> <limit> <adding>` (see enqueue.lua)."""
    _, base, length, limit, adding = text.split(" ")
    queue = base.partition("{")[2].rpartition("}")[0]
    n, most, more = int(length), int(limit), int(adding)
    tasks = "a task" if more == 1 else f"{more:,} tasks"
    return QueueFull(
        f"queue {queue!r} is full: it holds {n:,} tasks waiting to run and the limit is "
        f"{most:,} (Settings.max_queue_length), so {tasks} could not be added and nothing "
        "was written; enqueue again once workers have taken some",
        queue,
        n,
        most,
    )


def server_unreachable(exc: BaseException) -> bool:
    """Whether a BrokerError means the server is not (yet) answering, as opposed to
    refusing us (wrong password, TLS, a script error): worth waiting for at start."""
    cause = exc.__cause__
    if isinstance(exc, ScriptError) or isinstance(cause, rexc.AuthenticationError):
        return False
    return isinstance(cause, rexc.ConnectionError | rexc.TimeoutError | ConnectionError)


def make_async_client(url: str, *, cluster: bool) -> Any:
    if _sentinel.is_sentinel_url(url):
        return _sentinel.async_primary(url, socket_connect_timeout=5)
    plain = _plain_url(url)
    _tls.options(plain)  # a malformed TLS option fails here, not at the first command
    if cluster:
        # every listed node seeds the discovery: the first alone would make a client that
        # starts while that node is down fail although the cluster serves
        seeds = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in _cluster_seeds(url)]
        return redis.asyncio.cluster.RedisCluster.from_url(
            plain,
            startup_nodes=seeds,
            socket_connect_timeout=5,
            topology_refresh_min_interval=_CLUSTER_REFRESH_S,
            retry=redis.asyncio.retry.Retry(_cluster_backoff(), _CLUSTER_RETRIES),
        )
    retry = redis.asyncio.retry.Retry(_backoff(), _RETRIES)
    return redis.asyncio.Redis.from_url(plain, socket_connect_timeout=5, retry=retry)


def make_sync_client(url: str, *, cluster: bool) -> Any:
    if _sentinel.is_sentinel_url(url):
        return _sentinel.sync_primary(url, socket_connect_timeout=5, socket_timeout=10)
    plain = _plain_url(url)
    _tls.options(plain)
    if cluster:
        seeds = [redis.cluster.ClusterNode(h, p) for h, p in _cluster_seeds(url)]  # type: ignore[no-untyped-call]
        return redis.cluster.RedisCluster.from_url(
            plain,
            startup_nodes=seeds,
            socket_connect_timeout=5,
            socket_timeout=10,
            topology_refresh_min_interval=_CLUSTER_REFRESH_S,
            retry=redis.retry.Retry(_cluster_backoff(), _CLUSTER_RETRIES),
        )
    retry = redis.retry.Retry(_backoff(), _RETRIES)
    return redis.Redis.from_url(plain, socket_connect_timeout=5, socket_timeout=10, retry=retry)


# redis-py's clients made by from_url() do not retry at all: a pooled connection that the
# server or the network dropped failed the next command (a pipeline, a renewal). Every
# command segue sends through them is safe to resend: reads, fenced or id-keyed scripts,
# claims with their replay token. The cluster clients keep redis-py's own policy, tuned
# for failover.
_RETRIES = 3
# redis-py refreshes a cluster's topology after errors at most once a second by default: a
# refresh made while the replica of a killed primary was not promoted yet delayed the next
# one, so clients followed the new primary up to a second after it took over (~1.4 s to
# promote with cluster-node-timeout 1000, ~2.7 s until enqueues went on). A refresh is one
# CLUSTER SLOTS to a live node: four a second during an outage cost nothing.
_CLUSTER_REFRESH_S = 0.25
# A command that meets a dead primary is retried every 0.125-0.25 s (after a quicker start)
# for 2.3-4.6 s in all: the refreshes find the promoted replica within a retry, and a
# failover with cluster-node-timeout 1000 (1.3-1.7 s measured) ends inside the window, so
# callers see a slow command, not an error. redis-py's default (10 retries, random waits
# of up to 1 s) left up to a second between the promotion and the next attempt.
_CLUSTER_RETRIES = 20


def _cluster_backoff() -> redis.backoff.AbstractBackoff:
    return redis.backoff.EqualJitterBackoff(cap=0.25, base=0.05)


def _backoff() -> redis.backoff.AbstractBackoff:
    return redis.backoff.ExponentialWithJitterBackoff(base=0.05, cap=1.0)


# While a slot migrates, a script whose keys are split between the two nodes gets TRYAGAIN,
# and redis-py's cluster client gives up after 16 tries (~0.4 s) with "TTL exhausted": the
# command never ran, so it is sent again, with a backoff, for up to this many seconds (a
# migration of a busy queue's slot keeps its keys split for as long as it takes).
MIGRATION_PATIENCE = 10.0


def _not_run(exc: rexc.ClusterError) -> bool:
    return "TTL exhausted" in str(exc)


async def while_migrating(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, sent again while a cluster's slot migration makes redis-py give it up."""
    deadline = time.monotonic() + MIGRATION_PATIENCE
    pause = 0.05
    while True:
        try:
            return await call()
        except rexc.ClusterError as exc:
            if not _not_run(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(0.5, pause * 2)


def _while_migrating_sync(call: Callable[[], T]) -> T:
    """while_migrating for a blocking client (the lease thread's)."""
    deadline = time.monotonic() + MIGRATION_PATIENCE
    pause = 0.05
    while True:
        try:
            return call()
        except rexc.ClusterError as exc:
            if not _not_run(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(0.5, pause * 2)


# A script call as the wrappers of _calls.py build it: the script, its KEYS, its ARGV.
Call = tuple[_scripts.Script, list[str], list[Any]]

# The NOSCRIPT path, one for every way a script is sent: a call whose reply (or error) says
# the server lacks the script (_scripts.is_noscript: after a restart, a failover or SCRIPT
# FLUSH) loads it and sends again only that call. The durable path (_durability.Confirmer)
# reloads on its own connections by the same test.


async def _eval(client: Any, call: Call) -> Any:
    """One script call on a redis-py client (cluster ones included)."""
    script, keys, args = call

    async def once() -> Any:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except rexc.RedisError as exc:
            if not _scripts.is_noscript(exc):
                raise
        await client.script_load(script.source)
        return await client.evalsha(script.sha, len(keys), *keys, *args)

    return await while_migrating(once)


def _eval_sync(client: Any, call: Call) -> Any:
    """_eval on a blocking client."""
    script, keys, args = call

    def once() -> Any:
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except rexc.RedisError as exc:
            if not _scripts.is_noscript(exc):
                raise
        client.script_load(script.source)
        return client.evalsha(script.sha, len(keys), *keys, *args)

    return _while_migrating_sync(once)


async def _reload_fast(fast: FastConnection, call: Call) -> Any:
    """After a NOSCRIPT reply on the fast connection: load the script, send the call again."""
    script, keys, args = call
    await fast.execute("SCRIPT", "LOAD", script.source)
    return await fast.execute("EVALSHA", script.sha, len(keys), *keys, *args)


class SyncScripts:
    """Script calls from a thread of their own (the lease thread), on a blocking client of
    their own made at first use: a task that blocks the event loop cannot delay them."""

    def __init__(self, url: str, *, cluster: bool) -> None:
        self.url = url
        self.cluster = cluster
        self._client: Any = None

    def run(self, call: Call) -> Any:
        if self._client is None:
            self._client = make_sync_client(self.url, cluster=self.cluster)
        with map_errors(self.url):
            return _eval_sync(self._client, call)

    def close(self) -> None:
        """Drop the connection (the next call makes a new one: after an error, too)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class Transport:
    """The connections of one App, and how commands and script calls reach the server."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.cluster = settings.cluster
        self.client: Any = make_async_client(url, cluster=self.cluster)
        # the hot path of a standalone server goes through one auto-pipelined connection;
        # under Sentinel it asks the sentinels for the primary at every (re)connect
        self.fast = self.new_fast_connection()
        # a cluster's hot path: one such connection per primary, routed by slot
        self.routes = (
            ClusterRoutes(self.client, _plain_url(url), settings.reply_timeout_seconds)
            if self.cluster and not _sentinel.is_sentinel_url(url)
            else None
        )
        self._confirmer: Confirmer | None = None  # durable enqueues, made at the first
        self._blocking: Any = None
        self._blocking_fast: FastConnection | None = None  # the waker's (wait_for_work)
        self._keyspaces: dict[str, Keyspace] = {}
        # Settings.max_queue_length as enqueue.lua and graph.lua take it (0: no limit)
        self.max_len = settings.max_queue_length or 0
        self._known_queues: set[str] = set()
        self._ended: EndedWaiters | None = None
        self._replies: QueryReplies | None = None
        self.server_version: tuple[str, str] | None = None  # (server, version) from HELLO

    def new_fast_connection(self, reply_timeout: float | None = None) -> FastConnection | None:
        """A FastConnection to the server (None on a cluster); `reply_timeout` defaults to
        the setting."""
        timeout = reply_timeout or self.settings.reply_timeout_seconds
        if _sentinel.is_sentinel_url(self.url):
            pool = self.client.connection_pool
            return FastConnection(
                _sentinel.fast_url(self.url), reply_timeout=timeout, resolve=pool.get_master_address
            )
        if not self.cluster:
            return FastConnection(_plain_url(self.url), reply_timeout=timeout)
        return None

    @property
    def where(self) -> str:
        """The server's URL without credentials, for messages."""
        return _safe(self.url)

    def keyspace(self, queue: str) -> Keyspace:
        ks = self._keyspaces.get(queue)
        if ks is None:
            ks = self._keyspaces[queue] = Keyspace(self.settings.prefix, queue)
        return ks

    @contextlib.asynccontextmanager
    async def errors(self) -> AsyncIterator[None]:
        with map_errors(self.url):
            yield

    async def ping(self) -> None:
        """Check the server answers, and warn once if its version lacks the Lua fixes."""
        try:
            async with self.errors():
                await self.client.ping()
        except BrokerError as exc:
            # redis-py's errors hide why TLS failed, or that TLS was needed: ask once more
            plain = _plain_url(self.url)
            if isinstance(exc, ScriptError) or str(exc).startswith("TLS"):
                raise  # the server answered: not a connection problem
            if await _tls.speaks_tls(plain):
                raise BrokerError(
                    f"the server at {_safe(self.url)} speaks TLS: connect with rediss://"
                ) from exc
            reason = await _tls.probe(plain)
            if reason is None:
                raise
            raise BrokerError(f"TLS with the server at {_safe(self.url)} failed: {reason}") from exc
        if self.server_version is None:
            async with self.errors():
                hello = await self._hello()
            name = _text(hello.get(b"server", b"redis"))
            self.server_version = (name, _text(hello.get(b"version", b"0")))
            warn_if_unpatched(*self.server_version, _safe(self.url))

    async def _hello(self) -> dict[bytes, Any]:
        # HELLO without a protocol version reports the server and version and changes
        # nothing: naming one would switch the connection under redis-py's parser
        if self.cluster:
            node = self.client.get_random_node()
            reply = await self.client.execute_command("HELLO", target_nodes=node)
        else:
            reply = await self.client.execute_command("HELLO")
        if isinstance(reply, dict):
            return reply
        items = list(reply)
        return {
            (k if isinstance(k, bytes) else str(k).encode()): v
            for k, v in zip(items[::2], items[1::2], strict=False)
        }

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
        if self._blocking_fast is not None:
            await self._blocking_fast.close()
            self._blocking_fast = None
        if self.routes is not None:
            await self.routes.close()
        if self._confirmer is not None:
            await self._confirmer.close()
            self._confirmer = None
        if self._ended is not None:
            await self._ended.close()
            self._ended = None
        if self._replies is not None:
            await self._replies.close()
            self._replies = None
        for c in (self._blocking, self.client):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.aclose()
        self._blocking = None

    async def run_calls(
        self, calls: list[tuple[_scripts.Script, list[str], list[Any]]], *, retry: bool = False
    ) -> list[Any]:
        """Run script calls in one round trip. `retry=True` resends once after a dropped
        connection: only for calls that are idempotent (enqueue by id, fenced finishes)."""
        if self.fast is not None:
            async with self.errors():
                try:
                    return await self._run_fast(self.fast, calls)
                except ConnectionError:
                    if not retry:
                        raise
                    return await self._run_fast(self.fast, calls)
        async with self.errors():
            if self.routes is not None:
                # what a primary's connection cannot deliver (a redirection, a refusal
                # that says the call did not run, a dead primary, NOSCRIPT) goes through
                # redis-py's client as every cluster call went before: it follows the
                # redirection, refreshes the slot map that routes, loads the script and
                # waits out a failover with its tuned retries (all these calls are safe
                # to resend: see _RETRIES)
                return await self.routes.run(calls, functools.partial(_eval, self.client))
            return [await _eval(self.client, call) for call in calls]

    @staticmethod
    async def _run_fast(
        fast: FastConnection, calls: list[tuple[_scripts.Script, list[str], list[Any]]]
    ) -> list[Any]:
        await fast.connect()
        if len(calls) == 1:
            script, keys, args = calls[0]
            try:
                return [await fast.send("EVALSHA", script.sha, len(keys), *keys, *args)]
            except ReplyError as exc:
                if not _scripts.is_noscript(exc):
                    raise
                return [await _reload_fast(fast, calls[0])]
        futs = [fast.send("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls]
        # every reply is collected, so that a dropped connection failing them all leaves no
        # future whose exception nobody retrieved
        replies = await asyncio.gather(*futs, return_exceptions=True)
        results: list[Any] = []
        for call, reply in zip(calls, replies, strict=True):
            if _scripts.is_noscript(reply):
                reply = await _reload_fast(fast, call)
            elif isinstance(reply, BaseException):
                raise reply
            results.append(reply)
        return results

    async def run_durable(
        self,
        calls: list[tuple[_scripts.Script, list[str], list[Any]]],
        need: Need,
        task_ids: tuple[str, ...],
    ) -> list[Any]:
        """run_calls for enqueue and graph calls that wait for `need` (_durability.py);
        resent once after a dropped connection, like enqueues (they are idempotent)."""
        if self._confirmer is None:
            self._confirmer = Confirmer(self)
        async with self.errors():
            try:
                return await self._confirmer.run(calls, need, task_ids)
            except ConnectionError:
                return await self._confirmer.run(calls, need, task_ids)

    async def check_durability(self, need: Need) -> None:
        """Refuse now a level the server cannot give (App start)."""
        if self._confirmer is None:
            self._confirmer = Confirmer(self)
        async with self.errors():
            await self._confirmer.check(need)

    def blocking_client(self) -> Any:
        """A client of its own for blocking reads (BLPOP, XREAD BLOCK), made at first use:
        a blocked command would hold up every other on a shared connection."""
        if self._blocking is None:
            self._blocking = make_async_client(self.url, cluster=self.cluster)
        return self._blocking

    async def wait_for_work(self, keyspaces: Sequence[Keyspace], timeout: float) -> Keyspace | None:
        """Block until an enqueue or a finished task signals work, or `timeout` passes; the
        queue whose token arrived (None: the time passed, or it is not known)."""
        timeout = max(0.01, timeout)
        if not self.cluster:
            # a fast connection of its own: through redis-py, a BLPOP's pool, retry and
            # timeout layers cost each wake of an idle worker about 0.1 ms, and a draining
            # worker (py-spy) about a sixth of its time
            if self._blocking_fast is None:
                wait = timeout + self.settings.reply_timeout_seconds
                self._blocking_fast = self.new_fast_connection(reply_timeout=wait)
            fast = self._blocking_fast
            if fast is not None:
                async with self.errors():
                    got = await fast.execute("BLPOP", *[ks.wake for ks in keyspaces], timeout)
                return _woken(keyspaces, got)
        blocking = self.blocking_client()
        async with self.errors():
            if not self.cluster or len(keyspaces) == 1:
                got = await blocking.blpop([ks.wake for ks in keyspaces], timeout=timeout)
                return _woken(keyspaces, got)
            # wake keys of several queues live in different slots: share the wait
            share = max(0.01, timeout / len(keyspaces))
            for ks in keyspaces:
                if await blocking.blpop([ks.wake], timeout=share):
                    return ks
            return None

    async def wait_on(self, ks: Keyspace, timeout: float) -> bool:
        """Block until a wake token of one queue arrives (True) or `timeout` passes: one of
        several waits run side by side, on a cluster's queues of different slots."""
        async with self.errors():
            return bool(await self.blocking_client().blpop([ks.wake], timeout=max(0.01, timeout)))

    async def nudge(self, keyspaces: Sequence[Keyspace]) -> None:
        """Put a wake token on each queue so that a blocked wait returns now."""
        async with self.errors():
            for ks in keyspaces:
                await self.client.lpush(ks.wake, 1)
                await self.client.ltrim(ks.wake, 0, 0)

    def subscriber(self) -> Subscriber:
        """A sharded pub/sub connection of its own (cluster-aware)."""
        return Subscriber(self)

    async def watch_ended(
        self, ks: Keyspace, task_id: str, mark: EndedMark | None = None
    ) -> tuple[asyncio.Future[bytes | None], bool]:
        """A future set when the server announces that this task ended (best effort), and
        whether it surely has not ended unannounced (EndedWaiters.watch)."""
        if self._ended is None:
            self._ended = EndedWaiters(self.subscriber())
        return await self._ended.watch(ks, task_id, mark)

    def ended_mark(self, ks: Keyspace) -> EndedMark | None:
        """Taken before an enqueue is sent, for its handle's result() (EndedWaiters.mark)."""
        return None if self._ended is None else self._ended.mark(ks)

    def unwatch(self, task_id: str, fut: asyncio.Future[bytes | None]) -> None:
        if self._ended is not None:
            self._ended.unwatch(task_id, fut)

    def query_replies(self) -> QueryReplies:
        """Where the answers to this process's queries arrive (made at the first query)."""
        if self._replies is None:
            self._replies = QueryReplies(self.subscriber())
        return self._replies


def _woken(keyspaces: Sequence[Keyspace], got: Any) -> Keyspace | None:
    """The queue a BLPOP reply (key, token) names; None for a timeout."""
    if not got:
        return None
    key = got[0].decode() if isinstance(got[0], bytes) else str(got[0])
    return next((ks for ks in keyspaces if ks.wake == key), None)
