"""Task records written by another client (or by hand) that segue cannot read in full: the
dashboard's lists and task page show them with a "bad record" note instead of failing with
500, and the client API reads what it can and says what it could not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio

from segue import App, Fail, TaskFailed, TaskStatus
from tests.e2e.conftest import dashboard

# field → a value no segue writes, for a queued task
QUEUED = {
    "pg": b"-inf 1",
    "ce": b"9" * 30,
    "n": b"\xff\xfe report",
    "h": b"queued|not a time|\n",
    "t": b"abc",
    "s": b"bogus",
}


@pytest.mark.parametrize("field", sorted(QUEUED))
async def test_a_queued_task_with_a_bad_field_shows_as_a_bad_record(
    make_dash_app: Callable[..., App], field: str
) -> None:
    app = make_dash_app()

    @app.task(name="b.job")
    async def job(i: int) -> int:
        return i

    async with app, dashboard(app) as client:
        handle = await job.enqueue(1)
        await _corrupt(app, handle.id, field, QUEUED[field])
        info = await handle.info()
        assert info.problem is not None and field in info.problem
        page = await client.get(f"/tasks/{handle.id}", headers={"accept": "text/html"})
        assert page.status_code == 200 and "bad record" in page.text
        listed = await client.get(f"/tasks?queue={app.settings.queue}&status=queued")
        assert listed.status_code == 200
        if field != "s":  # a bogus status is not listed as queued
            assert "bad record" in listed.text and handle.id in listed.text


async def test_bad_results_and_errors_of_ended_tasks(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="b.ok")
    async def ok() -> int:
        return 1

    @app.task(name="b.fails", max_tries=1)
    async def fails() -> None:
        raise Fail("no")

    async with app, dashboard(app) as client:
        good, bad = await ok.enqueue(), await fails.enqueue()
        await app.drain()
        await _corrupt(app, good.id, "r", b"not json {")
        await _corrupt(app, bad.id, "e", b"[1, 2]")
        for handle in (good, bad):
            page = await client.get(f"/tasks/{handle.id}", headers={"accept": "text/html"})
            assert page.status_code == 200 and "bad record" in page.text
        queue = app.settings.queue
        assert "bad record" in (await client.get(f"/tasks?queue={queue}&status=succeeded")).text
        assert "bad record" in (await client.get(f"/dead?queue={queue}")).text
        with pytest.raises(TaskFailed) as caught:
            await bad.result()
        assert caught.value.reason == "undecodable"
        assert (await good.info()).status is TaskStatus.SUCCEEDED


async def _corrupt(app: App, task_id: str, field: str, value: bytes) -> None:
    broker = await app._client.broker()
    raw: Any = redis.asyncio.Redis.from_url(app.settings.redis_url or "")
    try:
        await raw.hset(broker.keyspace(app.settings.queue).task(task_id), field, value)
    finally:
        await raw.aclose()
