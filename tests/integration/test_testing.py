"""segue.testing: the plugin's fixtures, the worker helper, history assertions, and the
exact stop condition of `app.drain()`. The fixtures come from the plugin itself
(`pytest_plugins` in tests/conftest.py), as a user's suite gets them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from segue import App, ConfigurationError, TaskStatus
from segue.testing import AppFactory, LocalServer, assert_history, statuses, worker

ROOT = Path(__file__).resolve().parents[2]


async def test_each_test_gets_its_own_queue_on_the_session_server(
    segue_app: AppFactory, segue_queue: str, segue_server: LocalServer
) -> None:
    app = segue_app(concurrency=2)
    assert app.settings.queue == segue_queue
    assert app.settings.redis_url == segue_server.url
    assert segue_queue.startswith("test_each_test_gets_its_own_queue")

    @app.task(name="tt.double")
    def double(x: int) -> int:
        return 2 * x

    async with app:
        h = await double.enqueue(21)
        assert h.queue == segue_queue
        assert await app.drain() == 1
        assert await h.result() == 42
        info = await h.info()
        assert statuses(info) == ["queued", "running", "succeeded"]
        assert_history(info, ["queued", "running", "succeeded"])
        assert_history(info, [TaskStatus.QUEUED, TaskStatus.SUCCEEDED], exact=False)
        with pytest.raises(AssertionError, match=r"expected history \['queued', 'failed'\]"):
            assert_history(info, ["queued", "failed"])
        with pytest.raises(AssertionError, match=r"running \(.+\), succeeded"):
            assert_history(info, ["succeeded", "queued"], exact=False)


async def test_an_existing_app_is_pointed_at_the_test_server_and_given_back(
    segue_server: LocalServer, segue_queue: str
) -> None:
    shop = App("shop", redis_url="redis://127.0.0.1:1/0", queue="orders", concurrency=7)
    own = shop.settings

    @shop.task(name="tt.total")
    async def total(prices: list[float]) -> float:
        return sum(prices)

    factory = AppFactory(segue_server.url, segue_queue)
    assert factory(shop, poll_seconds=0.2) is shop
    assert (shop.settings.redis_url, shop.settings.queue) == (segue_server.url, segue_queue)
    assert shop.settings.concurrency == 7  # the rest of its settings are its own
    async with shop:
        h = await total.enqueue([1.5, 2.5])
        async with worker(shop) as w:
            assert await h.result(timeout=10) == 4.0
            assert w.id in [x.id for x in await shop.workers()]
        assert_history(await h.info(), ["queued", "running", "succeeded"])
        with pytest.raises(ConfigurationError, match="is connected"):
            factory(shop)
    factory.restore()
    assert shop.settings is own


async def test_the_worker_helper_raises_what_stopped_the_worker(segue_app: AppFactory) -> None:
    app = segue_app()

    reachable = False

    @app.lifespan
    async def database() -> AsyncIterator[None]:
        if not reachable:
            raise ConnectionRefusedError("database refused the connection")
        yield

    with pytest.raises(ConfigurationError, match=r"lifespan .*database.* refused"):
        async with worker(app):
            pytest.fail("the block must not run without the worker's resources")
    await app.close()


# --- the stop condition of app.drain() ------------------------------------------------------


async def test_drain_runs_what_is_due_within_the_horizon_and_leaves_the_rest(
    segue_app: AppFactory,
) -> None:
    app = segue_app()

    @app.task(name="tt.echo")
    async def echo(x: str) -> str:
        return x

    async with app:
        now = await echo.enqueue("now")
        soon = await echo.options(delay=0.3).enqueue("soon")
        later = await echo.options(delay=60).enqueue("later")
        assert await app.drain() == 1  # horizon 0: the delayed ones are not waited for
        assert await soon.status() is TaskStatus.SCHEDULED
        assert await app.drain(horizon=5) == 1  # `soon` is due within 5 s: run, then stop
        assert [await now.result(), await soon.result()] == ["now", "soon"]
        assert await later.status() is TaskStatus.SCHEDULED
        assert_history(await soon.info(), ["scheduled", "queued", "running", "succeeded"])


async def test_drain_waits_for_a_retry_whatever_the_horizon(segue_app: AppFactory) -> None:
    app = segue_app()
    tries: list[int] = []

    @app.task(name="tt.flaky", max_tries=3, retry_backoff=lambda tries: 0.3)
    async def flaky() -> str:
        tries.append(len(tries) + 1)
        if len(tries) == 1:
            raise ValueError("first try fails")
        return "ok"

    async with app:
        h = await flaky.enqueue()
        assert await app.drain() == 2  # two runs: the retry was waited for at horizon 0
        assert await h.result() == "ok"
        history = ["queued", "running", "retrying", "queued", "running", "succeeded"]
        assert_history(await h.info(), history)


async def test_drain_of_several_queues_waits_for_what_is_due_in_any_of_them(
    segue_app: AppFactory, segue_queue: str
) -> None:
    app = segue_app()
    second = f"{segue_queue}-2"

    @app.task(name="tt.ping")
    async def ping() -> str:
        return "pong"

    async with app:
        h = await ping.options(delay=0.3).enqueue()  # in the first queue; the second is empty
        assert await app.drain(queues=[segue_queue, second], horizon=5) == 1
        assert await h.result() == "pong"


# --- the plugin as a user's project gets it ---------------------------------------------------


@pytest.mark.slow
def test_a_project_tests_its_tasks_with_the_plugin(tmp_path: Path) -> None:
    """A project with no async test plugin: the plugin starts its own server, runs async
    tests, and its fixtures give the project's App the test server and a queue per test."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["segue.testing"]\n')
    (tmp_path / "shop.py").write_text(
        textwrap.dedent(
            """
            from segue import App, Context

            app = App("shop")


            @app.task(name="shop.total")
            async def total(ctx: Context, prices: list[float]) -> float:
                await ctx.state.set(seen=len(prices))
                return sum(prices)
            """
        )
    )
    (tmp_path / "test_shop.py").write_text(
        textwrap.dedent(
            """
            import shop
            from segue.testing import assert_history, worker

            queues = set()


            async def test_enqueue_then_drain(segue_app, segue_server):
                app = segue_app(shop.app)
                assert segue_server.pid is not None  # this session started it
                queues.add(app.settings.queue)
                async with app:
                    h = await shop.total.enqueue([1.5, 2.5])
                    assert await app.drain() == 1
                    assert await h.result() == 4.0
                    assert_history(await h.info(), ["queued", "running", "succeeded"])


            async def test_with_a_worker(segue_app):
                app = segue_app(shop.app)
                queues.add(app.settings.queue)
                async with app, worker(app):
                    h = await shop.total.enqueue([1.0])
                    assert await h.result(timeout=10) == 1.0


            async def test_run_locally():
                assert shop.app.settings.redis_url is None  # given back after each test
                assert await shop.total.run([2.0, 3.0]) == 5.0
                assert len(queues) == 2
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(tmp_path)])
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout
