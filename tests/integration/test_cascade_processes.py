"""Cascade to sub-tasks across real worker processes (issue 17, part 2): the cancel of the
root of a 3-level tree reaches every level, also the sub-tasks of a worker SIGKILLed just
before, and leaves nothing running and no cascade marker. Workers are `python -m segue
worker tests.apps.workflows:app` subprocesses (see test_workflow_processes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from segue import App, TaskStatus
from tests._support import Engine, admin_client
from tests._workers import Fleet
from tests.apps import workflows
from tests.integration.conftest import eventually
from tests.integration.test_workflow_processes import Ledger, fleet, gate_key, use

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    with fleet(segue_valkey.url, queue_name, segue_valkey.admin_url) as f:
        yield f


async def test_cancelling_a_tree_reaches_the_sub_tasks_of_a_killed_worker(
    workers: Fleet, segue_valkey: Engine, queue_name: str
) -> None:
    ledger = Ledger(segue_valkey, queue_name)
    slots = [workers.start(), workers.start()]
    app: App = use(workflows.app, segue_valkey.url, queue_name)
    async with app:
        h = await workflows.branch.enqueue(2, gate_key(queue_name, "never"))
        parents = [f"{h.id}.1", f"{h.id}.2"]
        leaves = [f"{p}.{j}" for p in parents for j in (1, 2)]
        for leaf in leaves:
            await ledger.wait_for_label(leaf, "start", timeout=15)
        # a worker running some of the leaves dies first: their cancel waits for their lease
        rows = await ledger.rows(leaves[0])
        victim = next(s for s in slots if any(r.by(s) for r in rows))
        workers.kill(victim)
        assert await h.cancel() is TaskStatus.CANCELLED

        async def all_cancelled() -> bool:
            ids = [*parents, *leaves]
            return all(
                [await (await app.task_handle(i)).status() is TaskStatus.CANCELLED for i in ids]
            )

        await eventually(all_cancelled, timeout=15)
        assert not any(r.label == "end" for r in await ledger.rows())  # no leaf finished
        ks = (await app._client.broker()).keyspace(queue_name)
        client = admin_client(segue_valkey)
        try:
            assert await client.zcard(ks.leases) == 0
            assert await client.hlen(ks.base + "cascade") == 0
        finally:
            await client.aclose()
