"""Cron expressions: parsed and checked when declared, and the ticks they make in a time zone.

Ticks are computed in the schedule's local wall time and mapped to instants (UTC ms), so
that daylight-saving changes behave like a wall clock that no tick may run backwards on:

- a local time repeated when clocks go back fires once, at its first occurrence (the wall
  times are walked in order, each mapped to its earlier instant, and the next tick must lie
  after the previous one in real time);
- a local time skipped when clocks go forward fires at the instant it would have had
  before the change (02:30 in a gap from 02:00 to 03:00 fires at 03:30), once.

Parsing uses croniter; nothing here talks to the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from ulid import ULID

from segue._errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from segue._task import Signature

# Options that make no sense for a call repeated at every tick.
_REFUSED = ("delay", "at", "key", "after", "on_failure", "optional")

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Walking past wall times the clock already passed costs one step each: at most an hour of
# one-second ticks in a repeated hour; the bound only guards against a runaway loop.
_MAX_STEPS = 100_000
_ONE_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Cron:
    """A checked cron expression in a time zone (None: UTC)."""

    expr: str
    tz: str | None
    fields: str  # the expression with its alias expanded: five fields, or six (seconds first)
    zone: tzinfo

    @property
    def spec(self) -> str:
        """What decides the ticks: a schedule whose spec is unchanged keeps its next tick."""
        return f"{self.fields}|{self.tz or 'UTC'}"

    def next_after(self, after_ms: int) -> int | None:
        """The first tick later than `after_ms` (UTC ms), or None if there is none."""
        return next(self.ticks_after(after_ms), None)

    def ticks_after(self, after_ms: int) -> Iterator[int]:
        """The ticks later than `after_ms` (UTC ms), in order, each later than the one before."""
        it = croniter(self.fields, _wall(after_ms, self.zone), second_at_beginning=True)
        last = after_ms
        skipped = 0
        while skipped < _MAX_STEPS:
            try:
                candidate: datetime = it.get_next(datetime)
            except (ValueError, OverflowError):  # croniter found no later date
                return
            ms = _instant(candidate, self.zone)
            if ms > last:
                yield ms
                last = ms
                skipped = 0
            else:
                # a wall time whose instant the clock already passed (a repeated hour, or
                # the times after a skipped one that map onto it): it fired, or will not
                skipped += 1


def _wall(ms: int, zone: tzinfo) -> datetime:
    """The naive local wall time of an instant."""
    local = datetime.fromtimestamp(ms // 1000, zone).replace(tzinfo=None)
    return local + (ms % 1000) * _ONE_MS


def _instant(wall: datetime, zone: tzinfo) -> int:
    """UTC ms of a naive local wall time; fold=0 picks the earlier of a repeated time."""
    return round(wall.replace(tzinfo=zone).timestamp() * 1000)


def parse(expr: str, tz: str | None = None) -> Cron:
    """Check a cron expression and time zone; ConfigurationError names what is wrong.

    Five fields (minute hour day month weekday), or six with seconds first; month and day
    names (`jan`, `mon-fri`); the aliases @yearly, @annually, @monthly, @weekly, @daily,
    @midnight and @hourly.
    """
    if not isinstance(expr, str):
        raise ConfigurationError(f"cron expression {expr!r} must be a string")
    text = " ".join(expr.split())
    if text.startswith("@"):
        fields = ALIASES.get(text.lower())
        if fields is None:
            raise ConfigurationError(
                f"cron expression {expr!r} is invalid: unknown alias; known: {', '.join(ALIASES)}"
            )
    else:
        fields = text
    count = len(fields.split())
    if count not in (5, 6):
        raise ConfigurationError(
            f"cron expression {expr!r} is invalid: it has {count} field(s); give five "
            "(minute hour day month weekday) or six (seconds first)"
        )
    zone = _zone(expr, tz)
    cron = Cron(expr=expr, tz=tz, fields=fields, zone=zone)
    try:
        croniter(fields, datetime(2000, 1, 1), second_at_beginning=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cron expression {expr!r} is invalid: {exc}") from None
    if cron.next_after(0) is None:
        raise ConfigurationError(f"cron expression {expr!r} is invalid: it never matches a date")
    return cron


def _zone(expr: str, tz: Any) -> tzinfo:
    if tz is None:
        return UTC
    if not isinstance(tz, str):
        raise ConfigurationError(
            f"time zone {tz!r} of cron {expr!r} must be an IANA name such as 'Europe/Lisbon'"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"time zone {tz!r} of cron {expr!r} is unknown ({exc}); give an IANA name such "
            "as 'Europe/Lisbon', or None for UTC"
        ) from None


def check_schedule_id(sid: str) -> str:
    if not sid or any(c.isspace() for c in sid):
        raise ConfigurationError(f"schedule id {sid!r} must be non-empty, without whitespace")
    return sid


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as declared: the call to enqueue at each tick, and when."""

    id: str
    sig: Signature[Any]
    cron: Cron
    catch_up: bool
    # skip a tick while the run of an earlier one is queued or running (cron.skipped)
    unique: bool = False
    # seconds after its tick that a tick's run may start; later, it ends EXPIRED
    expire: float | None = None


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as stored on the server (`await app.schedules()`).

    `next_run` and `last_tick` are in the schedule's time zone; `next_run` is None for a
    schedule that has no future tick. A `paused` schedule skips its ticks (neither fired
    nor caught up later) until resumed; `last_skipped` is the last tick it skipped.
    `last_task_id` is the id of the task the last fired tick enqueued. A `unique` schedule
    skips a tick while the run of an earlier tick is queued or running; `last_overlapped`
    is the last tick it skipped so. `expire`: seconds after its tick that a tick's run may
    still start (later it ends EXPIRED); None, no limit.
    """

    id: str
    task: str
    queue: str
    cron: str
    tz: str | None
    catch_up: bool
    next_run: datetime | None
    last_tick: datetime | None
    paused: bool = False
    last_skipped: datetime | None = None
    last_task_id: str | None = None
    unique: bool = False
    expire: float | None = None
    last_overlapped: datetime | None = None


def make_schedule(
    sig: Signature[Any],
    cron: str,
    tz: str | None,
    sid: str | None,
    catch_up: bool,
    *,
    unique: bool = False,
    expire: float | timedelta | None = None,
) -> Schedule:
    """Check a schedule before anything is written: expression, zone, id, the call itself."""
    parsed = parse(cron, tz)
    if not isinstance(unique, bool):
        raise ConfigurationError(f"schedule of {sig.task.name}: unique must be True or False")
    seconds = expire.total_seconds() if isinstance(expire, timedelta) else expire
    if seconds is not None and not seconds > 0:
        raise ConfigurationError(
            f"schedule of {sig.task.name}: expire must be a positive number of seconds or None"
        )
    refused = sorted(k for k in _REFUSED if k in sig.opts)
    if refused:
        raise ConfigurationError(
            f"schedule of {sig.task.name}: option(s) {', '.join(refused)} do not apply to a "
            "call enqueued at every tick"
        )
    sig.task.check_args(sig.args, sig.kwargs)
    sid = check_schedule_id(sid if sid is not None else f"s-{ULID()}")
    return Schedule(id=sid, sig=sig, cron=parsed, catch_up=catch_up, unique=unique, expire=seconds)
