"""Worker subprocesses for the tests: `python -m segue worker <app>`, one harness for every
process test and the fault suite.

    with Fleet("tests.apps.faults:app", engine.url, queue, env=ledger.env()) as fleet:
        w = fleet.start(concurrency=8)          # a slot, running one process
        await fleet.ready(w)                    # registered: about to take work
        at = fleet.kill(w)                      # SIGKILL; `at` = time.time() of the signal
        fleet.restart(w)                        # a new process in the same slot

Each start is configured by SEGUE_* variables (URL, queue, prefix, lease, poll, grace, plus
any the test adds, e.g. SEGUE_FAULTPOINT for one slot); segue gives every process its own
worker id `<host>-<pid>-<suffix>`, so a ledger row or a history entry names the process
that wrote it (`Slot.id_prefix`). Signals go only to pids this fleet started; leaving the
block SIGKILLs and reaps every one still running (SIGCONT first, so a stopped one dies
too). Each slot's output goes to a file of its own under `log_dir` (`fleet.log(slot)`);
without a `log_dir` the files live in a directory of the fleet's, removed when it stops,
after their ends were written to stderr, where pytest shows them for a failing test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import redis.asyncio
import redis.asyncio.cluster

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL = 2000  # characters of each slot's log written to stderr when the fleet stops


@dataclasses.dataclass
class Slot:
    """One worker of the fleet: the process now running in it, and those before."""

    name: str
    concurrency: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started: float  # time.time() of the current process's start
    pids: list[int] = dataclasses.field(default_factory=list)  # every process it ran
    queues: list[str] | None = None  # the queues it serves, if not the fleet's one
    args: tuple[str, ...] = ()  # more options of `segue worker`

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def id_prefix(self) -> str:
        """The start of the worker id of the current process (`<host>-<pid>-`)."""
        return f"{socket.gethostname()}-{self.proc.pid}-"

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclasses.dataclass(frozen=True)
class Signal:
    """A signal the fleet sent: which slot, which process, what, and when."""

    slot: str
    pid: int
    signal: str
    at: float  # time.time()


class Fleet:
    """Worker subprocesses of one App on one queue; stops only its own.

    `lease`, `poll` and `grace` set SEGUE_LEASE_SECONDS, SEGUE_POLL_SECONDS and
    SEGUE_SHUTDOWN_GRACE_SECONDS (None: the App's own setting); `env` adds variables to
    every process; `concurrency` is the default of `start`."""

    def __init__(
        self,
        app: str,
        url: str,
        queue: str,
        *,
        concurrency: int = 8,
        lease: float | None = 2.0,
        poll: float | None = 0.2,
        grace: float | None = 0.5,
        prefix: str = "segue",
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        log_level: str = "warning",
    ) -> None:
        self.app = app
        self.url = url
        self.queue = queue
        self.prefix = prefix
        self.concurrency = concurrency
        self.log_level = log_level
        timing = {
            "SEGUE_LEASE_SECONDS": lease,
            "SEGUE_POLL_SECONDS": poll,
            "SEGUE_SHUTDOWN_GRACE_SECONDS": grace,
        }
        self.env = {
            **os.environ,
            "PYTHONPATH": _pythonpath(),
            "SEGUE_REDIS_URL": url,
            "SEGUE_QUEUE": queue,
            "SEGUE_PREFIX": prefix,
            **{name: str(value) for name, value in timing.items() if value is not None},
            **(env or {}),
        }
        self._own_logs = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="segue-fleet-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.slots: list[Slot] = []
        self.signals: list[Signal] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    # --- processes -------------------------------------------------------------------------

    def _spawn(
        self,
        slot_name: str,
        concurrency: int,
        env: dict[str, str],
        queues: list[str] | None,
        args: Sequence[str],
    ) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "segue", "worker", self.app]
        command += ["--concurrency", str(concurrency), "--log-level", self.log_level]
        if queues:
            command += ["--queues", ",".join(queues)]
        command += args
        self.log_dir.mkdir(parents=True, exist_ok=True)  # again, after a stop_all removed it
        with (self.log_dir / f"{slot_name}.log").open("ab") as log:
            return subprocess.Popen(
                command, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=log
            )

    def start(
        self,
        concurrency: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
        queues: list[str] | None = None,
        args: Sequence[str] = (),
    ) -> Slot:
        """A new slot running a new worker process; `env` adds to (or overrides) the fleet's;
        `queues`: the queues it serves, in order (default: the fleet's queue); `args`: more
        options of `segue worker` (e.g. `--metrics-port`)."""
        name = f"w{len(self.slots)}"
        extra = dict(env or {})
        n = concurrency or self.concurrency
        proc = self._spawn(name, n, extra, queues, args)
        slot = Slot(name, n, extra, proc, time.time(), [proc.pid], queues, tuple(args))
        self.slots.append(slot)
        return slot

    def restart(self, slot: Slot, *, env: Mapping[str, str] | None = None) -> Slot:
        """A new process in `slot` (after the old one ended: it is SIGKILLed if it has not)."""
        if slot.alive():
            self.kill(slot)
        if env is not None:
            slot.env = dict(env)
        slot.proc = self._spawn(slot.name, slot.concurrency, slot.env, slot.queues, slot.args)
        slot.started = time.time()
        slot.pids.append(slot.proc.pid)
        return slot

    def _send(self, slot: Slot, sig: signal.Signals) -> float:
        at = time.time()
        if slot.alive():
            slot.proc.send_signal(sig)
        self.signals.append(Signal(slot.name, slot.pid, sig.name, at))
        return at

    def kill(self, slot: Slot) -> float:
        """SIGKILL the slot's process and reap it; returns when the signal was sent."""
        at = self._send(slot, signal.SIGKILL)
        slot.proc.wait(timeout=10)
        return at

    def pause(self, slot: Slot) -> float:
        """SIGSTOP: the process freezes, its lease-renewal thread with it."""
        return self._send(slot, signal.SIGSTOP)

    def resume(self, slot: Slot) -> float:
        """SIGCONT a process stopped by `pause`."""
        return self._send(slot, signal.SIGCONT)

    def terminate(self, slot: Slot) -> float:
        """SIGTERM: a graceful stop (see `wait_exit`)."""
        return self._send(slot, signal.SIGTERM)

    def wait_exit(self, slot: Slot, timeout: float = 20.0) -> int:
        """The exit code of the slot's process, once it ended."""
        return slot.proc.wait(timeout=timeout)

    def terminate_all(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM every process still running and wait for each to end (a graceful stop of
        the whole fleet); their exit codes, by slot."""
        running = self.alive()
        for slot in running:
            self.terminate(slot)
        return {slot.name: self.wait_exit(slot, timeout) for slot in running}

    def kill_all(self) -> None:
        """SIGKILL every process still running (no worker says goodbye) and reap it."""
        for slot in self.alive():
            self.kill(slot)

    def stop_all(self) -> None:
        """SIGKILL and reap every process still running (SIGCONT first, so a stopped one
        dies too); write the ends of the logs to stderr (pytest shows them for a failing
        test). The fleet can start workers again after it."""
        for slot in self.slots:
            if slot.alive():
                slot.proc.send_signal(signal.SIGCONT)
                slot.proc.send_signal(signal.SIGKILL)
            slot.proc.wait(timeout=10)
        for slot in self.slots:
            text = self.log(slot)
            if text:
                sys.stderr.write(
                    f"--- worker {slot.name} (pids {slot.pids}):\n{text[-LOG_TAIL:]}\n"
                )
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def alive(self) -> list[Slot]:
        return [s for s in self.slots if s.alive()]

    def all_pids(self) -> list[int]:
        """Every process the fleet started, in start order per slot."""
        return [pid for s in self.slots for pid in s.pids]

    def log(self, slot: Slot) -> str:
        """What the slot's processes wrote so far."""
        path = self.log_dir / f"{slot.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def line_with(self, slot: Slot, text: str, timeout: float = 20.0) -> str:
        """The first line of the slot's log that contains `text`, once it is written."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.log(slot).splitlines() if text in line), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {slot.name} wrote no line with {text!r} within {timeout} s; "
                    f"its log:\n{self.log(slot)[-LOG_TAIL:]}"
                )
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def supervised(self, interval: float = 0.05) -> AsyncIterator[list[Signal]]:
        """Within the block, a slot whose process died (a task killed it) gets a new one
        at once, as an init system would do; yields the list of those restarts."""
        restarts: list[Signal] = []

        async def watch() -> None:
            while True:
                for slot in self.slots:
                    if not slot.alive():
                        restarts.append(Signal(slot.name, slot.pid, "restart", time.time()))
                        self.restart(slot)
                await asyncio.sleep(interval)

        watcher = asyncio.create_task(watch())
        try:
            yield restarts
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # --- readiness -------------------------------------------------------------------------

    async def registered(self) -> set[str]:
        """Worker ids in the server's worker registry (heartbeats)."""
        client = _client(self.url)
        try:
            # the registry's index: a zset of worker ids, its own `{workers}` hash tag
            ids = await client.zrange(f"{self.prefix}:{{workers}}:index", 0, -1)
        finally:
            await client.aclose()
        return {i.decode() for i in ids}

    async def ready(self, *slots: Slot, timeout: float = 30.0) -> None:
        """Wait until the current process of each slot (all slots if none named) is
        registered, i.e. about to take work."""
        wanted = list(slots) or self.slots
        deadline = time.monotonic() + timeout
        while True:
            ids = await self.registered()
            missing = [s for s in wanted if not any(i.startswith(s.id_prefix) for i in ids)]
            if not missing:
                return
            for s in missing:
                if not s.alive():
                    raise AssertionError(
                        f"worker {s.name} (pid {s.pid}) exited with {s.proc.returncode} "
                        f"before it registered; its log:\n{self.log(s)[-LOG_TAIL:]}"
                    )
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in missing)
                raise AssertionError(f"workers {names} did not register within {timeout} s")
            await asyncio.sleep(0.05)


def _client(url: str) -> Any:
    """A plain client of the fleet's server; for a `+cluster` URL, a cluster client seeded
    with every node it lists (`host:port,host:port,...`)."""
    if "+cluster://" not in url:
        return redis.asyncio.Redis.from_url(url)
    scheme, rest = url.split("://", 1)
    auth, _, hosts = rest.rpartition("@")
    user, _, password = auth.partition(":")
    seeds = [h.rsplit(":", 1) for h in hosts.split("/", 1)[0].split("?", 1)[0].split(",")]
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, int(p)) for h, p in seeds],
        username=unquote(user) or None,
        password=unquote(password) or None,
        ssl=scheme.startswith("rediss"),
    )


def _pythonpath() -> str:
    # the worker imports the app module from the repository and segue from the same
    # source tree as the test process (a worktree's src/, not an installed copy)
    import segue

    src = str(Path(segue.__file__).resolve().parents[1])
    parts = [src, str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.pathsep.join(dict.fromkeys(parts))
