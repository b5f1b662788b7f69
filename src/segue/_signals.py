"""Signals to running tasks: `ctx.wait_signal` (the task's side) and the local runs' signals.

A wait is a step journal entry (`~j:signal:<name>#<n>`, _journal.py). Its first run either
takes a buffered signal (signal_wait.lua takes and journals it in one call) or journals the
wait's deadline, `{"sw": <ms or null>, "at": <ms>}`, and ends: the task WAITS without a
slot or a spent try. The transition that wakes it journals its decision in the same entry,
`{"s": <data>}` for a signal (signal.lua) or `{"x": 1}` for the deadline (claim.lua), so a
signal and the deadline that race are decided once, on the server, and the next run reads
the decision back. A local run (`task.run(..., signals={...})`) takes its signals from a
dict and never waits.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from segue import _clock
from segue._broker import server_unreachable
from segue._codec import decode_plain, encode
from segue._errors import BrokerError, LeaseLost, SignalTimeout
from segue._faults import faultpoint
from segue._journal import FIELD, Journal, RunControl
from segue._keys import queue_of

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from segue._broker import Broker

_SEND_ATTEMPTS = 6  # about 1.6 s of resends of one signal while the server is unreachable

MISSING: Any = object()

# the signals a local run hands its waits, by name, first first (task.run(signals=...))
local_signals: ContextVar[dict[str, list[Any]] | None] = ContextVar(
    "segue_local_signals", default=None
)


class WaitingForSignal(BaseException):
    """Raised by `ctx.wait_signal` when no signal is there: the run stops, the task WAITS
    without holding a worker slot (its try not spent), and a signal or the deadline queues
    it again. A BaseException, so that `except Exception` in task code does not swallow it."""


def check_name(name: Any, task_id: str) -> str:
    if not isinstance(name, str) or not name or "|" in name or "\n" in name or len(name) > 200:
        raise ValueError(
            f"task {task_id}: signal name {name!r} must be a non-empty string of at most 200 "
            "characters without '|' or line breaks"
        )
    return name


def seconds_of(timeout: float | timedelta | None, task_id: str) -> float | None:
    if timeout is None:
        return None
    value: Any = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"task {task_id}: ctx.wait_signal(timeout={timeout!r}): the timeout must be a "
            "finite number of seconds, 0 or more, or None"
        )
    return float(value)


def set_local(signals: Mapping[str, Sequence[Any]] | None) -> Any:
    """Hand a local run its signals (a copy: the run takes them in order)."""
    copy = None if signals is None else {k: list(v) for k, v in signals.items()}
    return local_signals.set(copy)


def _timed_out(task_id: str, name: str, timeout: float | None, default: Any) -> Any:
    if default is not MISSING:
        return default
    raise SignalTimeout(
        f"task {task_id}: no signal {name!r} came within the wait's timeout ({timeout} s)", name
    )


async def wait_signal(
    journal: Journal,
    run: RunControl | None,
    task_id: str,
    name: str,
    timeout: float | timedelta | None,
    default: Any,
) -> Any:
    """The data of the next signal `name`; see Context.wait_signal."""
    check_name(name, task_id)
    seconds = seconds_of(timeout, task_id)
    jname = journal.auto_name(f"signal:{name}")
    journal.claim_name(jname, "ctx.wait_signal")
    if run is None:
        # a local run: the signals it was given, else the timeout at once (it never waits)
        given = (local_signals.get() or {}).get(name)
        if given:
            return given.pop(0)
        return _timed_out(task_id, name, seconds, default)
    await journal.load()
    entry = journal.lookup(jname)
    began = _clock.wall()
    deadline = None if seconds is None else began + seconds
    if entry is not None:
        if "s" in entry:
            return decode_plain(entry["s"])
        if "x" in entry:
            return _timed_out(task_id, name, seconds, default)
        # a wait an earlier run began: its deadline holds (a replay does not restart it)
        due = msgspec.json.decode(entry["sw"]) if "sw" in entry else None
        deadline = None if due is None else due / 1000
        if "at" in entry:
            began = msgspec.json.decode(entry["at"]) / 1000
    deadline_ms = -1 if deadline is None else round(deadline * 1000)
    code, data = await run.call(
        f"task {task_id}: ctx.wait_signal {name!r}",
        lambda: run.broker.wait_signal(
            run.ks, task_id, run.gen, name, FIELD + jname, deadline_ms, round(began * 1000)
        ),
    )
    if code < 0:
        raise LeaseLost(
            f"task {task_id}: this run no longer holds the task (its lease was taken over, "
            f"or it was cancelled), so its wait for signal {name!r} was not recorded"
        )
    if code == 1:
        faultpoint("after_signal_taken")
        return decode_plain(data or b"null")
    if code == 2:
        return _timed_out(task_id, name, seconds, default)
    raise WaitingForSignal


async def send_signal(
    broker: Broker, task_id: str, name: str, data: Any, signal_id: str | None, limit: int
) -> str:
    """Send a signal (signal.lua) under one id, sent again while the server is unreachable
    for a short while: the id makes every resend safe. Returns the task's status after."""
    check_name(name, task_id)
    payload = encode(data, what=f"the data of signal {name!r}", limit=limit)
    sid = signal_id or uuid.uuid4().hex
    ks = broker.keyspace(queue_of(task_id))
    pause = 0.05
    for attempt in range(_SEND_ATTEMPTS):
        try:
            _, status = await broker.signal(ks, task_id, name, payload, sid)
            return status
        except BrokerError as exc:
            if not server_unreachable(exc) or attempt == _SEND_ATTEMPTS - 1:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
    raise AssertionError("unreachable")  # pragma: no cover
