"""Settings: one frozen object holds every knob; later capabilities add fields here."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from segue._blobs import PayloadStore  # noqa: TC001 (from_env resolves the hints at run time)
from segue._errors import ConfigurationError
from segue._eventloop import EventLoop, check_event_loop
from segue._options import Durability, check_durability

_ENV_PREFIX = "SEGUE_"
_URL_FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://... (TLS), unix:///path/to/socket, "
    "redis+cluster://host:port[,host:port...] or redis+sentinel://host[:port]/service"
)
_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)


def mask_url(url: str) -> str:
    """The URL with its password (before `@`, and any `*password=` option) shown as ***."""
    head, at, tail = url.rpartition("@")
    if at:  # user:password@host: keep the user, hide what follows its colon
        scheme, sep, userinfo = head.rpartition("//")
        user, colon, _ = userinfo.partition(":")
        url = f"{scheme}{sep}{user}{colon}{'***' if colon else ''}@{tail}"
    return re.sub(r"(password=)[^&]*", r"\1***", url)


def check_url(url: str, setting: str = "redis_url") -> None:
    """Raise ConfigurationError unless `url` has one of the forms segue connects to."""
    scheme, sep, _ = url.partition("://")
    problem = None
    if not sep or scheme.lower() not in _SCHEMES:
        problem = "has no redis://, rediss://, unix://, +cluster or +sentinel scheme"
    elif scheme.lower().endswith("+sentinel"):
        return  # its own parser names the exact problem (service, sentinel host or port)
    elif scheme.lower() == "unix":
        if not urlsplit(url).path:
            problem = "names no socket path"
    else:
        try:
            hosts = urlsplit(url).netloc.rsplit("@", 1)[-1]
            ports = [urlsplit(f"//{h}").port for h in hosts.split(",")]
        except ValueError:
            hosts, ports = "", []
        if not hosts or not ports:
            problem = "names no host, or a port that is not a number"
    if problem is not None:
        raise ConfigurationError(
            f"{setting} {mask_url(url)!r} {problem}; accepted forms: {_URL_FORMS}"
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """Connection, worker and lifetime settings of an App.

    Durations are in seconds, sizes in bytes. `redis_url=None` means the embedded server.
    """

    redis_url: str | None = None
    prefix: str = "segue"
    queue: str = "default"
    concurrency: int = 16
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    pause_grace_seconds: float = 10.0
    max_deliveries: int = 3
    max_payload_bytes: int = 1024 * 1024
    max_result_bytes: int = 1024 * 1024
    # tasks waiting to run in one queue (queued, scheduled, waiting, paused); None: no bound
    max_queue_length: int | None = None
    result_ttl_seconds: float | None = 3600.0
    dead_letter_cap: int = 10_000
    unknown_task_max_releases: int = 3
    unknown_task_window_seconds: float = 300.0
    # a worker whose code of a task is older than the task's version releases it again
    # after a delay doubling from 1 s up to this; never counted as an unknown-task release
    newer_version_backoff_seconds: float = 30.0
    home: Path | None = None
    embedded_idle_seconds: float = 60.0
    heartbeat_seconds: float = 5.0
    # a hot-path command with no reply this long drops its connection (a server gone without
    # a reset: a dead host, a partition) instead of waiting for TCP to give up (~15 min)
    reply_timeout_seconds: float = 30.0
    # workers compare each queue's records with its structures this often (_reconcile.py)
    reconcile_seconds: float = 10.0
    # events older than this are trimmed by the workers (about 10,000 per queue at most)
    events_keep_seconds: float | None = 86400.0
    # what an enqueue waits for before it returns: "memory" (nothing more), "fsync" (the
    # server's append-only file), "replicated" (durability_replicas replicas); _durability.py
    durability: Durability = "memory"
    durability_replicas: int = 1
    durability_timeout_seconds: float = 1.0
    # a durable sleep (ctx.sleep) shorter than this sleeps in the worker, still journaled;
    # a longer one ends the run and frees its slot until the task is due
    sleep_inline_seconds: float = 5.0
    # a task's output stream (ctx.stream) keeps about this many entries (each a batch of
    # chunks), trimming the oldest; and outlives the task's end by at least this long
    max_stream_entries: int = 100_000
    stream_linger_seconds: float = 300.0
    # signals a task may hold that no ctx.wait_signal has taken yet (handle.signal past it
    # raises SignalBufferFull); Temporal's limit per workflow
    max_pending_signals: int = 2000
    # child processes a worker runs `executor="process"` tasks in; None: the CPUs it may use
    process_pool_size: int | None = None
    # the worker's event loop: "asyncio", or "uvloop" (opt-in, the `fast` extra)
    event_loop: EventLoop = "asyncio"
    # payloads by reference (docs/payloads.md): an encoded argument payload, result or
    # ctx.state value over offload_bytes goes to payload_store (None: the Redis chunk
    # store) and the record keeps a reference; None: never. max_offload_bytes bounds such a
    # value, as max_payload_bytes / max_result_bytes bound what a record holds.
    offload_bytes: int | None = None
    max_offload_bytes: int = 64 * 1024 * 1024
    payload_store: PayloadStore | None = None

    def __post_init__(self) -> None:
        home: Any = self.home  # typed Path, but App(home="...") passes a str: take both
        if isinstance(home, str):
            object.__setattr__(self, "home", Path(home))
        if self.redis_url is not None:
            check_url(self.redis_url)
        if not self.prefix or not self.prefix.replace("_", "").replace("-", "").isalnum():
            raise ConfigurationError(
                f"prefix {self.prefix!r} must be a bare word (letters, digits, - or _)"
            )
        if self.max_pending_signals < 1:
            raise ConfigurationError(
                f"max_pending_signals must be 1 or more, not {self.max_pending_signals}"
            )
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be positive, not {self.lease_seconds}")
        if self.heartbeat_seconds <= 0:
            raise ConfigurationError(
                f"heartbeat_seconds must be positive, not {self.heartbeat_seconds}"
            )
        if self.sentinel:
            from segue._sentinel import parse_sentinel_url

            parse_sentinel_url(self.redis_url or "")  # a malformed URL fails here, not later
        if self.max_stream_entries < 1:
            raise ConfigurationError(
                f"max_stream_entries must be at least 1, not {self.max_stream_entries}"
            )
        if self.stream_linger_seconds < 0:
            raise ConfigurationError(
                f"stream_linger_seconds must not be negative, not {self.stream_linger_seconds}"
            )
        if self.reply_timeout_seconds <= 0:
            raise ConfigurationError(
                f"reply_timeout_seconds must be positive, not {self.reply_timeout_seconds}"
            )
        if self.newer_version_backoff_seconds <= 0:
            raise ConfigurationError(
                "newer_version_backoff_seconds must be positive, not "
                f"{self.newer_version_backoff_seconds}"
            )
        if self.reconcile_seconds <= 0:
            raise ConfigurationError(
                f"reconcile_seconds must be positive, not {self.reconcile_seconds}"
            )
        check_durability(self.durability, "durability")
        check_event_loop(self.event_loop)
        if self.durability_replicas < 1:
            raise ConfigurationError(
                f"durability_replicas must be at least 1, not {self.durability_replicas}"
            )
        if self.durability_timeout_seconds <= 0:
            raise ConfigurationError(
                "durability_timeout_seconds must be positive, not "
                f"{self.durability_timeout_seconds}"
            )
        for name in ("max_payload_bytes", "max_result_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.offload_bytes is not None and not (
            1 <= self.offload_bytes <= min(self.max_payload_bytes, self.max_result_bytes)
        ):
            raise ConfigurationError(
                f"offload_bytes must be between 1 and max_payload_bytes / max_result_bytes "
                f"(what a record may hold), or None; not {self.offload_bytes}"
            )
        if self.max_offload_bytes < 1:
            raise ConfigurationError(
                f"max_offload_bytes must be at least 1, not {self.max_offload_bytes}"
            )
        if self.max_queue_length is not None and self.max_queue_length < 1:
            raise ConfigurationError(
                f"max_queue_length must be at least 1 (or None for no bound), "
                f"not {self.max_queue_length}"
            )
        if self.process_pool_size is not None and self.process_pool_size < 1:
            raise ConfigurationError(
                f"process_pool_size must be at least 1 (or None: the CPUs this process may "
                f"use), not {self.process_pool_size}"
            )
        if self.max_deliveries < 1:
            raise ConfigurationError(
                f"max_deliveries must be at least 1, not {self.max_deliveries}"
            )

    def __repr__(self) -> str:
        from segue._redact import mask_url

        shown = [
            f"{f.name}={mask_url(v) if f.name == 'redis_url' and v else v!r}"
            for f in fields(self)
            if f.repr
            for v in (getattr(self, f.name),)
        ]
        return f"Settings({', '.join(shown)})"

    @property
    def cluster(self) -> bool:
        """True when the URL names a Redis Cluster (scheme `redis+cluster://`)."""
        return self.redis_url is not None and self.redis_url.startswith(
            ("redis+cluster://", "rediss+cluster://")
        )

    @property
    def sentinel(self) -> bool:
        """True when the URL names a Sentinel-managed primary (`redis+sentinel://`)."""
        from segue._sentinel import is_sentinel_url

        return is_sentinel_url(self.redis_url)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Settings:
        """Settings for a server URL: `redis://`, `rediss://`, `unix://`, `redis+cluster://`
        or `redis+sentinel://`."""
        return cls(redis_url=url, **overrides)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `SEGUE_*` variables (e.g. SEGUE_REDIS_URL, SEGUE_CONCURRENCY)."""
        env = os.environ if environ is None else environ
        # this module's names: the class says it is segue's (see __init__), not this module's
        hints = get_type_hints(cls, globalns=globals())
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_ENV_PREFIX + f.name.upper())
            if raw is None or f.name in overrides or f.name == "payload_store":
                continue
            if f.name == "redis_url" and raw:
                check_url(raw, _ENV_PREFIX + "REDIS_URL")
            values[f.name] = _parse(f.name, hints[f.name], raw)
        values.update(overrides)
        return cls(**values)


def _parse(name: str, hint: Any, raw: str) -> Any:
    text = str(hint)
    try:
        if raw.lower() in ("none", "") and "None" in text:
            return None
        if "int" in text and "float" not in text:
            return int(raw)
        if "float" in text:
            return float(raw)
        if "Path" in text:
            return Path(raw)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {_ENV_PREFIX}{name.upper()}={raw!r} is not a valid {text}"
        ) from None
    return raw
