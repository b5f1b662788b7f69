"""The checker finds what it exists to find: a run with a lost task, a phantom, a double
success and an unexplained re-run, made by hand, is reported as such."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio

from segue._keys import Keyspace
from tests._support import Engine
from tests.apps import faults
from tests.faults.checker import check
from tests.faults.ledger import History, Ledger, LedgerServer

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable


async def test_the_checker_reports_lost_phantom_double_success_and_unbounded_reruns(
    segue_valkey: Engine, fault_ledger: LedgerServer, queue_name: str
) -> None:
    saved = faults.app.settings
    faults.app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name)
    ledger: Any = redis.asyncio.Redis.from_url(fault_ledger.url)
    admin: Any = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    try:
        async with faults.app as app:
            history = History(app, queue_name)
            await history.enqueue(faults.sleep.call(1), "done-twice")
            await history.enqueue(faults.sleep.call(1), "never-ran")
            await history.enqueue(faults.sleep.call(1), "still-queued")
        keys = ("done-twice", "never-ran", "still-queued")
        done, lost, queued = (history.task_id(k) for k in keys)
        phantom = history.task_id("nobody-enqueued-me")
        ks = Keyspace("segue", queue_name)
        # `done` ran twice with no lease lost, and its record says it succeeded twice
        for n, task_id in enumerate([done, done, phantom]):
            await ledger.rpush(faults.EXEC + task_id, f"w-1-x {n + 1} 1 1000 2000")
            await ledger.sadd(faults.RAN + queue_name, task_id)
            await ledger.set(faults.EFFECT + task_id, "w-1-x 1", nx=True)
        twice = "queued|1|\nrunning|2|w\nsucceeded|3|\nrunning|4|w\nsucceeded|5|\n"
        await admin.hset(ks.task(done), mapping={"s": "succeeded", "h": twice})

        verdict = await check(
            history=history,
            effects=await Ledger(fault_ledger, queue_name).read(),
            admin_url=segue_valkey.admin_url,
            queue=queue_name,
            leaks=True,
        )
    finally:
        faults.app.settings = saved
        await ledger.aclose()
        await admin.aclose()

    assert verdict.lost == sorted([lost, queued])
    assert verdict.phantom == [phantom]
    assert verdict.dup_effect == [done]
    assert verdict.bound_violations == [done]
    assert verdict.dup_exec == 1 and verdict.max_exec == 2
    assert verdict.stuck == sorted([lost, queued])
    assert verdict.not_succeeded == {lost: "queued", queued: "queued"}
    # the hand-made success left its entry in the queued list: three entries, not two
    assert verdict.leaks is not None and verdict.leaks.queued == 3
    figures = verdict.figures()
    assert figures["lost"] == 2 and figures["dup_bound_ok"] is False
