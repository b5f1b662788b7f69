"""Lease renewal in its own thread, on its own connection.

A task that blocks the event loop (CPU-bound code, a sync call by mistake) cannot delay
the heartbeat: renewal runs here, not on the loop. Leases this worker no longer holds
(it was frozen or cut off past the deadline, and another worker took the task) are
reported back so the loop stops those runs: their outcome would be rejected anyway.

As a worker's service (_services.py), run() waits on the loop for the thread's end: the
thread ending before it was asked to (an error past its retries) stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from segue import _calls
from segue._faults import faultpoint
from segue._services import Service
from segue._transport import SyncScripts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from segue._keys import Keyspace
    from segue._settings import Settings

log = logging.getLogger("segue.worker")


class LeaseKeeper(Service):
    """Renews the leases of the running tasks every lease/3 seconds, in its own thread."""

    name = "lease thread"

    def __init__(
        self,
        url: str,
        settings: Settings,
        worker_id: str,
        on_lost: Callable[[list[tuple[str, str]]], object],
        on_request: Callable[[str, str], object],
    ) -> None:
        self._url = url
        self._settings = settings
        self._worker_id = worker_id
        self._on_lost = on_lost
        self._on_request = on_request
        self._held: dict[str, tuple[Keyspace, str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scripts: SyncScripts | None = None
        self.interval = settings.lease_seconds / 3
        # a renewal under way ends first (its calls time out within this)
        self.stop_wait = self.interval + 5
        self._ended: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ended = self._ended = loop.create_future()

        def report(exc: BaseException | None) -> None:
            if not ended.done():
                if exc is None:
                    ended.set_result(None)
                else:
                    ended.set_exception(exc)

        def thread() -> None:
            failure: BaseException | None = None
            try:
                self._run()
            except BaseException as exc:
                failure = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(report, failure)

        self._thread = threading.Thread(target=thread, name="segue-lease", daemon=True)
        self._thread.start()

    async def run(self) -> None:
        """Until the thread ends; raises if it ended before stop() asked it to."""
        assert self._ended is not None
        await asyncio.shield(self._ended)
        if not self._stop.is_set():
            raise RuntimeError("the lease renewal thread ended")

    async def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if self._ended is not None and self._ended.done():
            # it reported its end as its last step: only its return is left
            await asyncio.to_thread(thread.join, 1.0)
        if thread.is_alive():
            log.warning("lease renewal thread still busy at stop; left to end on its own")

    def hold(self, task_id: str, ks: Keyspace, gen: str) -> None:
        with self._lock:
            self._held[task_id] = (ks, gen)

    def hold_all(self, runs: Iterable[tuple[str, Keyspace, str]]) -> None:
        """hold() of a claim's runs (task id, keyspace, generation), under one lock."""
        with self._lock:
            for task_id, ks, gen in runs:
                self._held[task_id] = (ks, gen)

    def drop(self, task_id: str, gen: str) -> None:
        """Stop renewing the run `gen` of the task (not a newer run this worker holds)."""
        with self._lock:
            held = self._held.get(task_id)
            if held is not None and held[1] == gen:
                del self._held[task_id]

    def drop_all(self, runs: Iterable[tuple[str, str]]) -> None:
        """drop() of a finish's runs (task id, generation), under one lock."""
        with self._lock:
            get = self._held.get
            for task_id, gen in runs:
                held = get(task_id)
                if held is not None and held[1] == gen:
                    del self._held[task_id]

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                faultpoint("lease_thread")  # outside the retries: tests of the failure policy
                try:
                    self.renew_once()
                except Exception as exc:
                    # a server outage: keep trying; leases expire only if it lasts past them
                    log.warning("lease renewal failed: %s", exc)
                    self._reset_client()
        finally:
            self._reset_client()

    def _reset_client(self) -> None:
        if self._scripts is not None:
            self._scripts.close()

    def renew_once(self) -> None:
        with self._lock:
            held = list(self._held.items())
        if not held:
            return
        if self._scripts is None:
            self._scripts = SyncScripts(self._url, cluster=self._settings.cluster)
        by_queue: dict[Keyspace, list[str]] = {}
        for task_id, (ks, gen) in held:
            by_queue.setdefault(ks, []).extend((task_id, gen))
        lease_ms = int(self._settings.lease_seconds * 1000)
        sent = dict(held)
        lost: list[tuple[str, str]] = []
        for ks, pairs in by_queue.items():
            call = _calls.renew(ks, self._worker_id, lease_ms, pairs)
            gone, requests = _calls.parse_renew(self._scripts.run(call))
            # with the generation it was sent for: by the time the reply is read, this
            # worker may hold a newer run of the same task, which is not lost
            lost.extend((task_id, sent[task_id][1]) for task_id in gone)
            for task_id, request in requests:
                self._on_request(task_id, request)
        if lost:
            self._on_lost(lost)
