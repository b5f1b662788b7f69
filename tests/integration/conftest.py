"""App fixtures over the server fixtures of tests/conftest.py, and async test support."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, Worker
from tests.releases.source import PREVIOUS, extract

# --- async tests -------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on a fresh event loop (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(pyfuncitem.obj(**kwargs))
    return True


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Wait until `check()` is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(app: App, **options: Any) -> AsyncIterator[Worker]:
    """A worker of `app` running in this event loop for the block, stopped after it."""
    worker = app.worker(**options)
    running = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await running


# --- the previous release -------------------------------------------------------------


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's `src/` (its segue package), for a worker of that release."""
    return extract(PREVIOUS, tmp_path_factory.mktemp("previous-release"))


# --- apps --------------------------------------------------------------------------------


@pytest.fixture
def make_app(segue_engine: Any, queue_name: str) -> Iterator[Callable[..., App]]:
    """Build Apps on the engine under test, each on this test's queue by default."""

    def build(**overrides: Any) -> App:
        overrides.setdefault("queue", queue_name)
        overrides.setdefault("poll_seconds", 0.2)
        return App("test", redis_url=segue_engine.url, **overrides)

    yield build
