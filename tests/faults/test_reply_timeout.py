"""A server that stops answering without closing the connection (a dead host, a partition)
is noticed within `reply_timeout_seconds`, not when TCP gives up minutes later."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from segue import App, BrokerError, TaskStatus
from tests._support import Engine
from tests.faults.proxy import FaultProxy


@pytest.fixture
def proxy(segue_valkey: Engine, fault_seed: int) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as p:
        yield p


async def test_a_silent_server_drops_the_connection_and_the_next_call_reconnects(
    proxy: FaultProxy, segue_valkey: Engine, queue_name: str
) -> None:
    app = App(
        "silent",
        redis_url=proxy.url_for(segue_valkey.url),
        queue=queue_name,
        reply_timeout_seconds=1.0,
    )

    @app.task(name="silent.noop")
    async def noop() -> None:
        return None

    async with app:
        await noop.enqueue()  # connected through the proxy
        proxy.blackhole()  # the socket stays open; nothing comes back
        started = time.monotonic()
        with pytest.raises(BrokerError, match=r"no reply from the server within 1 s"):
            await noop.enqueue()
        # the call and its one resend on a new connection each wait the timeout
        assert time.monotonic() - started < 4.0
        proxy.heal()
        h = await noop.enqueue()
        assert await h.status() is TaskStatus.QUEUED
