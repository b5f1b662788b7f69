"""Per-task definition options and per-call enqueue options."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from segue._errors import ConfigurationError
from segue._keys import PRIORITIES

Priority = Literal["low", "normal", "high"]
# where a sync task runs in the worker: a thread (default) or a child process (_procpool.py)
Executor = Literal["thread", "process"]
Backoff = float | Callable[[int], float]
OnDuplicate = Literal["return", "raise"]
# what its parent's end, pause or cancel does to a sub-task (_forward.py, "Cascades")
ParentEnd = Literal["cancel", "abandon"]
# what an enqueue waits for before it returns (_durability.py)
Durability = Literal["memory", "fsync", "replicated"]
# unique=True: one live task per task name; a function of the arguments: one per key
Unique = bool | Callable[..., str]
# migrate={old version: upgrade}: upgrade(state) is the task's ctx.state at old version + 1
Migration = Callable[[dict[str, Any]], dict[str, Any]]
_DURABILITY = ("memory", "fsync", "replicated")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Options fixed when a task is declared (`@app.task(...)`)."""

    name: str
    queue: str | None = None  # None: the App's default queue at enqueue time
    timeout: float | None = None
    max_tries: int = 3
    retry_backoff: Backoff = 1.0
    ttl: float | None = 3600.0
    priority: Priority = "normal"
    silent: bool = False
    unique: Unique = False
    on_duplicate: OnDuplicate = "return"
    expire: float | timedelta | None = None
    rate_limit: str | None = None
    rate_burst: int = 1
    concurrency: int | None = None
    max_pauses: int | None = 100  # Pauses in a row without progress; None: no limit
    version: int = 1  # the code's version of the task: tasks carry it (versions.md)
    migrate: Mapping[int, Migration] | None = None
    executor: Executor = "thread"

    def __post_init__(self) -> None:
        check_priority(self.priority)
        self._check_versions()
        if self.executor not in ("thread", "process"):
            raise ConfigurationError(
                f"task {self.name}: executor must be 'thread' or 'process', not {self.executor!r}"
            )
        if self.rate_limit is not None:
            parse_rate(self.rate_limit, self.name)
        if self.rate_burst < 1:
            raise ConfigurationError(f"task {self.name}: rate_burst must be >= 1")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigurationError(f"task {self.name}: concurrency must be >= 1 or None")
        if self.on_duplicate not in ("return", "raise"):
            raise ConfigurationError(
                f"task {self.name}: on_duplicate must be 'return' or 'raise', "
                f"not {self.on_duplicate!r}"
            )
        if self.max_tries < 1:
            raise ConfigurationError(f"task {self.name}: max_tries must be >= 1")
        most: object = self.max_pauses
        if most is not None and (not isinstance(most, int) or isinstance(most, bool) or most < 0):
            raise ConfigurationError(
                f"task {self.name}: max_pauses must be an int >= 0 or None, not {self.max_pauses!r}"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"task {self.name}: timeout must be positive or None")
        if self.ttl is not None and self.ttl < 0:
            raise ConfigurationError(f"task {self.name}: ttl must be >= 0 or None")

    def _check_versions(self) -> None:
        v: object = self.version
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigurationError(
                f"task {self.name}: version must be an int >= 1, not {self.version!r}"
            )
        chain: Any = self.migrate or {}  # checked as the user passed it, not as typed
        for old, fn in chain.items():
            if not isinstance(old, int) or isinstance(old, bool) or not 1 <= old < v:
                raise ConfigurationError(
                    f"task {self.name}: migrate={{{old!r}: ...}}: each key is a version a "
                    f"migration upgrades from, an int from 1 to {v - 1} (version={v})"
                )
            if not callable(fn):
                raise ConfigurationError(
                    f"task {self.name}: migrate[{old}] must be a function state -> state"
                )

    def migrations(self, since: int) -> list[Migration] | None:
        """The upgrades that take state of version `since` to this version, in order (none
        when it is this version); None when a link of the chain is missing."""
        chain = self.migrate or {}
        steps = [chain.get(v) for v in range(since, self.version)]
        if any(fn is None for fn in steps):
            return None
        return [fn for fn in steps if fn is not None]

    def backoff(self, tries: int) -> float:
        """Seconds to wait before the next try after `tries` runs failed.

        A number is the base of an exponential backoff with full jitter between half and
        the whole step (capped at one hour); a callable gets the try count and decides.
        """
        if callable(self.retry_backoff):
            delay: float = self.retry_backoff(tries)
            return max(0.0, float(delay))
        step = min(3600.0, float(self.retry_backoff) * 2.0 ** (tries - 1))
        return step * random.uniform(0.5, 1.0)


def parse_rate(text: str, name: str) -> float:
    """`"100/m"` → tasks per second; s, m, h and d are the units."""
    count, _, unit = text.partition("/")
    try:
        per = float(count) / _RATE_UNITS[unit.strip() or "s"]
    except (KeyError, ValueError):
        raise ConfigurationError(
            f"task {name}: rate_limit {text!r} is not '<count>/<s|m|h|d>' (e.g. '100/m')"
        ) from None
    if per <= 0:
        raise ConfigurationError(f"task {name}: rate_limit {text!r} must be positive")
    return per


@dataclass(frozen=True, slots=True)
class LimitTables:
    """The limits a worker's code declares, as claim.lua reads them: rate per name as
    "<tasks per ms> <burst>", concurrency per name, and the names whose limit is gone (a
    deploy removed it, so the tables on the server must forget it)."""

    rates: dict[str, str]
    concurrency: dict[str, int]
    clear: tuple[list[str], list[str]]


def limit_tables(options: Iterable[TaskOptions]) -> LimitTables:
    tables = LimitTables({}, {}, ([], []))
    for opts in options:
        if opts.rate_limit is not None:
            per_ms = parse_rate(opts.rate_limit, opts.name) / 1000
            tables.rates[opts.name] = f"{per_ms!r} {opts.rate_burst}"
        else:
            tables.clear[0].append(opts.name)
        if opts.concurrency is not None:
            tables.concurrency[opts.name] = opts.concurrency
        else:
            tables.clear[1].append(opts.name)
    return tables


def check_key(key: object) -> str:
    """An idempotency key becomes part of the task id, and task ids travel space- and
    `|`-separated in the dependency lists of graph.lua: a key with either could name
    other tasks as dependencies, so it is refused."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"key= must be a non-empty string, not {key!r}")
    bad = next((c for c in key if c.isspace() or c == "|" or not c.isprintable()), None)
    if bad is not None:
        raise ConfigurationError(
            f"key={key!r} holds {bad!r}; an idempotency key may not contain whitespace, "
            "'|' or control characters"
        )
    return key


def check_priority(priority: str) -> str:
    if priority not in PRIORITIES:
        raise ConfigurationError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    return priority


def check_durability(level: str, where: str) -> Durability:
    if level not in _DURABILITY:
        raise ConfigurationError(
            f"{where}: durability {level!r} is not one of {', '.join(_DURABILITY)}"
        )
    return level  # type: ignore[return-value]


def seconds(value: float | timedelta | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value
