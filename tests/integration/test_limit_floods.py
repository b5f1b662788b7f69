"""A flood of one limited task name never blocks other tasks behind it (issue 20): a claim
moves the tasks its name's limit holds back into the name's own lane, so however many
there are, an unlimited task enqueued after them starts at once. Single server and
cluster (segue_engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from segue import App
from tests._support import keys_of
from tests.integration.conftest import eventually, serving

FLOOD = 300  # over the 100 held tasks the claim used to look past


async def test_a_flood_held_by_its_concurrency_does_not_block_an_unlimited_task(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    release = asyncio.Event()
    running = 0
    most = 0
    started: list[int] = []

    @app.task(name="one_at_a_time", concurrency=1)
    async def one_at_a_time(i: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        started.append(i)
        await release.wait()
        running -= 1

    @app.task(name="free")
    async def free() -> str:
        return "ran"

    async with app:
        await app.enqueue_many([one_at_a_time.call(i) for i in range(FLOOD)])
        # by name too: a producer without the definition, behind the flood
        sent = await app.send("one_at_a_time", FLOOD)
        after = await free.enqueue()
        async with serving(app, concurrency=4):
            # the first of the flood holds the only slot of its name, and the unlimited
            # task behind the other 299 runs all the same
            assert await after.result(timeout=10) == "ran"
            assert started == [0]
            release.set()
            await sent.result(timeout=60)
        assert most == 1
        # first in, first out within the name, the task sent by name last
        assert started == list(range(FLOOD + 1))
    # the name's lane is gone once empty
    q = app.settings.queue
    assert await keys_of(segue_engine, f"*{{{q}}}:lane:*") == []
    assert await keys_of(segue_engine, f"*{{{q}}}:ring:*") == []


async def test_a_flood_held_by_its_rate_does_not_block_an_unlimited_task(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(name="slow_rate", rate_limit="2/s")
    async def slow_rate(i: int) -> None:
        ran.append(i)

    @app.task(name="free")
    async def free() -> str:
        return "ran"

    async with app:
        await app.enqueue_many([slow_rate.call(i) for i in range(FLOOD)])
        after = await free.enqueue()
        async with serving(app, concurrency=4):
            assert await after.result(timeout=10) == "ran"
            await eventually(lambda: asyncio.sleep(0, len(ran) >= 2), timeout=10)
        # the rate held: about two a second (the burst of one, then one per half second)
        assert len(ran) < FLOOD
        assert ran == sorted(ran)
