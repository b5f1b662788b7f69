"""Contract tests of the core queue, run on a single server and on the cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pydantic
import pytest

from segue import (
    App,
    Context,
    Fail,
    PayloadError,
    ResultTimeout,
    ResultUnavailable,
    Retry,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    _versions,
)
from tests._support import admin_client, keys_of
from tests.integration.conftest import eventually, serving


async def test_async_and_sync_tasks_run_and_return(make_app: Callable[..., App]) -> None:
    app = make_app()
    seen: list[tuple[str, int, str]] = []

    @app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="mul")
    def mul(ctx: Context, x: int, y: int) -> int:
        seen.append((ctx.task_id, ctx.tries, ctx.queue))
        return x * y

    async with app:
        h1 = await add.enqueue(2, 3)
        h2 = await mul.enqueue(4, y=5)
        assert await h1.status() is TaskStatus.QUEUED
        assert await app.drain() == 2
        assert await h1.result() == 5
        assert await h2.result() == 20
        assert seen == [(h2.id, 1, app.settings.queue)]
        info = await h2.info()
        assert info.status is TaskStatus.SUCCEEDED
        assert info.name == "mul"
        assert info.args == [4] and info.kwargs == {"y": 5}
        assert info.tries == 1 and info.result == 20
        assert info.worker_id is not None
        assert [t.status for t in info.history] == [
            TaskStatus.QUEUED,
            TaskStatus.RUNNING,
            TaskStatus.SUCCEEDED,
        ]


async def test_calling_a_task_runs_it_locally(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task
    async def hello(name: str) -> str:
        return f"hello {name}"

    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert await hello("you") == "hello you"
    assert await hello.run("me") == "hello me"
    assert double(21) == 42
    assert hello.name.endswith("test_calling_a_task_runs_it_locally.<locals>.hello")


async def test_result_waits_for_a_running_worker(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="slow")
    async def slow() -> str:
        await asyncio.sleep(0.2)
        return "done"

    async with app, serving(app, concurrency=4):
        h = await slow.enqueue()
        assert await h.result(timeout=10) == "done"
        with pytest.raises(ResultTimeout):
            await (await slow.options(delay=30).enqueue()).result(timeout=0.2)


async def test_priorities_high_first(make_app: Callable[..., App]) -> None:
    app = make_app()
    order: list[str] = []

    @app.task(name="tag")
    async def tag(label: str) -> None:
        order.append(label)

    async with app:
        await app.enqueue_many(
            [tag.options(priority="low").call(f"low{i}") for i in range(3)]
            + [tag.call(f"normal{i}") for i in range(3)]
            + [tag.options(priority="high").call(f"high{i}") for i in range(3)]
        )
        await app.drain(concurrency=1)
    assert order == [
        *(f"high{i}" for i in range(3)),
        *(f"normal{i}" for i in range(3)),
        *(f"low{i}" for i in range(3)),
    ]


async def test_delay_and_at_schedule_on_time(make_app: Callable[..., App]) -> None:
    app = make_app()
    started: dict[str, float] = {}

    @app.task(name="stamp")
    async def stamp(label: str) -> None:
        started[label] = time.monotonic()

    async with app, serving(app, concurrency=4):
        t0 = time.monotonic()
        h1 = await stamp.options(delay=0.6).enqueue("delay")
        h2 = await stamp.options(at=datetime.now(UTC) + timedelta(seconds=0.9)).enqueue("at")
        assert await h1.status() is TaskStatus.SCHEDULED
        await h1.result(timeout=5)
        await h2.result(timeout=5)
    # due on time: within 100 ms, plus a little for a busy 2-core test machine
    assert 0.55 <= started["delay"] - t0 <= 0.6 + 0.15
    assert 0.85 <= started["at"] - t0 <= 0.9 + 0.15


async def test_retries_with_backoff_then_success(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="flaky", max_tries=3, retry_backoff=0.05)
    async def flaky(ctx: Context) -> int:
        if ctx.tries < 3:
            raise ConnectionError(f"try {ctx.tries}")
        return ctx.tries

    async with app:
        h = await flaky.enqueue()
        await app.drain()
        assert await h.result() == 3
        info = await h.info()
        statuses = [t.status for t in info.history]
        assert statuses.count(TaskStatus.RETRYING) == 2
        assert info.tries == 3


async def test_exhausted_retries_fail_with_remote_traceback(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="broken", max_tries=2, retry_backoff=0.01)
    async def broken() -> None:
        raise ValueError("bad value 42")

    async with app:
        h = await broken.enqueue()
        await app.drain()
        with pytest.raises(TaskFailed) as caught:
            await h.result()
        assert caught.value.exc_type == "ValueError"
        assert caught.value.message == "bad value 42"
        assert caught.value.traceback is not None
        assert 'raise ValueError("bad value 42")' in caught.value.traceback
        assert (await h.info()).tries == 2


async def test_fail_ends_without_retry_and_retry_asks_again(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="refuse", max_tries=5)
    async def refuse() -> None:
        raise Fail("input is invalid")

    @app.task(name="again", max_tries=3)
    async def again(ctx: Context) -> int:
        if ctx.tries == 1:
            raise Retry(delay=0.1)
        return ctx.tries

    async with app:
        h1 = await refuse.enqueue()
        h2 = await again.enqueue()
        await app.drain()
        with pytest.raises(TaskFailed) as caught:
            await h1.result()
        assert caught.value.reason == "fail"
        assert "input is invalid" in caught.value.message
        assert (await h1.info()).tries == 1
        assert await h2.result() == 2


async def test_timeout_interrupts_and_fails(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="sleepy", timeout=0.2, max_tries=1)
    async def sleepy() -> None:
        await asyncio.sleep(30)

    async with app:
        h = await sleepy.enqueue()
        t0 = time.monotonic()
        await app.drain()
        assert time.monotonic() - t0 < 5
        with pytest.raises(TaskFailed) as caught:
            await h.result()
        assert caught.value.reason == "timeout"
        assert "timeout of 0.2 s" in caught.value.message


async def test_sync_task_does_not_block_the_loop(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="block")
    def block(seconds: float) -> str:
        time.sleep(seconds)
        return "slept"

    @app.task(name="quick")
    async def quick() -> float:
        return time.monotonic()

    async with app:
        hb = await block.enqueue(1.0)
        hq = await quick.enqueue()
        t0 = time.monotonic()
        await app.drain(concurrency=4)
        assert await hb.result() == "slept"
        assert await hq.result() - t0 < 0.5


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Item(msgspec.Struct):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    id: uuid.UUID
    placed: datetime


async def test_rich_types_round_trip(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="echo")
    async def echo(p: Point, item: Item, order: Order, when: datetime, uid: uuid.UUID) -> Order:
        # decoded to the annotated types, not left as dicts and strings
        types = [type(v) for v in (p, item, order, when, uid)]
        assert types == [Point, Item, Order, datetime, uuid.UUID]
        return order

    order = Order(id=uuid.uuid4(), placed=datetime(2026, 11, 24, 9, 30, tzinfo=UTC))
    async with app:
        h = await echo.enqueue(Point(1, 2), Item("a", 3), order, datetime.now(UTC), uuid.uuid4())
        await app.drain()
        assert await h.result() == order
        plain = await app.task_handle(h.id)
        assert await plain.result() == {"id": str(order.id), "placed": "2026-11-24T09:30:00Z"}


async def test_payload_too_large_is_refused_before_writing(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app(max_payload_bytes=1024)

    @app.task(name="big")
    async def big(data: str) -> None: ...

    async with app:
        with pytest.raises(PayloadError, match="over the limit of 1,024 bytes"):
            await big.enqueue("x" * 2000)
        with pytest.raises(PayloadError, match="cannot be encoded"):
            await big.enqueue(object())  # type: ignore[arg-type]
    assert await keys_of(segue_engine, f"segue:{{{app.settings.queue}}}:*") == []


async def test_wrong_arguments_are_refused_at_enqueue(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="pair")
    async def pair(a: int, b: int) -> int:
        return a + b

    async with app:
        with pytest.raises(TypeError, match="wrong arguments for task pair"):
            await pair.enqueue(1)  # type: ignore[call-arg]
        with pytest.raises(Exception, match="unknown enqueue option"):
            pair.options(dely=5)  # type: ignore[call-arg]


async def test_undecodable_arguments_fail_clearly(make_app: Callable[..., App]) -> None:
    worker_app = make_app()
    client_app = make_app()

    @worker_app.task(name="typed")
    async def typed(n: int) -> int:
        return n

    @client_app.task(name="typed")
    async def typed_client(n: str) -> int:
        return 0

    @worker_app.task(name="fine")
    async def fine() -> str:
        return "ok"

    async with worker_app, client_app:
        bad = await typed_client.enqueue("not a number")
        good = await fine.enqueue()
        await worker_app.drain()
        with pytest.raises(TaskFailed) as caught:
            await bad.result()
        assert caught.value.reason == "undecodable"
        assert "typed" in caught.value.message
        assert "parameter 'n': Expected `int`, got `str`" in caught.value.message
        assert await (await worker_app.task_handle(good.id)).result() == "ok"


async def test_unknown_task_is_released_then_failed(make_app: Callable[..., App]) -> None:
    worker_app = make_app()
    client_app = make_app()

    @client_app.task(name="nobody.knows")
    async def ghost() -> None: ...

    async with worker_app, client_app:
        h = await ghost.enqueue()
        async with serving(worker_app):
            await eventually(lambda: _is(h, TaskStatus.SCHEDULED), timeout=5)
            info = await h.info()
            assert info.tries == 0  # a release does not spend a try
            with pytest.raises(TaskFailed) as caught:
                await h.result(timeout=15)
        assert caught.value.reason == "unknown_task"
        assert "nobody.knows" in caught.value.message


async def _is(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)


async def test_idempotency_key_gives_one_task(make_app: Callable[..., App]) -> None:
    app = make_app()
    runs: list[int] = []

    @app.task(name="once")
    async def once(n: int) -> int:
        runs.append(n)
        return n

    async with app:
        h1 = await once.options(key="report:2026-11-24").enqueue(1)
        h2 = await once.options(key="report:2026-11-24").enqueue(2)
        assert h1.id == h2.id
        await app.drain()
        assert runs == [1]


async def test_enqueue_many_and_listing(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="sq")
    async def sq(n: int) -> int:
        return n * n

    async with app:
        handles = await app.enqueue_many([sq.call(i) for i in range(2500)])
        assert len({h.id for h in handles}) == 2500
        queued = await app.tasks(TaskStatus.QUEUED, limit=10)
        assert len(queued) == 10 and all(t.status is TaskStatus.QUEUED for t in queued)
        page2 = await app.tasks(TaskStatus.QUEUED, offset=10, limit=10)
        assert not {t.id for t in queued} & {t.id for t in page2}
        assert (await app.queue_counts())["queued"] == 2500
        assert await app.drain(concurrency=32) == 2500
        assert [await h.result() for h in handles[:5]] == [0, 1, 4, 9, 16]
        done = await app.tasks(TaskStatus.SUCCEEDED, limit=3000)
        assert len(done) == 2500
        assert app.settings.queue in await app.queues()


async def test_results_expire_and_leave_no_keys(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()

    @app.task(name="short", ttl=1.0)
    async def short() -> int:
        return 1

    @app.task(name="none", ttl=0)
    async def none() -> int:
        return 2

    @app.task(name="boom", ttl=1.0, max_tries=1)
    async def boom() -> None:
        raise RuntimeError("x")

    async with app:
        h1 = await short.enqueue()
        h2 = await none.enqueue()
        h3 = await boom.enqueue()
        await app.drain()
        assert await h1.result() == 1
        with pytest.raises(ResultUnavailable):
            await h2.result()
        with pytest.raises(TaskNotFound):
            await h2.status()

        base = f"segue:{{{app.settings.queue}}}:"
        # a task that failed for good is kept, with its error, while it is a dead letter
        kept = {base + "dead", base + "done:failed", base + "task:" + h3.id}
        # the ttl=0 task's output stream (empty: its end marker) lingers for its readers
        kept.add(base + "out:" + h2.id)

        async def gone() -> bool:
            await app.drain()  # a claim also trims the indexes of expired records
            keys = await keys_of(segue_engine, base + "*")
            # structural keys: the wake token, the capped event stream, the queue's meta hash,
            # its counters and their 25-hour history (bounded hashes)
            structural = (":wake", ":events", ":meta", ":stats", ":hist")
            return {k for k in keys if not k.endswith(structural)} == kept

        await eventually(gone, timeout=10)
        admin = admin_client(segue_engine)
        try:
            assert 0 < await admin.pttl(base + "out:" + h2.id) <= 300_000
        finally:
            await admin.aclose()
        with pytest.raises(TaskNotFound):
            await h1.result()
        assert await h3.status() is TaskStatus.FAILED


async def test_two_apps_in_one_server_do_not_share_queues(make_app: Callable[..., App]) -> None:
    a = make_app()
    b = make_app(queue=a.settings.queue + "_b")
    ran: list[str] = []

    @a.task(name="t")
    async def ta() -> None:
        ran.append("a")

    @b.task(name="t")
    async def tb() -> None:
        ran.append("b")

    async with a, b:
        await ta.enqueue()
        await a.drain()
        await b.drain()
        assert ran == ["a"]


async def test_scripts_reload_after_the_server_forgets_them(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()

    @app.task(name="after_flush")
    async def after_flush() -> str:
        return "ok"

    async with app:
        await (await after_flush.enqueue()).status()
        admin = admin_client(segue_engine)
        try:
            await admin.script_flush()  # on a cluster, redis-py sends it to every node
        finally:
            await admin.aclose()
        h = await after_flush.enqueue()  # NOSCRIPT: reloaded and resent
        await app.drain()
        assert await h.result() == "ok"


async def test_a_server_without_the_lua_fixes_is_named_in_a_warning(
    make_app: Callable[..., App],
    segue_engine: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the advisory is logged once per process: start this test as a fresh process would
    monkeypatch.setattr(_versions, "_warned", set())
    app = make_app()
    with caplog.at_level("WARNING", logger="segue.server"):
        async with app:
            server, version = (await app._client.broker()).server_version or ("", "")
    warned = [r.getMessage() for r in caplog.records if r.name == "segue.server"]
    if segue_engine.kind == "redis" and version.startswith("7.0."):
        assert len(warned) == 1 and "CVE-2025-49844" in warned[0] and version in warned[0]
    else:
        assert server == "valkey" and warned == []
