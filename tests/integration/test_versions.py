"""Task versions in one process (issue 17, item 1): what an enqueue stores, sub-tasks, a
migration that raises, a pause of a task an older worker keeps putting back. The deploy
itself, with worker processes of two codes, is tests/integration/test_versions_processes.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from segue import App, Context, TaskFailed, TaskStatus
from tests._support import Engine, admin_client
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_workflow import _segue


async def fields(engine: Engine, app: App, task_id: str, *names: str) -> list[str | None]:
    db = admin_client(engine)
    try:
        key = f"{app.settings.prefix}:{{{app.settings.queue}}}:task:{task_id}"
        raw = await db.hmget(key, *names)
    finally:
        await db.aclose()
    return [v.decode() if v is not None else None for v in raw]


async def test_an_enqueue_stores_its_codes_version_and_version_1_stores_nothing(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    app = make_app()

    @app.task(name="v.one")
    async def one() -> None: ...

    @app.task(name="v.three", version=3, migrate={1: dict, 2: dict})
    async def three() -> None: ...

    async with app:
        a, b = await one.enqueue(), await three.enqueue()
        # a version-1 record is what it was before versions (the previous release reads it)
        assert await fields(segue_engine, app, a.id, "v", "v0") == [None, None]
        assert await fields(segue_engine, app, b.id, "v", "v0") == ["3", None]
        infos = [await a.info(), await b.info()]
    assert [(i.version, i.started_version) for i in infos] == [(1, 1), (3, 3)]


async def test_sub_tasks_carry_the_version_of_the_code_that_enqueued_them(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    app = make_app()

    @app.task(name="v.child", version=4, migrate={1: dict, 2: dict, 3: dict})
    async def child(ctx: Context) -> int:
        return ctx.version

    @app.task(name="v.parent", version=2, migrate={1: dict})
    async def parent(ctx: Context) -> list[int]:
        h = await ctx.enqueue(child.call())
        return [ctx.version, *await ctx.wait_for([h])]

    async with app:
        h = await parent.enqueue()
        await app.drain()
        assert await h.result() == [2, 4]
        assert await fields(segue_engine, app, f"{h.id}.1", "v") == ["4"]


async def test_a_migration_that_raises_is_a_failed_try_and_leaves_the_task_as_it_was(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    old, new = make_app(), make_app()

    @old.task(name="v.job", max_tries=2)
    async def job_v1(ctx: Context) -> str:
        await ctx.state.set(n="not a number")
        raise ValueError("stop here, state kept")

    def upgrade(state: dict[str, Any]) -> dict[str, Any]:
        return {"n": int(state["n"]) + 1}

    @new.task(name="v.job", version=2, migrate={1: upgrade}, max_tries=2, retry_backoff=0.01)
    async def job_v2(ctx: Context) -> str:
        return "ran"

    async with old, new:
        h = await job_v1.enqueue()
        async with serving(old):
            await eventually(lambda: _retrying(h))
        await new.drain(horizon=1)
        with pytest.raises(TaskFailed) as failed:
            await h.result(timeout=5)
    assert failed.value.exc_type == "MigrationFailed"
    assert "migrate[1] failed" in failed.value.message and "ValueError" in failed.value.message


async def _retrying(h: Any) -> bool:
    return bool(await h.status() is TaskStatus.RETRYING)


async def test_an_operators_pause_holds_a_task_an_older_worker_puts_back(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    old, new = make_app(newer_version_backoff_seconds=0.2), make_app()

    @old.task(name="v.held")
    async def held_v1() -> int:
        return 1

    @new.task(name="v.held", version=2, migrate={1: dict})
    async def held_v2() -> int:
        return 2

    async with old, new:
        h = await held_v2.enqueue()
        async with serving(old):

            async def released() -> bool:
                info = await h.info()
                return any(t.reason == "newer version, released" for t in info.history)

            await eventually(released)
            await h.pause()
        assert await h.status() is TaskStatus.PAUSED
        assert (await h.info()).tries == 0
        await h.resume()
        await new.drain()
        assert await h.result(timeout=5) == 2


async def test_segue_info_shows_a_migrated_tasks_versions(
    segue_valkey: Engine, queue_name: str
) -> None:
    old = App("test", redis_url=segue_valkey.url, queue=queue_name)
    new = App("test", redis_url=segue_valkey.url, queue=queue_name)

    @old.task(name="v.shown")
    async def shown_v1() -> None: ...

    @new.task(name="v.shown", version=2, migrate={1: dict})
    async def shown_v2() -> None: ...

    async with old, new:
        h = await shown_v1.enqueue()
        await new.drain()
        await h.result(timeout=5)
    done = _segue("info", h.id, "--url", segue_valkey.url)
    assert done.returncode == 0, done.stderr
    assert "version 2 (started under 1)" in done.stdout
