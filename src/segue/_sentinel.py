"""Redis Sentinel: the `redis+sentinel://` URL and clients that follow the current primary.

URL form (one form only, checked when Settings are built):

    redis+sentinel://[user:password@]host1[:26379][,host2[:26379]...]/<service>[/<db>]
        [?sentinel_username=...&sentinel_password=...&<option>=...]

The user and password before `@` log in to the data nodes (primary and replicas), like in
`redis://`. The sentinels take their own credentials from `sentinel_username` and
`sentinel_password`, because Sentinel deployments commonly protect the sentinels apart from
the data. `rediss+sentinel://` talks TLS to the sentinels and the data nodes alike, with the
same `ssl_*` options `rediss://` accepts. Other options (`socket_timeout`, ...) go to the data
nodes as they do in `redis://`; the socket ones reach the sentinels too.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from segue import _tls
from segue._errors import ConfigurationError
from segue._redact import mask_url

_parse_url: Any = redis.connection.parse_url  # untyped in redis-py
SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
_OWN_OPTIONS = ("sentinel_username", "sentinel_password")


def is_sentinel_url(url: str | None) -> bool:
    return url is not None and url.split("://", 1)[0] in SCHEMES


@dataclasses.dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the sentinels are, which service they watch, and how to log in to each side."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool
    # keyword arguments of a redis-py connection to a data node (no host or port: the
    # sentinels say where the primary is)
    node: dict[str, Any]
    # keyword arguments of a redis-py connection to a sentinel
    sentinel: dict[str, Any]


def _fail(url: str, problem: str) -> ConfigurationError:
    shown = mask_url(url)
    return ConfigurationError(
        f"Sentinel URL {shown!r} {problem}; the form is "
        "redis+sentinel://[user:password@]host:26379[,host:26379...]/<service>[/<db>]"
    )


def _host_port(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise _fail(url, f"has a malformed sentinel address {item!r}")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _fail(url, f"has a sentinel address without a host ({item!r})")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(url, f"has an invalid sentinel port in {item!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a `redis+sentinel://` URL (ConfigurationError if it is malformed)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in SCHEMES or not sep:
        raise _fail(url, "does not start with redis+sentinel:// or rediss+sentinel://")
    tls = scheme == "rediss+sentinel"
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise _fail(url, "names no sentinel host")
    sentinels = tuple(_host_port(url, item) for item in hosts.split(","))
    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise _fail(url, "names no service (the sentinels' name of the primary)")
    if len(segments) > 2:
        raise _fail(url, "has more than a service name and a database number in its path")
    service = segments[0]
    db_text = segments[1] if len(segments) == 2 else "0"
    if not db_text.isdigit():
        raise _fail(url, f"has database {db_text!r}, which is not a number")

    options = dict(parse_qsl(query, keep_blank_values=True))
    own = {k: options.pop(k) for k in list(options) if k.startswith("sentinel_")}
    unknown = sorted(set(own) - set(_OWN_OPTIONS))
    if unknown:
        raise _fail(url, f"has unknown option {unknown[0]!r} (known: {', '.join(_OWN_OPTIONS)})")
    if not tls and any(k.startswith("ssl") for k in options):
        raise _fail(url, "has ssl_* options, which need the TLS scheme rediss+sentinel://")
    if "db" in options:
        raise _fail(url, "gives the database as ?db=; put it in the path: /<service>/<db>")

    # the data nodes' options are read by redis-py's own URL parser, so that every option
    # means here what it means in redis:// and rediss://
    stand_in = f"{'rediss' if tls else 'redis'}://{userinfo}{at}sentinel-primary/{db_text}"
    if options:
        stand_in += "?" + urlencode(options)
    _tls.options(stand_in)  # TLS options are checked as they are for rediss://
    try:
        node: dict[str, Any] = dict(_parse_url(stand_in))
    except ValueError as exc:
        raise _fail(url, f"has an invalid option: {str(exc).rstrip('.')}") from None
    node.pop("host", None)
    node.pop("port", None)
    node.pop("connection_class", None)
    if tls:
        node["ssl"] = True

    sentinel = {k: v for k, v in node.items() if k.startswith(("socket_", "ssl"))}
    if own.get("sentinel_username"):
        sentinel["username"] = own["sentinel_username"]
    if own.get("sentinel_password"):
        sentinel["password"] = own["sentinel_password"]
    return SentinelTarget(sentinels, service, tls, node, sentinel)


class _AsyncPrimary(redis.asyncio.Redis):
    """The primary's client; closing it closes its connections to the sentinels too."""

    manager: redis.asyncio.sentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager, self.manager = self.manager, None
        if manager is not None:
            await manager.aclose()


class _SyncPrimary(redis.Redis):
    """The primary's client (threads); closing it closes its sentinel connections too."""

    manager: redis.sentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.close()


NO_PRIMARY = (redis.asyncio.sentinel.MasterNotFoundError, redis.sentinel.MasterNotFoundError)


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _judge(service: str, sentinel: Any, masters: Any) -> str | tuple[str, int]:
    """The primary's address from one sentinel's answer, or why it gave none."""
    state = masters.get(service)
    if state is None:
        return f"{_address(sentinel)} monitors no service {service!r}"
    if not state["is_master"] or state["is_sdown"] or state["is_odown"]:
        return f"{_address(sentinel)} sees the primary of {service!r} down"
    return str(state["ip"]), int(state["port"])


def _no_primary(service: str, problems: list[str]) -> Exception:
    unique = list(dict.fromkeys(problems))
    return redis.sentinel.MasterNotFoundError(f"no primary for {service!r}: {'; '.join(unique)}")


class _AsyncSentinels(redis.asyncio.sentinel.Sentinel):
    """redis-py's Sentinel manager, with a failed discovery that says why each sentinel
    gave no primary (redis-py keeps only the exceptions' type names)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        problems: list[str] = []
        for i, sentinel in enumerate(self.sentinels):
            try:
                answer = _judge(service_name, sentinel, await sentinel.sentinel_masters())
            except redis.RedisError as exc:
                answer = str(exc) or type(exc).__name__
            if isinstance(answer, str):
                problems.append(answer)
                continue
            self.sentinels.insert(0, self.sentinels.pop(i))  # ask this one first next time
            return answer
        raise _no_primary(service_name, problems)


class _SyncSentinels(redis.sentinel.Sentinel):
    """The blocking twin of _AsyncSentinels."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        problems: list[str] = []
        for i, sentinel in enumerate(self.sentinels):
            try:
                answer = _judge(service_name, sentinel, sentinel.sentinel_masters())
            except redis.RedisError as exc:
                answer = str(exc) or type(exc).__name__
            if isinstance(answer, str):
                problems.append(answer)
                continue
            self.sentinels.insert(0, self.sentinels.pop(i))
            return answer
        raise _no_primary(service_name, problems)


def no_primary_message(url: str, exc: Exception) -> str:
    """What a user sees when the sentinels give no primary (one sentence, no password)."""
    target = parse_sentinel_url(url)
    hosts = ", ".join(f"{h}:{p}" for h, p in target.sentinels)
    return (
        f"no sentinel at {hosts} named a primary that is up for service {target.service!r} "
        f"({str(exc).removeprefix(f'no primary for {target.service!r}: ')})"
    )


def _sentinel_kwargs(target: SentinelTarget, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    # segue's own socket timeouts apply to the sentinel connections as well; no retries with
    # backoff: the next sentinel in the list is the retry (a certificate or password problem
    # otherwise costs seconds per sentinel before the user hears of it)
    socket = {k: v for k, v in options.items() if k.startswith("socket_")}
    return {**socket, **target.sentinel, "retry": retry}


def async_primary(url: str, **options: Any) -> _AsyncPrimary:
    """An asyncio client that always talks to the service's current primary.

    A lost connection or a READONLY reply (the node was demoted) makes the next command ask
    the sentinels again."""
    target = parse_sentinel_url(url)
    sentinel_class: Any = _AsyncSentinels  # redis-py leaves its constructor untyped
    manager = sentinel_class(
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, options, AsyncRetry(NoBackoff(), 0)),
    )
    client: _AsyncPrimary = manager.master_for(
        target.service, redis_class=_AsyncPrimary, **target.node, **options
    )
    client.manager = manager
    return client


def sync_primary(url: str, **options: Any) -> _SyncPrimary:
    """A blocking client (for threads) that always talks to the service's current primary."""
    target = parse_sentinel_url(url)
    sentinel_class: Any = _SyncSentinels
    manager = sentinel_class(
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, options, SyncRetry(NoBackoff(), 0)),
    )
    client: _SyncPrimary = manager.master_for(
        target.service, redis_class=_SyncPrimary, **target.node, **options
    )
    client.manager = manager
    return client


def fast_url(url: str) -> str:
    """A URL for the FastConnection carrying the data nodes' login, database and TLS
    options, with a placeholder address (its resolver asks the sentinels for the real one)."""
    target = parse_sentinel_url(url)
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    at = "@" if userinfo else ""
    scheme = "rediss" if target.tls else "redis"
    options = [(k, v) for k, v in parse_qsl(parts.query) if not k.startswith("sentinel_")]
    query = f"?{urlencode(options)}" if options else ""
    return f"{scheme}://{userinfo}{at}sentinel-primary:0/{target.node.get('db', 0)}{query}"
