"""Cron schedules on the server, and the loop in every worker that fires their ticks.

Schedules live under their own hash tag (`<prefix>:{cron}:...`, see CronKeys): a hash of
definitions and a zset of next ticks (server ms), plus a zset of short leases and a hash of
last fired ticks. Firing one tick takes three steps, none of which touches two slots:

1. cron_take.lua leases the due schedules (server time), so that other workers leave
   those ticks alone while this one fires them;
2. the tick's task is enqueued into its queue with the id `<queue>:cron-<id>-<tick ms>`:
   enqueue is idempotent by id, so a tick fired again (this worker died before step 3 and
   the lease ran out) creates nothing while that task's record exists;
3. cron_advance.lua stores the next tick, fenced on the tick taken: a worker whose lease
   ran out cannot move a schedule that another has advanced since.

A unique schedule (`unique=True`) enqueues its ticks under a unique key of its own: while
the run of an earlier tick is queued or running, the enqueue creates nothing and names that
run, and the tick is skipped: noted in the `overlapped` hash and, once the advance went
through (so only one worker reports it), as a `cron.skipped` event in the task's queue. A
schedule's `expire` counts from its tick: a tick fired late gets less of it.

Next ticks are computed here (croniter, in the schedule's zone) from the tick fired, not
from any local clock; a schedule whose next tick is already past (every worker was down)
fires that one tick and then goes on from the present, unless it catches up, which fires
every missed tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from segue import _calls, _cron, _ops_actions, _ops_reads
from segue._errors import BrokerError, ConfigurationError, PayloadError, QueueFull
from segue._faults import faultpoint
from segue._keys import CronKeys
from segue._services import Service
from segue._wire import EnqueueSpec
from segue._wire import text as _text

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from segue._broker import Broker
    from segue._calls import ScriptCall
    from segue._enqueue import Enqueuer
    from segue._queries import Queries
    from segue._task import Task

R = TypeVar("R")

log = logging.getLogger("segue.scheduler")


# A lease covers one enqueue and one advance (milliseconds of work); if its worker dies,
# another fires the tick once the lease ends, so it is short.
_LEASE_MS = 5_000
_TAKE_BATCH = 100
# Never sleep longer than this: a schedule added by another process is seen within it.
_MAX_SLEEP = 1.0
_RETRY_SLEEP = 0.5
# Missed ticks of a catch-up schedule enqueued per round trip.
_CATCH_UP_BATCH = 1_000


class _Entry(msgspec.Struct, frozen=True):
    """A schedule's stored definition: everything a worker needs to enqueue its tick, so
    that firing it needs no Task object (any worker fires any schedule)."""

    spec: str  # the expression and zone, compared by cron_put.lua
    task: str
    queue: str
    cron: str
    tz: str | None
    catch_up: bool
    args: msgspec.Raw  # the encoded [args, kwargs] payload
    priority: str
    max_tries: int
    timeout_ms: int
    ttl_ms: int
    unique: str = ""  # the unique key of the call, if its task (or the schedule) is unique
    expire_ms: int = 0  # the task's expire: how long after its enqueue a run may wait to start
    # newer fields: a worker that does not know them fires the tick without them (a unique
    # schedule's tick is then not created while the earlier run holds the key, silently)
    overlap: bool = False  # unique=True: a tick skipped for a run still going is reported
    tick_expire_ms: int = 0  # the schedule's expire, counted from the tick (0: none)
    lane: str = ""  # a keyed limit's lane of the call (lib/lanes.lua), '' none


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Entry).decode


def _entry(enqueuer: Enqueuer, schedule: _cron.Schedule) -> bytes:
    # the same fields an enqueue of the call would send (queue, options, payload limit);
    # a sharded queue's ticks go to its base, the same from every process (docs/sharding.md)
    queue, task = enqueuer.spec(schedule.sig, route=False)
    limit = enqueuer.settings.max_payload_bytes
    if len(task.payload) > limit:
        # a schedule keeps its arguments in its definition, for every tick: never offloaded
        raise PayloadError(
            f"arguments of schedule {task.name} are {len(task.payload):,} bytes encoded, over "
            f"the limit of {limit:,} bytes (Settings.max_payload_bytes); a schedule's "
            "arguments are not offloaded: pass a reference (a path, a URL, an id) instead"
        )
    unique = task.unique
    if schedule.unique and not unique:
        # one live run per schedule (the task's own unique key, if it has one, is stricter)
        unique = f"{task.name}:cron-{schedule.id}"
    entry = _Entry(
        spec=schedule.cron.spec,
        task=task.name,
        queue=queue,
        cron=schedule.cron.expr,
        tz=schedule.cron.tz,
        catch_up=schedule.catch_up,
        args=msgspec.Raw(task.payload),
        priority=task.priority,
        max_tries=task.max_tries,
        timeout_ms=task.timeout_ms,
        ttl_ms=task.ttl_ms,
        unique=unique,
        expire_ms=task.expire_ms,
        overlap=schedule.unique,
        tick_expire_ms=int(schedule.expire * 1000) if schedule.expire else 0,
        lane=task.lane,
    )
    return _encode(entry)


async def put(enqueuer: Enqueuer, broker: Broker, schedules: Sequence[_cron.Schedule]) -> None:
    """Create or update schedules. One whose expression and zone are unchanged keeps its
    next tick; a new or re-timed one gets its first tick after the server's present."""
    if not schedules:
        return
    ck = CronKeys(enqueuer.settings.prefix)
    rows = [(s, _entry(enqueuer, s)) for s in schedules]
    calls = [_calls.cron_put(ck, s.id, e, s.cron.spec, "") for s, e in rows]
    replies = await broker.run_calls(calls, retry=True)
    again = []
    for (s, e), (outcome, now) in zip(rows, replies, strict=True):
        if int(outcome) == 0:
            first = s.cron.next_after(int(now))
            # parse() made sure the expression matches some date
            assert first is not None
            again.append(_calls.cron_put(ck, s.id, e, s.cron.spec, first))
    if again:
        await broker.run_calls(again, retry=True)


async def remove(prefix: str, broker: Broker, sid: str) -> bool:
    ck = CronKeys(prefix)
    reply = await broker.run_calls([_calls.cron_remove(ck, sid)], retry=True)
    # its pause flag goes with it: a schedule stored again under this id starts active
    await _ops_actions.forget_schedule_pause(broker, ck, sid)
    return bool(reply[0])


async def listing(prefix: str, reads: Queries) -> list[_cron.ScheduleInfo]:
    """Every stored schedule under the prefix, soonest next tick first."""
    ck = CronKeys(prefix)
    defs, due, fired = await reads.schedule_rows(ck)
    paused, skipped = await _ops_reads.paused_schedules(reads, ck)
    overlapped = await _ops_reads.overlapped_schedules(reads, ck)
    next_ms = {_text(sid): int(score) for sid, score in due}
    infos: list[_cron.ScheduleInfo] = []
    for raw_id, raw in defs.items():
        sid = _text(raw_id)
        try:
            e = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("schedule %s has a definition this version cannot read; skipped", sid)
            continue
        zone = _zone(e)
        last = fired.get(raw_id)
        nxt = next_ms.get(sid)
        skip = skipped.get(raw_id)
        overlap = overlapped.get(raw_id) if e.overlap else None
        infos.append(
            _cron.ScheduleInfo(
                id=sid,
                task=e.task,
                queue=e.queue,
                cron=e.cron,
                tz=e.tz,
                catch_up=e.catch_up,
                next_run=None if nxt is None else datetime.fromtimestamp(nxt / 1000, zone),
                last_tick=None if last is None else datetime.fromtimestamp(int(last) / 1000, zone),
                paused=raw_id in paused,
                last_skipped=None
                if skip is None
                else datetime.fromtimestamp(int(skip) / 1000, zone),
                last_task_id=None if last is None else tick_id(e.queue, sid, int(last)),
                unique=e.overlap,
                expire=e.tick_expire_ms / 1000 if e.tick_expire_ms else None,
                last_overlapped=None
                if overlap is None
                else datetime.fromtimestamp(int(overlap) / 1000, zone),
            )
        )
    infos.sort(key=lambda i: (i.next_run is None, next_ms.get(i.id, 0), i.id))
    return infos


def _zone(e: _Entry) -> tzinfo:
    try:
        return _parse(e.cron, e.tz).zone
    except ConfigurationError:
        return UTC  # a zone this machine does not know: show the times in UTC


@functools.lru_cache(maxsize=1024)
def _parse(expr: str, tz: str | None) -> _cron.Cron:
    """parse() once per expression and zone (a worker fires the same ones again and again)."""
    return _cron.parse(expr, tz)


def plan(cron: _cron.Cron, catch_up: bool, tick: int, now: int) -> tuple[list[int], int | None]:
    """The ticks to fire for a schedule due at `tick` (server time `now`), and its next."""
    ticks = [tick]
    later = cron.ticks_after(tick)
    nxt = next(later, None)
    if catch_up:
        while nxt is not None and nxt <= now and len(ticks) < _CATCH_UP_BATCH:
            ticks.append(nxt)
            nxt = next(later, None)
    elif nxt is not None and nxt <= now:
        # ticks were missed (every worker was down): this fire stands for all of them, and
        # the schedule goes on from the present
        nxt = cron.next_after(now)
    return ticks, nxt


def tick_id(queue: str, sid: str, tick: int) -> str:
    return f"{queue}:cron-{sid}-{tick}"


class Scheduler(Service):
    """The loop of one worker that fires due ticks of every schedule under the prefix.

    Every worker runs one; leases and fences make each tick fire once among them. The
    App's declared schedules (`@app.cron`) are registered first.
    """

    name = "scheduler"
    # the tick being fired ends first; one cancelled mid-fire is fired again by another
    # worker when its lease runs out
    stop_wait = 5.0

    def __init__(
        self,
        enqueuer: Enqueuer,
        broker: Broker,
        crons: Mapping[str, _cron.Schedule],
        tasks: Mapping[str, Task[Any, Any]] | None = None,
    ) -> None:
        self._enqueuer = enqueuer
        self._crons = crons
        # a tick carries this worker's code version of its task, as any enqueue does (1 for
        # a task it does not know: a worker that knows it migrates from there)
        self._tasks: Mapping[str, Task[Any, Any]] = tasks or {}
        self._broker = broker
        self._keys = CronKeys(enqueuer.settings.prefix)
        self._wake = asyncio.Event()
        self._stopping = False
        self._registered = not crons
        self.fired = 0

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "running"
        return f"<Scheduler [{state}, fired {self.fired}]>"

    async def stop(self) -> None:
        """Finish the tick being fired (if any), then stop."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                if not self._registered:
                    await put(self._enqueuer, self._broker, list(self._crons.values()))
                    self._registered = True
                    log.info("registered %d declared schedule(s)", len(self._crons))
                wait = await self.fire_due()
            except QueueFull as exc:
                # the ticks stay leased and fire again when their lease ends (no tick lost)
                log.warning("scheduler: %s; the due ticks fire again later", exc)
                wait = _RETRY_SLEEP
            except BrokerError as exc:
                log.warning("scheduler: server unavailable (%s); retrying", exc)
                wait = _RETRY_SLEEP
            except Exception:
                # a bug here must not stop the schedules of this worker for good
                log.exception("scheduler: internal error; retrying")
                wait = _MAX_SLEEP
            if wait > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def fire_due(self) -> float:
        """Fire the ticks due now; returns how long to wait before looking again."""
        broker = self._broker
        reply = (await broker.run_calls([_calls.cron_take(self._keys, _LEASE_MS, _TAKE_BATCH)]))[0]
        now, soonest, rows = int(reply[0]), int(reply[1]), reply[2:]
        if not rows:
            if soonest < 0:
                return _MAX_SLEEP
            return min(_MAX_SLEEP, max(0.0, (soonest - now) / 1000))
        by_queue: dict[str, list[EnqueueSpec]] = {}
        firing: list[_Firing] = []
        skips: list[_calls.ScriptCall] = []
        ck = CronKeys(self._enqueuer.settings.prefix)
        held = await _ops_reads.schedules_paused(broker.reads, ck, [r[0] for r in rows])
        for (raw_id, raw_tick, raw), paused in zip(rows, held, strict=True):
            sid, tick = _text(raw_id), int(float(raw_tick))
            try:
                e = _decode(raw)
                cron = _parse(e.cron, e.tz)
            except (msgspec.DecodeError, msgspec.ValidationError, ConfigurationError) as exc:
                # left leased: tried again when the lease ends, by whichever worker can
                log.error("schedule %s cannot be fired here: %s", sid, exc)
                continue
            if paused is not None:
                # a paused schedule skips this tick and goes on from the present: resuming
                # it fires its next tick, not the ones it skipped
                nxt = cron.next_after(max(tick, now))
                skips.append(_calls.cron_skip(ck, sid, tick, nxt or ""))
                log.info("schedule %s is paused: tick %d skipped", sid, tick)
                continue
            ticks, nxt = plan(cron, e.catch_up, tick, now)
            specs = by_queue.setdefault(e.queue, [])
            at = (e.queue, len(specs))
            payload = bytes(e.args)
            known = self._tasks.get(e.task)
            version = known.opts.version if known is not None else 1
            specs.extend(
                EnqueueSpec(
                    id=tick_id(e.queue, sid, t),
                    name=e.task,
                    payload=payload,
                    priority=e.priority,
                    delay_ms=0,
                    at_ms=0,
                    max_tries=e.max_tries,
                    timeout_ms=e.timeout_ms,
                    ttl_ms=e.ttl_ms,
                    unique=e.unique,
                    expire_ms=_expire_ms(e, t, now),
                    headers="",
                    version=version,
                    lane=e.lane,
                )
                for t in ticks
            )
            firing.append(_Firing(sid, tick, ticks, nxt, e, at))
            log.debug("schedule %s fires %d tick(s) from %d; next %s", sid, len(ticks), tick, nxt)
        calls: list[ScriptCall] = []
        where: list[str] = []
        for queue, specs in by_queue.items():
            await broker.register_queue(queue)
            ks = broker.keyspace(queue)
            step = _CATCH_UP_BATCH
            for i in range(0, len(specs), step):
                calls.append(broker.enqueue_call(ks, specs[i : i + step]))
                where.append(queue)
        created: dict[str, list[Any]] = {queue: [] for queue in by_queue}
        if calls:
            replies = await broker.run_calls(calls, retry=True)  # idempotent by task id
            for queue, reply in zip(where, replies, strict=True):
                created[queue].extend(reply)
        faultpoint("cron_after_enqueue")
        advances: list[ScriptCall] = []
        reports: list[list[tuple[str, int, str]]] = []
        counts: list[int] = []
        for f in firing:
            queue, first = f.at
            fired, overlapped = [], []
            for t, reply in zip(f.ticks, created[queue][first : first + len(f.ticks)], strict=True):
                own = tick_id(queue, f.sid, t)
                # a reply naming another task: a live run holds the unique key
                holder = None if reply.__class__ is int else _text(reply)
                if holder is None or holder == own:
                    fired.append(t)
                else:
                    overlapped.append((own, t, holder))
            following = "" if f.nxt is None else f.nxt
            if fired:
                advances.append(
                    _calls.cron_advance(self._keys, f.sid, f.tick, fired[-1], following)
                )
            else:
                advances.append(_calls.cron_overlap(self._keys, f.sid, f.tick, following))
            counts.append(len(fired))
            reports.append(overlapped if f.entry.overlap else [])
        if advances:
            done = await broker.run_calls(advances, retry=True)  # fenced on the tick
            self.fired += sum(n for n, ok in zip(counts, done, strict=True) if ok)
            events = [
                self._skipped_event(f, own, t, holder)
                for f, report, ok in zip(firing, reports, done, strict=True)
                if ok
                for own, t, holder in report
            ]
            if events:
                await broker.run_calls(events, retry=True)
        if skips:
            await broker.run_calls(skips, retry=True)  # fenced on the tick too
        return 0.0

    def _skipped_event(self, f: _Firing, own: str, tick: int, holder: str) -> ScriptCall:
        log.info("schedule %s skipped tick %d: run %s is still going", f.sid, tick, holder)
        data = _encode({"schedule": f.sid, "tick": tick, "running": holder})
        ks = self._broker.keyspace(f.entry.queue)
        return _calls.cron_skipped(ks, own, f.entry.task, data.decode())


def _expire_ms(e: _Entry, tick: int, now: int) -> int:
    """A tick's expire_ms: the schedule's counts from the tick (negative: over already, the
    run ends EXPIRED when claimed), the task's own from now."""
    if not e.tick_expire_ms:
        return e.expire_ms
    left = tick + e.tick_expire_ms - now
    return left if left > 0 else -1


class _Firing(msgspec.Struct, frozen=True):
    """One schedule being fired: its tick taken, the ticks it enqueues (at `at`: queue and
    index among that queue's specs) and its next tick."""

    sid: str
    tick: int
    ticks: list[int]
    nxt: int | None
    entry: _Entry
    at: tuple[str, int]
