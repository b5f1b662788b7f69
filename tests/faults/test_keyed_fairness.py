"""Keyed limits and fairness across three worker processes (issue 20): `segue worker
tests.apps.limits:app` on one server (the contract tests of
tests/integration/test_keyed_limits.py run the same on the cluster, in-process). Quick
sizes in CI; with `scripts/faults --full` the flood is 20,000 tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from segue import App
from tests._support import Engine, admin_client
from tests._workers import Fleet
from tests.apps import limits
from tests.faults.conftest import Scale
from tests.integration.conftest import eventually

pytestmark = [pytest.mark.slow, pytest.mark.serial]


@pytest.fixture
def workers(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    env = {"LEDGER_URL": segue_valkey.admin_url}
    with Fleet("tests.apps.limits:app", segue_valkey.url, queue_name, lease=2.0, env=env) as f:
        yield f


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> App:
    limits.app.settings = limits.app.settings.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2
    )
    return limits.app


async def test_three_worker_processes_never_run_more_than_2_per_key_while_other_keys_run(
    workers: Fleet, client_app: App, segue_valkey: Engine, queue_name: str
) -> None:
    procs = [workers.start(concurrency=8) for _ in range(3)]
    await workers.ready(*procs)
    tenants = [f"t{i}" for i in range(4)]
    async with client_app:
        hs = await client_app.enqueue_many(
            [limits.tenant_bounded.call(t, 0.05) for _ in range(10) for t in tenants]
        )
        client = admin_client(segue_valkey)
        samples: list[dict[str, int]] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                vals = await asyncio.gather(
                    *(client.get(limits.key(queue_name, f"running:{t}")) for t in tenants)
                )
                samples.append({t: int(v or 0) for t, v in zip(tenants, vals, strict=True)})
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            for h in hs:
                await h.result(timeout=30)
            done.set()
            await sampler
            most = {
                t: int(await client.get(limits.key(queue_name, f"most:{t}")) or 0) for t in tenants
            }
        finally:
            done.set()
            await client.aclose()
    assert all(v <= 2 for s in samples for v in s.values()), samples
    assert most == dict.fromkeys(tenants, 2)  # reached by every key, never exceeded
    assert any(sum(1 for v in s.values() if v) >= 2 for s in samples)  # keys ran side by side


async def test_a_key_enqueued_behind_a_flood_starts_within_its_turns(
    workers: Fleet, client_app: App, segue_valkey: Engine, queue_name: str, fault_scale: Scale
) -> None:
    """Two busy keys of weight 1 take turns: the k-th task of B (enqueued after all of A's)
    starts by the 2k-th start after B's enqueue (one worker slot, so starts are in order)."""
    flood = fault_scale.pick(2_000, 20_000)
    async with client_app:
        for start in range(0, flood, 1000):
            await client_app.enqueue_many(
                [limits.flood.call("A", i) for i in range(start, start + 1000)]
            )
        await client_app.enqueue_many([limits.flood.call("B", i) for i in range(20)])
        proc = workers.start(concurrency=1)
        await workers.ready(proc)
        client = admin_client(segue_valkey)
        try:

            async def b_done() -> bool:
                rows = await client.lrange(limits.key(queue_name, "order"), 0, -1)
                return sum(1 for r in rows if r.startswith(b"B ")) == 20

            await eventually(b_done, timeout=60)
            rows = await client.lrange(limits.key(queue_name, "order"), 0, -1)
        finally:
            await client.aclose()
    positions = [k for k, r in enumerate(rows) if r.startswith(b"B ")]
    for k, at in enumerate(positions, start=1):
        assert at < 2 * k + 1, (k, at, positions[:5])
