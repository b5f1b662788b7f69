"""A worker's parts as services: one start/stop protocol, one task group, one failure policy.

A worker is its claim loop (_worker.py) and the services beside it: the lease thread
(_lease.py), the control subscriber (_control.py), the waker (_waker.py), the heartbeat,
the reconciler, the forwarder and, when serving, the scheduler. Each is a `Service`, and
each runs as a task of one `asyncio.TaskGroup` (`ServiceGroup`): started in order before the
worker takes work, stopped in the reverse order, so the claim loop (started last) records
its last outcomes while the lease thread still renews and control requests still arrive.
No part outlives the worker.

The failure policy of every part is `POLICY`, here and nowhere else. A service whose `run()`
raises is either restarted after a backoff while the tasks go on, or stops the worker:
running tasks are requeued at once, the worker unregisters, and `Worker.run()` raises a
SegueError naming the part and the cause (`segue worker` exits 1 with it). A server outage
is not a failure: each service retries calls that fail for it at its own pace, as before.

Python 3.11's `asyncio.wait_for` swallows a cancellation that arrives as its inner call ends
(fixed in 3.12), and redis-py's cluster client waits that way: a loop cancelled once can run
on. So a service that stops by cancellation is cancelled again until its task ends
(`_cancel.cancel_and_wait`), the one place this is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import TYPE_CHECKING, ClassVar

from segue import _cancel, _clock

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

log = logging.getLogger("segue.worker")


class OnFailure(enum.Enum):
    RESTART = "restart"  # logged with its traceback, run again after a backoff
    STOP = "stop"  # logged with its traceback, the worker stops and reports it


POLICY: dict[str, OnFailure] = {
    # nothing is claimed and no outcome recorded without it
    "claim loop": OnFailure.STOP,
    # the running tasks' leases would lapse and other workers run them again
    "lease thread": OnFailure.STOP,
    # requests still arrive through the lease renewals' replies meanwhile, only later
    "subscriber": OnFailure.RESTART,
    # the claim loop still polls every poll_seconds meanwhile
    "waker": OnFailure.RESTART,
    "heartbeat": OnFailure.RESTART,
    "reconciler": OnFailure.RESTART,
    "forwarder": OnFailure.RESTART,
    "scheduler": OnFailure.RESTART,
    # the worker serves the shards it knows meanwhile; a reshard's new ones wait for it
    "shard watcher": OnFailure.RESTART,
}
BACKOFF_FIRST = 0.5  # seconds before the first restart; doubles at each failure in a row
BACKOFF_MAX = 30.0  # and no more; a run that lasted longer than this starts over at FIRST


class Service:
    """A part of a worker: `start()`, then `run()` in the worker's task group until `stop()`
    asks it to end (or, after `stop_wait` seconds, it is cancelled), then `close()`."""

    name: ClassVar[str]  # its key in POLICY, and how logs name it
    # how long the group waits for run() to return after stop() before cancelling it;
    # None: as long as it takes (the claim loop, whose shutdown bounds itself)
    stop_wait: float | None = 0.0

    async def start(self) -> None:
        """What must hold before the worker takes work; raising refuses to start."""

    async def run(self) -> None:
        """The service's loop; returns once stop() asked, raises on failure. Run again
        after a failure when POLICY says restart: keep what a rerun needs."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Ask run() to return soon (by default it is cancelled instead)."""

    async def close(self) -> None:
        """After run() ended: finish what the service holds and release what start() took."""


class ServiceGroup:
    """Runs a worker's services in one TaskGroup and applies POLICY to their failures.

    `on_fatal(name, exc)` is called on the loop when a STOP service fails. Leaving the
    group stops every started service, the last started first; the first error a
    service's stop or close raised is raised then."""

    def __init__(self, owner: str, on_fatal: Callable[[str, BaseException], None]) -> None:
        self._owner = owner
        self._on_fatal = on_fatal
        self._group = asyncio.TaskGroup()
        self._started: list[tuple[Service, asyncio.Task[None]]] = []
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> ServiceGroup:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop_all()
        finally:
            # every task has ended by now; supervisors raise nothing but their cancellation,
            # so the group adds no ExceptionGroup around what the body raised
            await self._group.__aexit__(None, None, None)

    async def start(self, service: Service) -> asyncio.Task[None]:
        """Start a service and run it under its policy; its supervising task."""
        await service.start()
        task = self._group.create_task(self._supervise(service), name=f"segue-{service.name}")
        self._started.append((service, task))
        return task

    async def _supervise(self, service: Service) -> None:
        policy = POLICY[service.name]
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            began = _clock.monotonic()
            try:
                await service.run()
                return
            except Exception as exc:
                if self._stopping.is_set():
                    log.warning("%s failed while stopping: %r", service.name, exc)
                    return
                if policy is OnFailure.STOP:
                    log.error(
                        "worker %s stops: its %s failed: %s",
                        self._owner,
                        service.name,
                        describe(exc),
                        exc_info=exc,
                    )
                    self._on_fatal(service.name, exc)
                    return
                if _clock.monotonic() - began > BACKOFF_MAX:
                    backoff = BACKOFF_FIRST
                log.error(
                    "worker %s: its %s failed: %s; restarting it in %g s",
                    self._owner,
                    service.name,
                    describe(exc),
                    backoff,
                    exc_info=exc,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stopping.wait()
                backoff = min(BACKOFF_MAX, backoff * 2)

    async def stop_all(self) -> None:
        """Stop every started service, the last started first, each by its protocol."""
        self._stopping.set()
        error: BaseException | None = None
        while self._started:
            service, task = self._started.pop()
            try:
                await service.stop()
                if not task.done() and service.stop_wait != 0.0:
                    await asyncio.wait({task}, timeout=service.stop_wait)
                    if not task.done():
                        log.warning(
                            "%s did not stop within %g s; cancelled",
                            service.name,
                            service.stop_wait,
                        )
                await _cancel.cancel_and_wait(task)
                await service.close()
            except Exception as exc:
                log.exception("stopping the %s failed", service.name)
                error = error or exc
        if error is not None:
            raise error


def describe(exc: BaseException) -> str:
    """`Type: message` of an error, for one log line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
