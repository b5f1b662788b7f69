"""Per-task definition options and per-call enqueue options."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
class Limit:
    """A concurrency or rate limit with a budget per key, or one shared by task names.

    `Limit(5, key="tenant")` for `concurrency=`, `Limit("100/m", key="tenant")` for
    `rate_limit=`. `key` names a parameter of the task, or is a function of the enqueue's
    arguments returning the key; `.options(limit_key=...)` sets it per enqueue. The budget
    is per task name, or per `name` when given: every task naming the same limit shares
    it. `weight` is the key's share of turns when keys compete (fairness). Without `key`
    and `name` it is the task-wide limit an int or a rate string gives.
    """

    value: int | str
    key: str | Callable[..., object] | None = None
    name: str | None = None
    weight: int = 1
    burst: int = field(default=1, kw_only=True)

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "|" in self.name):
            raise ConfigurationError(f"Limit name {self.name!r} must be non-empty, without '|'")
        w: object = self.weight
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise ConfigurationError(f"Limit weight must be an int >= 1, not {self.weight!r}")
        if self.burst < 1:
            raise ConfigurationError("Limit burst must be >= 1")

    @property
    def keyed(self) -> bool:
        return self.key is not None or self.name is not None


ConcurrencyLimit = int | Limit | tuple[int | Limit, ...] | None
RateLimit = str | Limit | tuple[str | Limit, ...] | None


@dataclass(frozen=True, slots=True)
class Limits:
    """A task's limits split in two: task-wide ones (per task name, as before) and the
    keyed ones, which share one key and one limit name (its lane, claim.lua)."""

    concurrency: int | None = None
    rate: str | None = None
    burst: int = 1
    keyed_concurrency: int = 0
    keyed_rate: str | None = None
    keyed_burst: int = 1
    key: str | Callable[..., object] | None = None
    limit_name: str | None = None
    weight: int = 1
    has_keyed: bool = False

    def spec(self, name: str) -> str:
        """The keyed limits as claim.lua reads them under the limit name:
        "<concurrency> <tokens per ms> <burst> <weight>" (0: none)."""
        per_ms = parse_rate(self.keyed_rate, name) / 1000 if self.keyed_rate else 0.0
        return f"{self.keyed_concurrency} {per_ms!r} {self.keyed_burst} {self.weight}"


def split_limits(name: str, concurrency: object, rate: object, rate_burst: int) -> Limits:
    """Refuse limits that do not fit together; the task-wide and keyed parts apart."""
    found: dict[str, object] = {}
    keyed: list[Limit] = []

    def one(kind: str, value: object) -> None:
        if isinstance(value, Limit):
            if value.keyed:
                if ("k" + kind) in found:
                    raise ConfigurationError(f"task {name}: two keyed {kind} limits")
                found["k" + kind] = value
                keyed.append(value)
                return
            value = value.value
        if kind in found:
            raise ConfigurationError(f"task {name}: two task-wide {kind} limits")
        found[kind] = value

    for kind, given in (("concurrency", concurrency), ("rate_limit", rate)):
        if given is None:
            continue
        for value in given if isinstance(given, tuple) else (given,):
            one(kind, value)
    conc, kconc = found.get("concurrency"), found.get("kconcurrency")
    for c in (conc, kconc.value if isinstance(kconc, Limit) else None):
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ConfigurationError(f"task {name}: concurrency must be >= 1 (an int), not {c!r}")
    rate_v, krate = found.get("rate_limit"), found.get("krate_limit")
    for r in (rate_v, krate.value if isinstance(krate, Limit) else None):
        if r is not None:
            if not isinstance(r, str):
                raise ConfigurationError(f"task {name}: rate_limit {r!r} is not a string")
            parse_rate(r, name)
    if len(keyed) == 2 and (keyed[0].key, keyed[0].name) != (keyed[1].key, keyed[1].name):
        raise ConfigurationError(
            f"task {name}: its keyed concurrency and rate limits must have the same key= "
            "and name= (a task has one limit key)"
        )
    first = keyed[0] if keyed else None
    return Limits(
        concurrency=conc if isinstance(conc, int) else None,
        rate=rate_v if isinstance(rate_v, str) else None,
        burst=rate_burst,
        keyed_concurrency=kconc.value if isinstance(kconc, Limit) else 0,  # type: ignore[arg-type]
        keyed_rate=krate.value if isinstance(krate, Limit) else None,  # type: ignore[arg-type]
        keyed_burst=krate.burst if isinstance(krate, Limit) else 1,
        key=first.key if first else None,
        limit_name=first.name if first else None,
        weight=max((k.weight for k in keyed), default=1),
        has_keyed=first is not None,
    )


def lane_of(
    opts: TaskOptions,
    arguments: Callable[[], Mapping[str, object]],
    args: tuple[object, ...],
    kwargs: Mapping[str, object],
    override: object,
) -> str:
    """The lane a task waits in: "<limit name>|<key>", or '' without a limit key.
    `arguments` binds the call to the task's parameters (for a key naming one)."""
    lim = opts.limits
    if override is not None:
        key: object = override
    elif lim.key is None:
        if not lim.has_keyed:
            return ""
        key = ""  # a named limit without a key: one budget shared by its names
    elif callable(lim.key):
        key = lim.key(*args, **kwargs)
    else:
        bound = arguments()
        if lim.key not in bound:
            raise ConfigurationError(
                f"task {opts.name}: its limit key names parameter {lim.key!r}, which this "
                "call does not pass"
            )
        key = bound[lim.key]
    return f"{lim.limit_name or opts.name}|{check_limit_key(key)}"


def check_limit_key(key: object) -> str:
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise ConfigurationError(f"a limit key must be a string or an int, not {key!r}")
    text = str(key)
    if len(text) > 200 or any(not c.isprintable() for c in text):
        raise ConfigurationError(
            f"limit key {text[:40]!r} must be at most 200 printable characters"
        )
    return text


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
    rate_limit: RateLimit = None
    rate_burst: int = 1
    concurrency: ConcurrencyLimit = None
    max_pauses: int | None = 100  # Pauses in a row without progress; None: no limit
    version: int = 1  # the code's version of the task: tasks carry it (versions.md)
    migrate: Mapping[int, Migration] | None = None
    executor: Executor = "thread"
    limits: Limits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_priority(self.priority)
        self._check_versions()
        if self.executor not in ("thread", "process"):
            raise ConfigurationError(
                f"task {self.name}: executor must be 'thread' or 'process', not {self.executor!r}"
            )
        if self.rate_burst < 1:
            raise ConfigurationError(f"task {self.name}: rate_burst must be >= 1")
        limits = split_limits(self.name, self.concurrency, self.rate_limit, self.rate_burst)
        object.__setattr__(self, "limits", limits)
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
    keyed: dict[str, str] = field(default_factory=dict)  # limit name -> Limits.spec
    # task name -> its keyed limit's lane for a call by name (enqueue.lua): "<limit name>|"
    # without a key, "<limit name>" with one (the call's limit_key= completes it)
    lanes: dict[str, str] = field(default_factory=dict)
    lanes_clear: list[str] = field(default_factory=list)  # names without a keyed limit


def limit_tables(options: Iterable[TaskOptions]) -> LimitTables:
    tables = LimitTables({}, {}, ([], []))
    for opts in options:
        lim = opts.limits
        if lim.rate is not None:
            per_ms = parse_rate(lim.rate, opts.name) / 1000
            tables.rates[opts.name] = f"{per_ms!r} {lim.burst}"
        else:
            tables.clear[0].append(opts.name)
        if lim.concurrency is not None:
            tables.concurrency[opts.name] = lim.concurrency
        else:
            tables.clear[1].append(opts.name)
        if lim.has_keyed:
            limit = lim.limit_name or opts.name
            tables.keyed[limit] = lim.spec(opts.name)
            tables.lanes[opts.name] = limit if lim.key is not None else limit + "|"
        else:
            tables.lanes_clear.append(opts.name)
    return tables


def shard_limits(t: LimitTables, n: int) -> tuple[dict[str, str], dict[str, int]]:
    """One shard's share of task-wide limits over `n` shards (docs/sharding.md): the rate
    divided by n (burst kept), the concurrency divided by n rounded up, so at least 1."""
    rates = {}
    for name, text in t.rates.items():
        per_ms, _, burst = text.partition(" ")
        rates[name] = f"{float(per_ms) / n!r} {burst}"
    return rates, {name: -(-c // n) for name, c in t.concurrency.items()}


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
