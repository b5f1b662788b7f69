"""Worker heartbeats: each worker's record on the server, and the health check that reads it.

A worker registers when it starts, refreshes its record every `heartbeat_seconds` and
removes it when it stops gracefully (beat.lua; keys under `<prefix>:{workers}:`). The beat
runs on the worker's event loop on purpose, unlike lease renewal (its own thread, so that
blocking task code cannot lose a lease): a loop wedged by blocking code runs no task well,
and its heartbeat going stale is how a liveness probe sees that. A record expires a few
beats after the last one, so a SIGKILLed worker disappears from `App.workers()` by itself;
the index keeps its last beat time for an hour more, for `check` to report.

`App.check()` / `segue check` decide "fresh or not" from the server's clock (TIME), the
same clock the beats are scored with, so no machine's clock skew enters the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from segue._errors import BrokerError, ConfigurationError
from segue._keys import WorkerKeys
from segue._services import Service
from segue._state import at_ms

if TYPE_CHECKING:
    from datetime import datetime

    from segue._broker import Broker
    from segue._client import Client

    class Beating(Protocol):
        """What a beat reports of its worker (the Worker; this module sits below it)."""

        app_name: str
        id: str
        queues: list[str]
        concurrency: int

        @property
        def running(self) -> int: ...
        @property
        def finished(self) -> int: ...


log = logging.getLogger("segue.worker")

RECORD_BEATS = 6  # a record outlives its last beat by this many intervals, then expires
# the index remembers when a worker last beat for this long after its record expired, so
# that a check names a worker that died or wedged as stale (and how long ago), not unknown
INDEX_KEEP_SECONDS = 3600.0
STALE_BEATS = 3  # a worker whose last beat is older than this many intervals is stale
HOST = socket.gethostname()


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as its last heartbeat described it; `age` is in seconds, by server time."""

    id: str
    app: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    running: int
    finished: int
    started_at: datetime
    last_beat_at: datetime
    age: float
    heartbeat_seconds: float

    @property
    def stale(self) -> bool:
        """True when its last beat is older than three of its own intervals."""
        return self.age > STALE_BEATS * self.heartbeat_seconds


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of `App.check()`: `ok`, and one line saying why (`reason`)."""

    ok: bool
    reason: str
    worker: WorkerInfo | None = None
    age: float | None = None

    def __str__(self) -> str:
        return self.reason


def default_pid_file(home: Path | None = None) -> Path:
    """`.segue/worker.pid` in the project directory (SEGUE_HOME, else the nearest ancestor
    with pyproject.toml or .git, as for the embedded server)."""
    from segue._embedded import find_home  # the embedded server's rule for "the project"

    return Path(home or find_home()) / ".segue" / "worker.pid"


class Heartbeat(Service):
    """Registers one worker and beats for it every `heartbeat_seconds`, on its loop."""

    name = "heartbeat"

    def __init__(self, worker: Beating, broker: Broker, pid_file: Path | None) -> None:
        self._worker = worker
        self._broker = broker
        self._keys = WorkerKeys(broker.settings.prefix)
        self.interval = broker.settings.heartbeat_seconds
        self._ttl_ms = max(1000, int(self.interval * RECORD_BEATS * 1000))
        self._keep_ms = max(int(INDEX_KEEP_SECONDS * 1000), 10 * self._ttl_ms)
        self._started_ms = 0
        self._pid_file = pid_file
        self._failing = False
        self._trimmed_ms = 0

    async def start(self) -> None:
        """Register now (so a check right after start-up finds the worker), write the pid
        file, and beat from then on (run). A server that is down here delays only the
        record: the worker itself goes on, as it does through any outage."""
        await self._beat()
        if self._pid_file is not None:
            write_pid_file(self._pid_file, self._worker.id)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._beat()

    async def close(self) -> None:
        """Remove the record and the pid file (a graceful stop; the beats ended)."""
        try:
            await self._broker.unregister_worker(self._keys, self._worker.id)
        except BrokerError as exc:
            log.warning("could not remove worker %s's record (%s)", self._worker.id, exc)
        if self._pid_file is not None:
            remove_pid_file(self._pid_file, self._worker.id)

    async def _trim_events(self, now_ms: int) -> None:
        """About once a minute, drop the events of this worker's queues that are older
        than `events_keep_seconds` (every worker does it: the trim is idempotent)."""
        keep = self._broker.settings.events_keep_seconds
        if keep is None or now_ms - self._trimmed_ms < 60_000:
            return
        self._trimmed_ms = now_ms
        for queue in self._worker.queues:
            await self._broker.trim_events(self._broker.keyspace(queue), now_ms - int(keep * 1000))

    async def _beat(self) -> None:
        w = self._worker
        fields: dict[str, str | int] = {
            "app": w.app_name,
            "host": HOST,
            "pid": os.getpid(),
            "queues": ",".join(w.queues),
            "concurrency": w.concurrency,
            "running": w.running,
            "finished": w.finished,
            "interval_ms": int(self.interval * 1000),
        }
        try:
            now_ms, self._started_ms = await self._broker.beat(
                self._keys, w.id, self._ttl_ms, self._keep_ms, self._started_ms, fields
            )
            await self._trim_events(now_ms)
        except BrokerError as exc:
            # once per outage: the worker's own loop already reports the server down
            if not self._failing:
                log.warning("worker %s heartbeat failed (%s); retrying", w.id, exc)
            self._failing = True
            return
        self._failing = False


def write_pid_file(path: Path, worker_id: str) -> None:
    """Write the worker id (not only the pid: the id names the worker on the server)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(worker_id + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a check never reads half a file


def remove_pid_file(path: Path, worker_id: str) -> None:
    # another worker may have taken the file over since: leave its id in place
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8").strip() == worker_id:
            path.unlink()


def _info(worker_id: str, score: float | None, rec: dict[bytes, bytes], now_ms: int) -> WorkerInfo:
    def text(key: bytes, default: str = "") -> str:
        raw = rec.get(key)
        return raw.decode() if raw is not None else default

    beat_ms = int(score) if score is not None else int(text(b"beat", "0"))
    queues = text(b"queues")
    return WorkerInfo(
        id=worker_id,
        app=text(b"app"),
        host=text(b"host"),
        pid=int(text(b"pid", "0")),
        queues=tuple(queues.split(",")) if queues else (),
        concurrency=int(text(b"concurrency", "0")),
        running=int(text(b"running", "0")),
        finished=int(text(b"finished", "0")),
        started_at=at_ms(int(text(b"started", "0"))),
        last_beat_at=at_ms(beat_ms),
        age=max(0.0, (now_ms - beat_ms) / 1000),
        heartbeat_seconds=int(text(b"interval_ms", "0")) / 1000,
    )


async def list_workers(client: Client) -> list[WorkerInfo]:
    """Every worker with a record (live, or stale but not yet expired), by host and id."""
    reads = await client.reads()
    now_ms, rows = await reads.worker_records(WorkerKeys(client.settings.prefix))
    infos = [_info(wid, score, rec, now_ms) for wid, score, rec in rows if rec]
    return sorted(infos, key=lambda w: (w.host, w.id))


def _where(client: Client) -> str:
    from segue._broker import _safe

    url = client.settings.redis_url
    if url is not None:
        return _safe(url)
    return f"the embedded server of {client.settings.home or 'this project'}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def check(
    client: Client,
    worker_id: str | None = None,
    *,
    max_age: float | None = None,
    pid_file: str | Path | None = None,
    timeout: float = 5.0,
) -> Health:
    """Is a worker alive? See `App.check` for how the worker is chosen."""
    path: Path | None = None
    if worker_id is None:
        path = Path(pid_file) if pid_file is not None else default_pid_file(client.settings.home)
        if path.exists():
            try:
                worker_id = path.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                return Health(False, _one_line(f"cannot read pid file {path}: {exc}"))
            if worker_id is None:
                return Health(False, f"pid file {path} is empty")
        elif pid_file is not None:
            return Health(False, f"no pid file at {path} (start the worker with --pid-file {path})")
    try:
        async with asyncio.timeout(timeout):
            reads = await client.reads()
            now_ms, rows = await reads.worker_records(WorkerKeys(client.settings.prefix), worker_id)
    except TimeoutError:
        return Health(False, f"server unreachable: {_where(client)} did not answer in {timeout} s")
    except BrokerError as exc:
        cause = exc.__cause__ or exc
        return Health(False, _one_line(f"server unreachable: {_where(client)}: {cause}"))
    except ConfigurationError as exc:
        return Health(False, _one_line(f"server unavailable: {exc}"))

    def limit(info: WorkerInfo | None) -> float:
        if max_age is not None:
            return max_age
        interval = info.heartbeat_seconds if info and info.heartbeat_seconds else 0.0
        return STALE_BEATS * (interval or client.settings.heartbeat_seconds)

    if worker_id is not None:
        source = f" (from {path})" if path is not None else ""
        wid, score, rec = rows[0]
        if score is None and not rec:
            return Health(
                False,
                f"no worker {wid} is registered{source}: it stopped, or its heartbeat expired",
            )
        info = _info(wid, score, rec, now_ms)
        return _verdict(info, limit(info if rec else None), expired=not rec)
    infos = [_info(wid, score, rec, now_ms) for wid, score, rec in rows if rec]
    here = [i for i in infos if i.host == HOST]
    if not here:
        return Health(False, f"no worker of host {HOST} is registered (and no pid file at {path})")
    freshest = min(here, key=lambda i: i.age)
    health = _verdict(freshest, limit(freshest), expired=False)
    if not health.ok and len(here) > 1:
        return Health(
            False,
            f"all {len(here)} workers of host {HOST} are stale: the freshest beat "
            f"{freshest.age:.1f} s ago (limit {limit(freshest):g} s)",
            freshest,
            freshest.age,
        )
    return health


def _verdict(info: WorkerInfo, max_age: float, *, expired: bool) -> Health:
    if expired or info.age > max_age:
        gone = "; its record expired" if expired else ""
        return Health(
            False,
            f"worker {info.id} is stale: last heartbeat {info.age:.1f} s ago "
            f"(limit {max_age:g} s){gone}",
            info,
            info.age,
        )
    return Health(
        True,
        f"worker {info.id} is alive: last heartbeat {info.age:.1f} s ago, running "
        f"{info.running}/{info.concurrency}, {info.finished} finished",
        info,
        info.age,
    )
