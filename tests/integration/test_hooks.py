"""Hooks around enqueue and runs, and worker lifespan resources."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from segue import App, ConfigurationError, Context, Fail, Hook, RunResult, Signature, TaskHandle
from tests.integration.conftest import serving

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


class Recorder(Hook):
    def __init__(self, name: str, log: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.log = log

    async def before_enqueue(self, signature: Signature[Any]) -> None:
        self.log.append((self.name, "before_enqueue", signature.task.name))

    async def after_enqueue(self, signature: Signature[Any], handle: TaskHandle[Any]) -> None:
        self.log.append((self.name, "after_enqueue", handle.id))

    async def before_run(self, ctx: Context) -> None:
        tenant.set(f"tenant-of-{ctx.name}")
        self.log.append((self.name, "before_run", ctx.name, ctx.tries))

    async def after_run(self, ctx: Context, result: RunResult) -> None:
        self.log.append((self.name, "after_run", ctx.name, result.end, result.value))

    async def on_failure(self, ctx: Context, error: BaseException, will_retry: bool) -> None:
        self.log.append((self.name, "on_failure", ctx.name, str(error), will_retry))

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        self.log.append((self.name, "on_retry", ctx.name, delay))

    async def on_final_failure(self, ctx: Context, error: BaseException) -> None:
        self.log.append((self.name, "on_final_failure", ctx.name, str(error)))


class Broken(Hook):
    async def before_run(self, ctx: Context) -> None:
        raise RuntimeError("a broken metrics hook")


async def test_hooks_fire_in_order_with_the_right_arguments(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    log: list[tuple[Any, ...]] = []
    app.add_hook(Recorder("first", log))
    app.add_hook(Broken())
    app.add_hook(Recorder("second", log))
    seen_tenant: list[str] = []

    @app.task(name="ok_task")
    def ok_task(x: int) -> int:  # sync: the thread sees the hook's context variable
        seen_tenant.append(tenant.get())
        return x * 2

    @app.task(name="bad_task", max_tries=2, retry_backoff=lambda tries: 0.0)
    async def bad_task() -> None:
        raise ValueError("nope")

    async with app:
        h = await ok_task.enqueue(21)
        assert log == [
            ("first", "before_enqueue", "ok_task"),
            ("second", "before_enqueue", "ok_task"),
            ("first", "after_enqueue", h.id),
            ("second", "after_enqueue", h.id),
        ]
        log.clear()
        await app.drain()
        assert await h.result() == 42
        assert seen_tenant == ["tenant-of-ok_task"]
        assert log == [
            ("first", "before_run", "ok_task", 1),
            ("second", "before_run", "ok_task", 1),
            ("first", "after_run", "ok_task", "succeeded", 42),
            ("second", "after_run", "ok_task", "succeeded", 42),
        ]
        log.clear()
        await bad_task.enqueue()
        await app.drain(horizon=1.0)
        mine = [e for e in log if e[0] == "first" and "enqueue" not in e[1]]
        assert mine == [
            ("first", "before_run", "bad_task", 1),
            ("first", "on_failure", "bad_task", "nope", True),
            ("first", "on_retry", "bad_task", 0.0),
            ("first", "after_run", "bad_task", "retrying", None),
            ("first", "before_run", "bad_task", 2),
            ("first", "on_failure", "bad_task", "nope", False),
            ("first", "on_final_failure", "bad_task", "nope"),
            ("first", "after_run", "bad_task", "failed", None),
        ]


async def test_fail_is_a_final_failure_for_hooks(make_app: Callable[..., App]) -> None:
    app = make_app()
    log: list[tuple[Any, ...]] = []
    app.add_hook(Recorder("h", log))

    @app.task(name="refuse", max_tries=3)
    async def refuse() -> None:
        raise Fail("bad input")

    async with app:
        await refuse.enqueue()
        await app.drain()
        assert ("h", "on_final_failure", "refuse", "bad input") in log
        assert not any(e[1] == "on_retry" for e in log)


async def test_lifespan_resources_reach_tasks_and_close_once_per_worker(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    events: list[str] = []

    class Pool:
        def __init__(self) -> None:
            self.queries = 0

    @app.lifespan
    async def pool() -> AsyncIterator[Pool]:
        events.append("open pool")
        p = Pool()
        yield p
        events.append(f"close pool after {p.queries} queries")

    @app.lifespan
    async def settings_blob() -> AsyncIterator[dict[str, str]]:
        events.append("open settings")
        yield {"region": "eu"}
        events.append("close settings")

    @app.task(name="query")
    async def query(ctx: Context, n: int) -> str:
        p = ctx.get(pool)
        p.queries += 1
        return f"{ctx.get(settings_blob)['region']}:{n}"

    async with app:
        hs = [await query.enqueue(i) for i in range(3)]
        async with serving(app):
            assert [await h.result(timeout=5) for h in hs] == ["eu:0", "eu:1", "eu:2"]
        assert events == [
            "open pool",
            "open settings",
            "close settings",
            "close pool after 3 queries",
        ]
        with pytest.raises(ConfigurationError, match="a local run opens no lifespan"):
            await query.run(1)


async def test_a_failing_lifespan_stops_the_worker_before_any_task(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    ran: list[int] = []

    reachable = False

    @app.lifespan
    async def database() -> AsyncIterator[None]:
        if not reachable:
            raise ConnectionRefusedError("database at 10.0.0.5:5432 refused the connection")
        yield

    @app.task(name="needs_db")
    async def needs_db(x: int) -> int:
        ran.append(x)
        return x

    async with app:
        h = await needs_db.enqueue(1)
        with pytest.raises(ConfigurationError, match=r"lifespan '.*database'.*refused"):
            await app.drain()
        assert ran == []
        assert (await h.status()).value == "queued"


async def test_headers_travel_from_the_enqueue_to_the_run(make_app: Callable[..., App]) -> None:
    app = make_app()
    seen: list[dict[str, str]] = []

    class Tenant(Hook):
        async def before_enqueue(self, signature: Signature[Any]) -> None:
            signature.headers["tenant"] = "acme"

    app.add_hook(Tenant())

    @app.task(name="headed")
    async def headed(ctx: Context) -> None:
        seen.append(dict(ctx.headers))

    async with app:
        await headed.enqueue()
        await headed.options(headers={"request": "r-1"}).enqueue()
        await app.drain()
    assert sorted(seen, key=len) == [{"tenant": "acme"}, {"request": "r-1", "tenant": "acme"}]
