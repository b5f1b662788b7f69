"""The step journal of a durable function: what `ctx.step` and `ctx.sleep` remember.

Each entry is a field `~j:<name>` of the task's state hash, so the journal lives and dies
with `ctx.state` (deleted when the task ends); one fenced script call (journal.lua) writes
an entry, the record's summary line (TaskInfo.steps) and the progress mark the claim script
reads when a run is lost. Entries are JSON objects, so a worker that predates the journal
reads them as plain state values:

    {"o": <result>}                                  a step that returned
    {"e": {"type", "message", "traceback"}, "t": n}  a step that raised, on try n
    {"due": <ms since the epoch>}                    a durable sleep's due time
    {"id": <task id>}                                a sub-task ctx.enqueue started
    {"r": [<result>, ...]}                           the results a ctx.wait_for returned

A run that finds an entry for a name returns (or raises) what it holds instead of calling
the step's function: that is a replay. A failed step's entry holds only for its own try:
the next try runs the step again.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
import typing
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from segue import _clock
from segue._codec import TypedDecoder, encode
from segue._errors import LeaseLost, StepFailed
from segue._faults import faultpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from segue._broker import Broker
    from segue._keys import Keyspace

T = TypeVar("T")


class RunControl(Protocol):
    """The run a journal belongs to (_run_control.RunControl, which sits above this module)."""

    broker: Broker
    ks: Keyspace
    gen: str

    async def call(self, what: str, send: Callable[[], Awaitable[T]]) -> T: ...


FIELD = "~j:"  # the state hash's journal fields; ctx.state hides and refuses them
_entry = msgspec.json.Decoder(dict[str, msgspec.Raw])
_in_step: ContextVar[str | None] = ContextVar("segue_in_step", default=None)


# Set by `app.drain(advance=...)` for its duration: a durable sleep due before this moment
# (wall clock) counts as over, so a test of a three-day sleep runs at once.
_skipped_until = 0.0


def now() -> float:
    """The journal's clock: the wall clock, or later while a drain skips time."""
    return max(_clock.wall(), _skipped_until)


def skip_time(until: float) -> None:
    global _skipped_until
    _skipped_until = until


async def advance_sleeps(broker: Broker, queues: list[str], seconds: float) -> int:
    """Make due now every SUSPENDED task of `queues` due within `seconds`, and every wait
    for a signal whose deadline is within it: the helper of `app.drain(advance=...)`.
    Returns how many it moved."""
    horizon = await broker.reads.server_time_ms() + round(seconds * 1000)
    moved = 0
    for queue in queues:
        ks = broker.keyspace(queue)
        client = broker.client
        ids = await client.zrangebyscore(ks.scheduled, "-inf", horizon)
        for raw in ids:
            task_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            status = await client.hget(ks.task(task_id), "s")
            if status in (b"suspended", "suspended"):
                await client.zadd(ks.scheduled, {task_id: 0})
                moved += 1
        # a ctx.wait_signal whose deadline falls within: its timeout comes now (claim.lua)
        for raw in await client.zrangebyscore(ks.signal_due, 1, horizon):
            await client.zadd(ks.signal_due, {raw: 0})
            moved += 1
    return moved


class Sleeping(BaseException):
    """Raised by a durable sleep whose rest is not short: the run ends at once, SUSPENDED
    without spending a try, and the task is due again in `delay_ms`. A BaseException, so
    that `except Exception` in task code does not swallow it."""

    def __init__(self, delay_ms: int) -> None:
        super().__init__(f"sleeping for {delay_ms} ms")
        self.delay_ms = delay_ms


@functools.cache
def _decoder(fn: Callable[..., Any]) -> TypedDecoder:
    """The decoder of a step function's return annotation (plain JSON without one)."""
    try:
        annotation = typing.get_type_hints(fn).get("return", inspect.Parameter.empty)
    except Exception:  # an annotation that does not resolve: plain JSON, as for none
        annotation = inspect.Parameter.empty
    if inspect.iscoroutinefunction(fn) and typing.get_origin(annotation) is typing.Coroutine:
        annotation = typing.get_args(annotation)[-1]
    return TypedDecoder(annotation)


def in_step() -> str | None:
    """The name of the step whose function runs here, if any."""
    return _in_step.get()


def enter_step(name: str) -> Any:
    return _in_step.set(name)


def leave_step(token: Any) -> None:
    _in_step.reset(token)


class TaskLog(logging.LoggerAdapter[logging.Logger]):
    """ctx.log: its lines carry the task id, and a replay's are not logged again."""

    journal: Journal | None = None

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        # a replay of a durable function says again what its first run said: not logged
        if self.journal is not None and self.journal.replaying:
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('task_id')}] {msg}", kwargs


class Journal:
    """One run's view of its task's journal: loaded once, then read and appended to."""

    __slots__ = (
        "_counts",
        "_entries",
        "_limit",
        "_names",
        "_replayed",
        "_run",
        "_state_found",
        "_task_id",
        "_tries",
        "inline_seconds",
    )

    def __init__(
        self,
        task_id: str,
        tries: int,
        run: RunControl | None,
        limit: int,
        inline_seconds: float,
    ) -> None:
        self._task_id = task_id
        self._tries = tries
        self._run = run
        self._limit = limit
        self.inline_seconds = inline_seconds
        self._entries: dict[str, dict[str, msgspec.Raw]] | None = None
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self._replayed = 0
        self._state_found = False

    @property
    def local(self) -> bool:
        return self._run is None

    @property
    def replaying(self) -> bool:
        """Whether this run is before the last entry it found journaled (a replay)."""
        return self._entries is not None and self._replayed < len(self._entries)

    def auto_name(self, kind: str) -> str:
        n = self._counts.get(kind, 0) + 1
        self._counts[kind] = n
        return f"{kind}#{n}"

    def claim_name(self, name: str, what: str) -> None:
        """Refuse a call made inside a step, and a name used twice in this run."""
        inside = _in_step.get()
        if inside is not None:
            raise RuntimeError(
                f"task {self._task_id}: {what} was called inside the function of step "
                f"{inside!r}; a step cannot contain steps, sleeps or waits: call it from "
                "the task itself"
            )
        text: Any = name  # typed str, but user code may pass anything
        if not isinstance(text, str) or not text or "|" in text or "\n" in text:
            raise ValueError(
                f"task {self._task_id}: step name {name!r} must be a non-empty string "
                "without '|' or line breaks"
            )
        if name in self._names:
            raise ValueError(
                f"task {self._task_id}: step name {name!r} is used twice in this run; step "
                "names must be unique within a run (e.g. f'page-{i}')"
            )
        self._names.add(name)

    async def load(self) -> None:
        """Read the journal, once per run (one round trip; none for a local run)."""
        if self._entries is not None:
            return
        run = self._run
        if run is None:
            self._entries = {}
            return
        raw = await run.call(
            f"task {self._task_id}: the step journal",
            lambda: run.broker.reads.read_state(run.ks, self._task_id),
        )
        self._state_found = bool(raw)
        self._entries = self._parse(raw)

    def preload(self, flat: list[bytes]) -> None:
        """The journal as the claim handed it over ([field, value, ...]): no read. A
        task woken from a wait for a signal has at least that wait's entry: state found."""
        self._state_found = bool(flat)
        self._entries = self._parse(dict(zip(flat[::2], flat[1::2], strict=True)))

    def _parse(self, raw: dict[bytes, bytes]) -> dict[str, dict[str, msgspec.Raw]]:
        entries: dict[str, dict[str, msgspec.Raw]] = {}
        prefix = FIELD.encode()
        for key, value in raw.items():
            if not key.startswith(prefix):
                continue
            entry = _entry.decode(value)
            if "e" in entry and msgspec.json.decode(entry.get("t", b"0")) != self._tries:
                continue  # a failed step of an earlier try: this try runs it again
            entries[key[len(prefix) :].decode()] = entry
        return entries

    @property
    def resumed(self) -> bool:
        """Whether this run found durable state (ctx.state values or journal entries) when
        it read the journal: it goes on from an earlier run's work instead of starting
        over (ctx.stream's restart marker says so)."""
        return self._state_found

    def lookup(self, name: str) -> dict[str, msgspec.Raw] | None:
        """The entry journaled under `name` (after load), counted as replayed."""
        entries = self._entries if self._entries is not None else {}
        entry = entries.get(name)
        if entry is not None:
            self._replayed += 1
        return entry

    def replay(self, name: str, entry: dict[str, msgspec.Raw], fn: Callable[..., Any]) -> Any:
        """What a journaled step returned, decoded as the first run saw it; or its error."""
        if "o" in entry:
            return _decoder(fn).decode(entry["o"])
        err = msgspec.json.decode(entry["e"])
        raise StepFailed(name, err["type"], err["message"], err.get("traceback"))

    def success(self, name: str, fn: Callable[..., Any], value: Any) -> tuple[bytes, Any]:
        """The entry of a step that returned `value`, and the value as a replay sees it."""
        payload = encode(value, what=f"the result of step {name!r}", limit=self._limit)
        return b'{"o":' + payload + b"}", _decoder(fn).decode(payload)

    def failure(self, name: str, exc: BaseException) -> tuple[bytes, StepFailed]:
        """The entry of a step that raised `exc`, and the StepFailed a replay raises."""
        tb = "".join(traceback.format_exception(exc))
        failed = StepFailed(name, type(exc).__qualname__, str(exc), tb)
        error = {"type": failed.type, "message": failed.message, "traceback": tb}
        data = encode({"e": error, "t": self._tries}, what="a step's error", limit=1 << 30)
        return data, failed

    def sleep_entry(self, due: float) -> bytes:
        return encode({"due": round(due * 1000)}, what="a sleep", limit=1 << 10)

    def results_entry(self, results: list[Any]) -> bytes:
        return encode({"r": results}, what="the results of a wait", limit=self._limit)

    @staticmethod
    def results_of(entry: dict[str, msgspec.Raw], handles: Sequence[Any]) -> list[Any]:
        """A journaled wait's results, each decoded as its handle's result() would."""
        raw = msgspec.json.decode(entry["r"], type=list[msgspec.Raw])
        return [h._decoder.decode(r) for h, r in zip(handles, raw, strict=False)]

    def child_entry(self, task_id: str) -> bytes:
        return encode({"id": task_id}, what="a sub-task", limit=1 << 16)

    @staticmethod
    def child_of(entry: dict[str, msgspec.Raw]) -> str:
        task_id: str = msgspec.json.decode(entry["id"], type=str)
        return task_id

    @staticmethod
    def due_of(entry: dict[str, msgspec.Raw]) -> float:
        due_ms: int = msgspec.json.decode(entry["due"], type=int)
        return due_ms / 1000

    async def record(
        self, name: str, entry: bytes, started: float, *, ok: bool, error_type: str = ""
    ) -> None:
        """Journal one entry and its summary line, in one fenced script call."""
        run = self._run
        if run is None:
            return  # a local run: nothing outlives it
        took = max(0, round((_clock.wall() - started) * 1000))
        line = f"{name}|{round(started * 1000)}|{took}|{int(ok)}|{error_type}"
        stored = await run.call(
            f"task {self._task_id}: ctx.step {name!r}",
            lambda: run.broker.write_journal(
                run.ks, self._task_id, run.gen, FIELD + name, entry, line
            ),
        )
        if not stored:
            raise LeaseLost(
                f"task {self._task_id}: this run no longer holds the task (its lease was "
                f"taken over, or it was cancelled), so step {name!r} was not journaled"
            )
        faultpoint("after_journal_write")
