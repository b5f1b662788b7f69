"""`@app.task(executor="process")`: sync tasks in the worker's pool of child processes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from segue import App, ConfigurationError, Context, SyncContext, TaskFailed, TaskStatus
from tests._workers import Fleet
from tests.apps import cpu
from tests.integration.conftest import eventually, serving


@pytest.fixture
def app(segue_valkey: Any, queue_name: str) -> App:
    cpu.app.settings = cpu.app.settings.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2, process_pool_size=1
    )
    return cpu.app


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _pid_in(path: Path) -> int:
    """The pid a spin task wrote, once it wrote it."""

    async def written() -> bool:
        return _read(path) != ""

    await eventually(written, timeout=20)
    return int(_read(path))


async def test_runs_in_a_child_process_with_typed_args_and_value(app: App) -> None:
    async with app, serving(app, concurrency=4):
        h = await cpu.total.enqueue([1, 2, 3], scale=2)
        value = await h.result(timeout=20)
        assert value["sum"] == 12 and value["pid"] != os.getpid()
        again = await (await cpu.total.enqueue([5])).result(timeout=20)
        assert again["pid"] == value["pid"]  # the pool keeps its process for the next task
        failed = await cpu.refuse.enqueue("no such file")
        with pytest.raises(TaskFailed, match="no such file"):
            await failed.result(timeout=20)
        assert (await failed.info()).status is TaskStatus.FAILED


async def test_timeout_and_cancel_kill_the_child_and_free_the_slot(
    app: App, tmp_path: Path
) -> None:
    async with app, serving(app, concurrency=4):
        # the pool has one process: the quick task after each spin runs only once it is free
        await (await cpu.total.enqueue([0])).result(timeout=20)  # started: its start is not timed
        timed = await cpu.spin.options(timeout=1.0).enqueue(str(tmp_path / "a"), 600.0)
        spun = await _pid_in(tmp_path / "a")
        quick = await cpu.total.enqueue([1])
        assert (await quick.result(timeout=20))["sum"] == 1
        with pytest.raises(TaskFailed, match="timeout"):
            await timed.result(timeout=5)
        assert _gone(spun)

        cancelled = await cpu.spin.enqueue(str(tmp_path / "b"), 600.0)
        spun = await _pid_in(tmp_path / "b")
        await cancelled.cancel()

        async def ended() -> bool:
            return await cancelled.status() is TaskStatus.CANCELLED

        await eventually(ended, timeout=10)
        assert (await (await cpu.total.enqueue([2])).result(timeout=20))["sum"] == 2
        await asyncio.sleep(0)
        assert _gone(spun)


async def test_a_worker_on_uvloop_runs_process_tasks(
    app: App, segue_valkey: Any, queue_name: str
) -> None:
    """The opt-in loop setting, read by `segue worker` from SEGUE_EVENT_LOOP."""
    with Fleet(
        "tests.apps.cpu:app",
        segue_valkey.url,
        queue_name,
        env={"SEGUE_EVENT_LOOP": "uvloop", "SEGUE_PROCESS_POOL_SIZE": "1"},
    ) as fleet:
        fleet.start(concurrency=2)
        async with app:
            assert await (await cpu.loop.enqueue()).result(timeout=30) == "uvloop"
            assert (await (await cpu.total.enqueue([4])).result(timeout=30))["sum"] == 4
    assert App("x", event_loop="asyncio").settings.event_loop == "asyncio"
    with pytest.raises(ConfigurationError, match="event_loop 'trio'"):
        App("x", event_loop="trio")


def test_a_ctx_parameter_is_refused_at_declaration() -> None:
    app = App("decl")

    def with_ctx(ctx: Context, n: int) -> int:
        return n

    def with_sync_ctx(ctx: SyncContext, n: int) -> int:
        return n

    for fn in (with_ctx, with_sync_ctx):
        with pytest.raises(ConfigurationError, match="ctx talks to the server") as info:
            app.task(name=f"decl.{fn.__name__}", executor="process")(fn)
        assert "not in the child" in str(info.value)
        assert f"decl.{fn.__name__}" not in app.registry

    async def not_sync(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match="async function"):
        app.task(name="decl.async", executor="process")(not_sync)
    with pytest.raises(ConfigurationError, match="executor must be"):
        app.task(name="decl.bad", executor="fork")(cpu.total.fn)  # type: ignore[call-overload]
