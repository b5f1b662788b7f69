"""The worker's services and their failure policy (segue._services.POLICY): a failing
side service is restarted with backoff while tasks go on; a failing claim loop or lease
thread stops the worker cleanly, saying which part failed and why."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
import redis.asyncio

from segue import App, TaskStatus, _faults
from tests._workers import Fleet
from tests.apps import procs
from tests.integration.conftest import eventually, serving


def _app(url: str, queue: str, **overrides: Any) -> App:
    return App("test", redis_url=url, queue=queue, poll_seconds=0.2, **overrides)


async def test_a_failing_forwarder_is_restarted_with_backoff_while_tasks_go_on(
    segue_valkey: Any,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app(segue_valkey.url, queue_name)
    other = f"{queue_name}b"

    @app.task(name="inc")
    async def inc(x: int) -> int:
        return x + 1

    # every pass of the forwarder raises until the test removes the point
    monkeypatch.setitem(_faults._POINTS, "forwarder_pass", "raise")
    caplog.set_level(logging.ERROR, logger="segue.worker")
    delays: list[float] = []

    async def restarted_three_times() -> bool:
        delays[:] = [
            float(m)
            for m in re.findall(r"its forwarder failed: FaultInjected.*?in ([\d.]+) s", caplog.text)
        ]
        return len(delays) >= 3

    async with app, serving(app, queues=[queue_name, other]) as worker:
        handles = await app.enqueue_many([inc.call(i) for i in range(20)])
        assert [await h.result(timeout=10) for h in handles] == list(range(1, 21))
        await eventually(restarted_three_times, timeout=15)
        assert delays[:3] == [0.5, 1.0, 2.0]  # the backoff doubles
        # meanwhile a chain across queues waits: its crossing is the forwarder's job
        chain = await (inc.call(1) | inc.options(queue=other)).enqueue()
        monkeypatch.delitem(_faults._POINTS, "forwarder_pass")
        assert await chain.result(timeout=15) == 3  # restarted, it forwards again
        assert worker.finished >= 22
    assert "forwarder failed" in caplog.text and "stops" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "part"),
    [("after_complete_before_ack", "claim loop"), ("lease_thread", "lease thread")],
)
async def test_a_failing_claim_loop_or_lease_thread_stops_the_worker_cleanly(
    segue_valkey: Any, queue_name: str, point: str, part: str
) -> None:
    procs.app.settings = procs.app.settings.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2
    )
    fleet = Fleet(
        "tests.apps.procs:app",
        segue_valkey.url,
        queue_name,
        lease=1.5,
        grace=30.0,  # a failure requeues at once, not after this
        log_level="info",
        env={
            "LEDGER_URL": segue_valkey.admin_url,
            "SEGUE_FAULTPOINT": f"{point}:raise",
            "SEGUE_FAULTPOINT_ONCE": "1",
            "COLUMNS": "300",  # log lines not wrapped
        },
    )
    admin = redis.asyncio.Redis.from_url(segue_valkey.admin_url)

    async def started() -> bool:  # tests.apps.procs writes a row per run
        return bool(await admin.llen(f"segue:ledger:{queue_name}") == 1)

    async with procs.app:
        with fleet:
            long = await procs.nap.enqueue(60.0)
            worker = fleet.start()
            try:
                await eventually(started, timeout=20)
            finally:
                await admin.aclose()
            # the claim loop fails on the reply of its first finish; the lease thread at
            # its first turn (a third of a lease after the start)
            await procs.nap.enqueue(0.01)
            assert await asyncio.to_thread(fleet.wait_exit, worker, 20) == 1
            text = " ".join(fleet.log(worker).split())
        failed = f"its {part} failed: FaultInjected: fault injected at {point}"
        assert re.search(rf"worker \S+ stops: {failed}", text), text
        assert re.search(rf"error: worker \S+ stopped: {failed}", text), text
        # the long task was requeued at once (not left to its lease), without spending a try
        info = await long.info()
        assert info.status is TaskStatus.QUEUED
        assert info.tries == 0
        assert info.history[-1].reason == "worker shutdown"
        # it unregistered on its way out (other tests' workers may share the server)
        assert not [w for w in await procs.app.workers() if w.id.startswith(worker.id_prefix)]


async def test_a_graceful_stop_leaves_no_task_unacknowledged(
    segue_valkey: Any, queue_name: str
) -> None:
    """Stopped with runs under way: those that end within the grace are recorded as
    succeeded, the others requeued; no lease is left and the worker's record is gone."""
    app = _app(segue_valkey.url, queue_name, shutdown_grace_seconds=2.0)

    @app.task(name="nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async with app:
        worker = app.worker(concurrency=8)
        running = asyncio.create_task(worker.run())
        await worker.ready.wait()
        quick = await app.enqueue_many([nap.call(0.5) for _ in range(6)])
        slow = await app.enqueue_many([nap.call(60.0) for _ in range(2)])

        async def all_running() -> bool:
            return bool(worker.running == 8)

        await eventually(all_running, timeout=10)
        worker.stop()
        assert await running == 8  # finished runs, requeued ones included
        assert [await h.status() for h in quick] == [TaskStatus.SUCCEEDED] * 6
        for h in slow:
            info = await h.info()
            assert info.status is TaskStatus.QUEUED and info.tries == 0
            assert info.history[-1].reason == "worker shutdown"
        broker = await app._client.broker()
        assert await broker.client.exists(broker.keyspace(queue_name).leases) == 0
        assert (await app.queue_counts())["running"] == 0
        assert worker.id not in [w.id for w in await app.workers()]
