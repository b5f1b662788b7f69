"""The only module that talks to Redis/Valkey: connections, scripts, reads, pub/sub.

Redis errors are translated here into segue's own (BrokerError, ScriptError) so callers
never see a redis-py exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.backoff
import redis.cluster
import redis.retry
from redis import exceptions as rexc

from segue import _calls, _scripts, _sentinel, _tls
from segue._durability import Confirmer, Need
from segue._errors import (
    BrokerError,
    ConfigurationError,
    DuplicateTask,
    InvalidTransition,
    QueueFull,
    ScriptError,
    ServerOutOfMemory,
    TaskNotFound,
)
from segue._fastconn import FastConnection, ReplyError
from segue._keys import Keyspace, queues_key
from segue._pubsub import EndedWaiters, Subscriber
from segue._versions import warn_if_unpatched
from segue._wire import GraphRecord
from segue._wire import ScriptErrorCode as Code

__all__ = ["Broker", "GraphRecord"]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from segue._calls import ScriptCall
    from segue._keys import CronKeys, WorkerKeys
    from segue._settings import Settings
    from segue._wire import EnqueueSpec, Finished, GraphStep

log = logging.getLogger("segue.broker")


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
    except rexc.NoScriptError as exc:  # pragma: no cover - handled by the script wrapper
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


class Broker:
    """Connections and every server operation of one App."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.cluster = settings.cluster
        self.client: Any = make_async_client(url, cluster=self.cluster)
        # the hot path of a standalone server goes through one auto-pipelined connection;
        # under Sentinel it asks the sentinels for the primary at every (re)connect
        self.fast = self.new_fast_connection()
        self._confirmer: Confirmer | None = None  # durable enqueues, made at the first
        self._blocking: Any = None
        self._keyspaces: dict[str, Keyspace] = {}
        # Settings.max_queue_length as enqueue.lua and graph.lua take it (0: no limit)
        self.max_len = settings.max_queue_length or 0
        self._known_queues: set[str] = set()
        self._ended: EndedWaiters | None = None
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
        if self._confirmer is not None:
            await self._confirmer.close()
            self._confirmer = None
        if self._ended is not None:
            await self._ended.close()
            self._ended = None
        for c in (self._blocking, self.client):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.aclose()
        self._blocking = None

    # --- enqueue -------------------------------------------------------------------------

    def enqueue_call(self, ks: Keyspace, specs: Sequence[EnqueueSpec]) -> ScriptCall:
        """Create tasks (enqueue.lua); see _calls.parse_created for the reply."""
        return _calls.enqueue(ks, specs, self.max_len)

    async def register_queue(self, queue: str) -> None:
        if queue in self._known_queues:
            return
        async with self.errors():
            await self.client.sadd(queues_key(self.settings.prefix), queue)
        self._known_queues.add(queue)

    def forget_queue(self, queue: str) -> None:
        """Register `queue` again at its next register_queue (the set may have lost it)."""
        self._known_queues.discard(queue)

    async def queues(self) -> list[str]:
        async with self.errors():
            names = await self.client.smembers(queues_key(self.settings.prefix))
        return sorted(n.decode() for n in names)

    # --- worker cycle --------------------------------------------------------------------

    def claim_call(
        self,
        ks: Keyspace,
        worker_id: str,
        want: int,
        token: str = "",
        answered: str = "",
        *,
        holds_last: bool = False,
    ) -> ScriptCall:
        """A claim of up to `want` tasks (see _calls.claim); _calls.parse_claim reads it."""
        return _calls.claim(
            ks, self.settings, worker_id, want, token, answered, holds_last=holds_last
        )

    def finish_call(
        self, ks: Keyspace, finished: Sequence[Finished], *, claim_follows: bool = False
    ) -> ScriptCall:
        """Record outcomes (see _calls.finish); _calls.parse_finish reads the reply."""
        cap = self.settings.dead_letter_cap
        return _calls.finish(ks, finished, cap, claim_follows=claim_follows)

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
            if len(calls) == 1:
                script, keys, args = calls[0]
                return [await script.run(self.client, keys, args)]
            if self.cluster:
                # a cluster pipeline may split over nodes; scripts of one queue share a slot
                return [await s.run(self.client, k, a) for s, k, a in calls]
            return await _scripts.run_pipeline(self.client, calls)

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
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await fast.execute("SCRIPT", "LOAD", script.source)
                return [await fast.execute("EVALSHA", script.sha, len(keys), *keys, *args)]
        futs = [fast.send("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls]
        # every reply is collected, so that a dropped connection failing them all leaves no
        # future whose exception nobody retrieved
        replies = await asyncio.gather(*futs, return_exceptions=True)
        results: list[Any] = []
        for (script, keys, args), reply in zip(calls, replies, strict=True):
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                await fast.execute("SCRIPT", "LOAD", script.source)
                reply = await fast.execute("EVALSHA", script.sha, len(keys), *keys, *args)
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

    async def wait_for_work(self, keyspaces: Sequence[Keyspace], timeout: float) -> None:
        """Block until an enqueue or a finished task signals work, or `timeout` passes."""
        if self._blocking is None:
            self._blocking = make_async_client(self.url, cluster=self.cluster)
        timeout = max(0.01, timeout)
        async with self.errors():
            if not self.cluster or len(keyspaces) == 1:
                await self._blocking.blpop([ks.wake for ks in keyspaces], timeout=timeout)
            else:
                # wake keys of several queues live in different slots: share the wait
                share = max(0.01, timeout / len(keyspaces))
                for ks in keyspaces:
                    if await self._blocking.blpop([ks.wake], timeout=share):
                        return

    async def forget_claims(self, tokens: dict[Keyspace, str]) -> None:
        """Delete the replay records of claims (a stopping worker's last ones)."""
        async with self.errors():
            for ks, token in tokens.items():
                if token:
                    await self.client.delete(ks.claim(token))

    async def nudge(self, keyspaces: Sequence[Keyspace]) -> None:
        """Put a wake token on each queue so that a blocked wait returns now."""
        async with self.errors():
            for ks in keyspaces:
                await self.client.lpush(ks.wake, 1)
                await self.client.ltrim(ks.wake, 0, 0)

    # --- reads ---------------------------------------------------------------------------

    async def task_record(self, ks: Keyspace, task_id: str) -> dict[bytes, bytes]:
        async with self.errors():
            if self.fast is not None:
                flat = await self.fast.execute("HGETALL", ks.task(task_id))
                return dict(zip(flat[::2], flat[1::2], strict=True))
            rec: dict[bytes, bytes] = await self.client.hgetall(ks.task(task_id))
        return rec

    async def task_status(self, ks: Keyspace, task_id: str) -> bytes | None:
        async with self.errors():
            if self.fast is not None:
                raw: bytes | None = await self.fast.execute("HGET", ks.task(task_id), "s")
                return raw
            st: bytes | None = await self.client.hget(ks.task(task_id), "s")
        return st

    async def list_ids(self, ks: Keyspace, status: str, offset: int, limit: int) -> list[str]:
        """Ids of one queue's tasks in a status, newest index entries last, paged."""
        end = offset + limit - 1
        ids: list[bytes] = []
        async with self.errors():
            if status == "queued":
                ids = await self._pending_page(ks, offset, limit, with_scheduled=False)
            elif status == "running":
                ids = await self.client.zrange(ks.leases, offset, end)
            elif status == "suspended":
                # suspended tasks wait in the queued lists, or scheduled when delayed;
                # the caller keeps those whose record says suspended
                ids = await self._pending_page(ks, offset, limit, with_scheduled=True)
            elif status == "paused":
                ids = await self.client.zrange(ks.paused, offset, end)
            elif status == "waiting":
                ids = await self.client.zrange(ks.waiting, offset, end)
            elif status in ("scheduled", "retrying"):
                ids = await self.client.zrange(ks.scheduled, offset, end)
            elif status in ("succeeded", "failed", "cancelled", "expired"):
                ids = await self.client.zrange(ks.key("done", status), offset, end)
            else:
                ids = []
        return [i.decode() for i in ids]

    async def _pending_page(
        self, ks: Keyspace, offset: int, limit: int, *, with_scheduled: bool
    ) -> list[bytes]:
        """A page of the queued lists read as one sequence (highest priority first, next to
        run first), then the scheduled set: only the page is read, however long the lists
        (a dashboard pages through a million queued tasks without loading them)."""
        pipe = self.client.pipeline(transaction=False)
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
            chunk = await self.client.lrange(key, -(skip + want), -(skip + 1))
            ids.extend(reversed(chunk))
            want -= len(chunk)
            skip = 0
        if with_scheduled and want > 0:
            ids.extend(await self.client.zrange(ks.scheduled, skip, skip + want - 1))
        return ids

    async def recent_events(
        self, ks: Keyspace, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The last `count` entries of a queue's event stream, newest first (bounded)."""
        async with self.errors():
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.client.xrevrange(
                ks.events, count=count
            )
        return entries

    async def dead_count(self, ks: Keyspace) -> int:
        async with self.errors():
            return int(await self.client.llen(ks.dead))

    async def has_retrying(self, ks: Keyspace) -> bool:
        """Whether a task of this queue waits for its next try (bounded look: 1,000 ids)."""
        async with self.errors():
            ids = await self.client.zrange(ks.scheduled, 0, 999)
            if not ids:
                return False
            pipe = self.client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(ks.task(task_id.decode()), "s")
            states = await pipe.execute()
        return b"retrying" in states

    async def count(self, ks: Keyspace) -> dict[str, int]:
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            for key in ks.pending:
                pipe.llen(key)
            pipe.zcard(ks.scheduled)
            pipe.zcard(ks.leases)
            for key in ks.done:
                pipe.zcard(key)
            pipe.zcard(ks.paused)
            pipe.zcard(ks.waiting)
            r = await pipe.execute()
        return {
            "queued": sum(r[0:3]),
            "scheduled": r[3],
            "running": r[4],
            "succeeded": r[5],
            "failed": r[6],
            "cancelled": r[7],
            "expired": r[8],
            "paused": r[9],
            "waiting": r[10],
        }

    # --- pub/sub --------------------------------------------------------------------------

    def subscriber(self) -> Subscriber:
        """A sharded pub/sub connection of its own (cluster-aware)."""
        return Subscriber(self)

    async def watch_ended(self, ks: Keyspace, task_id: str) -> asyncio.Future[None]:
        """A future set when the server announces that this task ended (best effort)."""
        if self._ended is None:
            self._ended = EndedWaiters(self)
        return await self._ended.watch(ks, task_id)

    def unwatch(self, task_id: str, fut: asyncio.Future[None]) -> None:
        if self._ended is not None:
            self._ended.unwatch(task_id, fut)

    # --- commands and state ------------------------------------------------------------------

    def control_call(self, ks: Keyspace, task_id: str, command: str, reason: str) -> ScriptCall:
        return _calls.control(ks, task_id, command, reason)

    async def control(self, ks: Keyspace, task_id: str, command: str, reason: str) -> str:
        """Apply pause|resume|cancel (control.lua); the status after it, as stored."""
        try:
            reply = await self.run_calls([_calls.control(ks, task_id, command, reason)])
        except ScriptError as exc:
            _raise_refusal(exc, "task", task_id, command)
            raise
        return _calls.parse_control(reply[0])[0]

    def graph_call(
        self, ks: Keyspace, workflow: GraphRecord | None, steps: Sequence[GraphStep]
    ) -> ScriptCall:
        """Create tasks with dependencies, and a workflow's record on this queue when given
        (graph.lua)."""
        return _calls.graph(ks, workflow, steps, self.max_len)

    def watch_call(self, ks: Keyspace, watches: Sequence[Any]) -> ScriptCall:
        """Tasks of other queues wait for tasks of this one (watch.lua, 4 fields each)."""
        return _calls.watch(ks, watches)

    async def outbox(self, ks: Keyspace, limit: int) -> list[bytes]:
        """The oldest entries of a queue's outbox (see _forward.py)."""
        async with self.errors():
            entries: list[bytes] = await _scripts.while_migrating(
                lambda: self.client.lrange(ks.outbox, 0, limit - 1)
            )
        return entries

    async def forward(self, ks: Keyspace, entries: Sequence[bytes]) -> int:
        """Deliver outbox entries of other queues to this one (forward.lua); how many
        changed something. Safe to repeat."""
        return int((await self.run_calls([_calls.forward(ks, entries)], retry=True))[0])

    async def outbox_done(self, ks: Keyspace, entries: Sequence[bytes]) -> None:
        """Remove delivered entries from a queue's outbox (one copy of each)."""

        async def remove() -> None:
            pipe = self.client.pipeline(transaction=False)
            for entry in entries:
                pipe.lrem(ks.outbox, 1, entry)
            await pipe.execute()

        async with self.errors():
            await _scripts.while_migrating(remove)

    async def wait_children(self, ks: Keyspace, parent: str, gen: str, children: list[str]) -> int:
        """-1: the run lost its task; 0: all ended; n: the parent now waits for n."""
        reply = await self.run_calls([_calls.wait(ks, parent, gen, children)])
        return int(reply[0])

    async def workflow_command(self, ks: Keyspace, wf_id: str, command: str, reason: str) -> str:
        try:
            reply = await self.run_calls([_calls.workflow(ks, wf_id, command, reason)])
        except ScriptError as exc:
            verb = "pause" if command == "pause_running" else command
            _raise_refusal(exc, "workflow", wf_id, verb)
            raise
        return _text(reply[0])

    async def workflow_record(self, ks: Keyspace, wf_id: str) -> dict[bytes, bytes]:
        async with self.errors():
            rec: dict[bytes, bytes] = await self.client.hgetall(ks.workflow(wf_id))
        return rec

    async def task_fields(
        self, ks: Keyspace, task_ids: Sequence[str], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """The same few fields of many task records, in one round trip."""
        async with self.errors():
            # one queue's keys share a slot: a cluster pipeline goes to one node too
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hmget(ks.task(task_id), *fields)
            rows: list[list[bytes | None]] = await pipe.execute()
        return rows

    async def retry(self, ks: Keyspace, task_id: str, reason: str) -> str:
        """Queue a failed, cancelled or expired task again (retry.lua)."""
        try:
            reply = await self.run_calls([_calls.retry(ks, task_id, reason)])
        except ScriptError as exc:
            _raise_refusal(exc, "task", task_id, "retry")
            raise
        return _text(reply[0])

    async def task_event(
        self, ks: Keyspace, task_id: str, gen: str, kind: str, a: str, b: str, c: str = ""
    ) -> bool:
        call = _calls.event(ks, task_id, gen, kind, a, b, c)
        return bool((await self.run_calls([call]))[0])

    async def read_events(
        self, keyspaces: Sequence[Keyspace], last: dict[str, str], block_ms: int
    ) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """New entries of the queues' event streams after `last` ids (queue → id):
        (queue, entry id, fields), oldest first per queue."""
        found: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        async with self.errors():
            if self._blocking is None:
                self._blocking = make_async_client(self.url, cluster=self.cluster)
            # one slot per queue: on a cluster, read them one at a time
            groups = [[ks] for ks in keyspaces] if self.cluster else [list(keyspaces)]
            wait = max(1, block_ms // max(1, len(groups)))
            for group in groups:
                streams = {ks.events: last[ks.queue] for ks in group}
                reply = await self._blocking.xread(streams, count=500, block=wait)
                by_key = {ks.events: ks.queue for ks in group}
                for key, entries in reply or []:
                    queue = by_key[key.decode() if isinstance(key, bytes) else key]
                    for entry_id, fields in entries:
                        found.append((queue, entry_id, fields))
        return found

    async def purge(self, ks: Keyspace, reason: str) -> int:
        """Cancel every task of the queue that waits to run; how many there were."""
        total = 0
        while True:
            n = int((await self.run_calls([_calls.purge(ks, 500, reason)]))[0])
            total += n
            if n < 500:
                return total

    async def trim_events(self, ks: Keyspace, older_than_ms: int) -> None:
        """Drop a queue's events older than the given server time (approximate trim)."""
        async with self.errors():
            await self.client.xtrim(ks.events, minid=older_than_ms, approximate=False)

    async def dead_ids(self, ks: Keyspace, offset: int, limit: int) -> list[str]:
        async with self.errors():
            ids = await self.client.lrange(ks.dead, offset, offset + limit - 1)
        return [i.decode() for i in ids]

    async def set_limits(
        self,
        ks: Keyspace,
        rates: dict[str, str],
        concurrency: dict[str, int],
        clear: tuple[list[str], list[str]],
    ) -> None:
        """Publish the rate and concurrency limits of task names for claim.lua to enforce."""
        rate_key, conc_key = ks.limits
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            if rates:
                pipe.hset(rate_key, mapping=rates)
            if concurrency:
                pipe.hset(conc_key, mapping=concurrency)
            if clear[0]:
                pipe.hdel(rate_key, *clear[0])
            if clear[1]:
                pipe.hdel(conc_key, *clear[1])
            await pipe.execute()

    async def write_state(
        self, ks: Keyspace, task_id: str, gen: str, values: dict[str, bytes], deletes: list[str]
    ) -> bool:
        call = _calls.state(ks, task_id, gen, values, deletes)
        reply = await self.run_calls([call], retry=True)
        return bool(reply[0])

    async def read_state(
        self, ks: Keyspace, task_id: str, limit: int | None = None
    ) -> dict[bytes, bytes]:
        """A task's state values; with `limit`, at most that many (a reader that shows the
        state, like the dashboard, needs no unbounded read of a state with many keys)."""
        key = ks.state(task_id)
        async with self.errors():
            if limit is not None and await self.client.hlen(key) > limit:
                _, part = await self.client.hscan(key, 0, count=limit)
                return dict(list(part.items())[:limit])
            rec: dict[bytes, bytes] = await self.client.hgetall(key)
        return rec

    async def set_queue_paused(self, ks: Keyspace, paused: bool) -> None:
        async with self.errors():
            if paused:
                await self.client.hset(ks.meta, "paused", "1")
            else:
                await self.client.hdel(ks.meta, "paused")
                await self.client.lpush(ks.wake, 1)
                await self.client.ltrim(ks.wake, 0, 0)

    async def queue_paused(self, ks: Keyspace) -> bool:
        async with self.errors():
            return bool(await self.client.hget(ks.meta, "paused") == b"1")

    # --- worker registry (heartbeats, _heartbeat.py) -----------------------------------------

    async def beat(
        self,
        wk: WorkerKeys,
        worker_id: str,
        ttl_ms: int,
        keep_ms: int,
        started_ms: int,
        fields: dict[str, str | int],
    ) -> tuple[int, int]:
        """Register or refresh a worker's record (beat.lua): (server now, started) in ms."""
        call = _calls.beat(wk, worker_id, ttl_ms, keep_ms, started_ms, fields)
        now, started = (await self.run_calls([call], retry=True))[0]
        return int(now), int(started)

    async def unregister_worker(self, wk: WorkerKeys, worker_id: str) -> None:
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(wk.index, worker_id)
            pipe.delete(wk.record(worker_id))
            await pipe.execute()

    async def worker_records(
        self, wk: WorkerKeys, worker_id: str | None = None
    ) -> tuple[int, list[tuple[str, float | None, dict[bytes, bytes]]]]:
        """Server time (ms), and (id, last beat in ms or None, record) for one worker or all
        in the index; a record that expired reads as {}."""
        async with self.errors():
            secs, micros = await self.client.time()
            entries: list[tuple[str, float | None]]
            if worker_id is None:
                scored = await self.client.zrange(wk.index, 0, -1, withscores=True)
                entries = [(_text(m), float(score)) for m, score in scored]
            else:
                entries = [(worker_id, await self.client.zscore(wk.index, worker_id))]
            records: list[dict[bytes, bytes]] = []
            if entries:
                # one {workers} slot: a cluster pipeline goes to one node too
                pipe = self.client.pipeline(transaction=False)
                for wid, _ in entries:
                    pipe.hgetall(wk.record(wid))
                records = await pipe.execute()
        now_ms = int(secs) * 1000 + int(micros) // 1000
        rows = [(wid, score, rec) for (wid, score), rec in zip(entries, records, strict=True)]
        return now_ms, rows

    # --- cron schedules (written by the cron_* scripts, see _scheduler.py) ----------------

    async def schedule_rows(
        self, ck: CronKeys
    ) -> tuple[dict[bytes, bytes], list[tuple[bytes, float]], dict[bytes, bytes]]:
        """Definitions, next ticks and last fired ticks of every schedule (one slot)."""
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(ck.defs)
            pipe.zrange(ck.due, 0, -1, withscores=True)
            pipe.hgetall(ck.fired)
            defs, due, fired = await pipe.execute()
        return defs, due, fired


def _not_found(kind: str, ident: str) -> TaskNotFound:
    return TaskNotFound(f"no {kind} {ident}: it never existed, or it ended and its record expired")


def _refused_in(exc: ScriptError) -> str:
    """The status named by a `SEGUE_INVALID_TRANSITION <status> <command>` reply."""
    return str(exc).rsplit(" ", 2)[-2]


def _raise_refusal(exc: ScriptError, kind: str, ident: str, verb: str) -> None:
    """Raise segue's error for a script's refusal of an operator's command on a task or
    workflow (the one place the script error codes become exceptions); return for any
    other error, which the caller raises as it is."""
    refusal = _refusal(exc, kind, ident, verb)
    if refusal is not None:
        raise refusal from None


def _refusal(exc: ScriptError, kind: str, ident: str, verb: str) -> Exception | None:
    if exc.code == Code.NOT_FOUND:
        return _not_found(kind, ident)
    if exc.code == Code.INVALID_TRANSITION:
        status = _refused_in(exc)
        if verb == "retry":
            return InvalidTransition(
                f"cannot retry task {ident}: it is {status} (only failed, cancelled or "
                "expired tasks are retried)",
                status,
                "retry",
            )
        return InvalidTransition(f"cannot {verb} {kind} {ident}: it is {status}", status, verb)
    if exc.code == Code.DUPLICATE:
        holder = str(exc).rsplit(" ", 1)[-1]
        return DuplicateTask(
            f"cannot retry task {ident}: it is unique and task {holder} is queued or running",
            holder,
        )
    if exc.code == Code.DEPENDENCY_ENDED:
        return InvalidTransition(
            f"cannot retry task {ident}: it ended because a task it depends on did, so it "
            "has no input to run with; retry that task, or its workflow's steps",
            "failed",
            "retry",
        )
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
