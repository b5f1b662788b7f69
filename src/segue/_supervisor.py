"""`segue worker --processes N`: N worker processes under one supervisor.

A Python process runs its tasks on one core; a machine with more gets its use from more
processes. The supervisor runs `segue worker` N times as children, each a worker of its own
(its own id, heartbeat, leases, `/metrics` port), and does nothing on the hot path: it
forwards SIGTERM and SIGINT to them, restarts one that died (after a backoff that grows
while it keeps dying young, logging its exit code or signal), and holds the embedded server
open, so it stays up between a child's death and its restart. What a dead child was running
is recovered by the other workers once its leases lapse, as for any dead worker.

Children run in their own process group: a Ctrl-C at the terminal reaches the supervisor
only, which forwards it once (a second one in a child means "stop at once"). On Linux each
child also dies with its supervisor (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves
no worker behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from segue._errors import ConfigurationError
from segue._procpool import usable_cpus

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from types import FrameType

    from segue._app import App

log = logging.getLogger("segue.supervisor")

_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
# a child that ran this long before it died is not crash-looping: its backoff starts over
_HEALTHY_SECONDS = 30.0
_POLL = 0.1
_USAGE_ERROR = 2  # the CLI's exit code for a bad option or an app that does not load
_SUPERVISOR_ENV = "SEGUE_SUPERVISOR_PID"  # set in the children; its pid


def parse_processes(text: str) -> int:
    """`N` (at least 1) or `auto`: the CPUs this process may use (see `usable_cpus`)."""
    if text.strip().lower() == "auto":
        return usable_cpus()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigurationError(f"--processes {text!r}: use a number >= 1, or auto")
    return n


def child_argv(
    argv: Sequence[str], index: int, metrics_port: int | None, pid_file: Path | None
) -> list[str]:
    """`argv` (the options of `segue worker`) for child `index`: without --processes, with
    its own --metrics-port (the given one + index) and --pid-file (`<stem>-<index><suffix>`)."""
    own = {"--processes", "-p", "--metrics-port", "--pid-file"}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name in own:
            skip = "=" not in arg
            continue
        if arg.startswith("-p") and not arg.startswith("--"):
            continue  # `-p2`: a child given it would start a supervisor of its own
        out.append(arg)
    if metrics_port is not None:
        out += ["--metrics-port", str(metrics_port + index)]
    if pid_file is not None:
        out += ["--pid-file", str(pid_file.with_name(f"{pid_file.stem}-{index}{pid_file.suffix}"))]
    return out


def die_with_supervisor() -> None:
    """In a child (SEGUE_SUPERVISOR_PID set): on Linux, get SIGTERM when the supervisor
    dies, and stop now if it died while this process started. Done here rather than
    between fork and exec, which is unsafe in a process with threads."""
    supervisor = os.environ.get(_SUPERVISOR_ENV)
    if supervisor is None or sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(supervisor):
        raise SystemExit("segue: the supervisor of this worker process is gone")


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Child:
    index: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = _FIRST_BACKOFF
    restart_at: float | None = None  # when a dead child starts again
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `segue worker <argv>` in `processes` children until SIGTERM/SIGINT; see the
    module's docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        *,
        metrics_port: int | None = None,
        pid_file: Path | None = None,
        grace: float = 10.0,
        burst: bool = False,
    ) -> None:
        self.children = [
            _Child(i, child_argv(argv, i, metrics_port, pid_file)) for i in range(processes)
        ]
        # a child gets the grace for its tasks, then a few seconds to requeue and say goodbye
        self._grace = grace + 5.0
        self._burst = burst
        self._signals: list[int] = []
        self._stop_deadline: float | None = None
        self.exit_code = 0

    def _start(self, child: _Child) -> None:
        command = [sys.executable, "-m", "segue", "worker", *child.argv]
        env = {**os.environ, _SUPERVISOR_ENV: str(os.getpid())}
        child.proc = subprocess.Popen(command, env=env, process_group=0)
        child.started = time.monotonic()
        child.restart_at = None
        child.pids.append(child.proc.pid)
        log.info("worker process %d started (pid %d)", child.index, child.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Serve until stopped; the exit code of the command."""
        handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                self._start(child)
            log.warning(
                "supervisor %d runs %d worker processes (pids %s)",
                os.getpid(),
                len(self.children),
                " ".join(str(c.proc.pid) for c in self.children if c.proc is not None),
            )
            while self._step():
                time.sleep(_POLL)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self._kill_all()
        return self.exit_code

    def _step(self) -> bool:
        """One look at the signals and the children; False once all have ended for good."""
        while self._signals:
            signum = self._signals.pop(0)
            if self._stop_deadline is None:
                log.warning(
                    "%s: stopping %d worker processes", signal.Signals(signum).name, self._alive()
                )
                self._stop_deadline = time.monotonic() + self._grace
            self._forward(signum)
        now = time.monotonic()
        if self._stop_deadline is not None:
            if self._alive() == 0:
                return False
            if now > self._stop_deadline:
                log.warning("worker processes still running after the grace period: killing")
                self._kill_all()
                return False
            return True
        for child in self.children:
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is not None:
                self._ended(child, code, now)
        return any(c.proc is not None or c.restart_at is not None for c in self.children)

    def _ended(self, child: _Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid = child.proc.pid
        child.proc = None
        if code == 0 and self._burst:
            log.info("worker process %d (pid %d) finished its burst", child.index, pid)
            return
        if code == _USAGE_ERROR:
            # a bad option or an app that does not load fails the same way on every start
            log.error(
                "worker process %d (pid %d) exited with code %d (a usage or configuration "
                "error: see its message above); stopping",
                child.index,
                pid,
                code,
            )
            self.exit_code = code
            self._signals.append(signal.SIGTERM)
            return
        if now - child.started >= _HEALTHY_SECONDS:
            child.backoff = _FIRST_BACKOFF
        delay = child.backoff
        child.backoff = min(_MAX_BACKOFF, child.backoff * 2)
        child.restart_at = now + delay
        log.warning(
            "worker process %d (pid %d) %s after %.1f s; restarting it in %.1f s",
            child.index,
            pid,
            describe_exit(code),
            now - child.started,
            delay,
        )

    def _alive(self) -> int:
        return sum(1 for c in self.children if c.proc is not None and c.proc.poll() is None)

    def _forward(self, signum: int) -> None:
        for child in self.children:
            child.restart_at = None  # a stopping supervisor starts nothing again
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    def _kill_all(self) -> None:
        for child in self.children:
            if child.proc is not None:
                if child.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                child.proc.wait()


def run_supervised(
    argv: Sequence[str],
    processes: int,
    app: App,
    *,
    metrics_port: int | None,
    pid_file: Path | None,
    burst: bool,
) -> int:
    """Run the supervisor, holding the App's embedded server (if it uses one) open for the
    children meanwhile; the command's exit code."""
    held = None
    if app.settings.redis_url is None:
        from segue import _embedded

        held = _embedded.acquire(app.settings.home, idle_timeout=app.settings.embedded_idle_seconds)
    supervisor = Supervisor(
        argv,
        processes,
        metrics_port=metrics_port,
        pid_file=pid_file,
        grace=app.settings.shutdown_grace_seconds,
        burst=burst,
    )
    try:
        return supervisor.run()
    finally:
        if held is not None:
            from segue import _embedded

            _embedded.release(held)
