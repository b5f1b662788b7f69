"""Payloads by reference across crashes (segue._faults.OFFLOAD_POINTS): a worker SIGKILLed
between writing a result's chunks and sending the outcome that refers to them leaves only
chunks with a pending TTL (the bounded sweep: the server expires them within
PENDING_SECONDS); the run after it stores its own, and the task ends with one kept set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskStatus
from segue._keys import Keyspace
from segue._offload import PENDING_SECONDS
from tests._support import Engine, admin_client, keys_of
from tests._workers import Fleet
from tests.apps import offload
from tests.integration.conftest import eventually

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

LEASE = 1.0
OFFLOAD = 64 * 1024


# the cluster variant runs in full mode (scripts/faults --full): the same kills in one slot of
# a cluster, where the single server checks every rule in quick mode
@pytest.fixture(params=["segue_valkey", pytest.param("segue_cluster", marks=pytest.mark.full_only)])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def client_app(engine: Engine, queue_name: str) -> Iterator[App]:
    app = offload.app
    saved = app.settings
    app.settings = saved.replace(
        redis_url=engine.url, queue=queue_name, poll_seconds=0.1, offload_bytes=OFFLOAD
    )
    yield app
    app.settings = saved


async def _true(value: bool) -> bool:
    return value


async def test_a_kill_between_a_results_chunks_and_its_outcome_leaves_only_a_pending_key(
    engine: Engine, client_app: App, queue_name: str, tmp_path: Path
) -> None:
    hits = tmp_path / "hits"
    env = {
        "SEGUE_FAULTPOINT_ONCE": "1",
        "SEGUE_FAULTPOINT_LOG": str(hits),
        "SEGUE_OFFLOAD_BYTES": str(OFFLOAD),
    }
    ks = Keyspace("segue", queue_name)
    n = 3 * OFFLOAD
    with Fleet("tests.apps.offload:app", engine.url, queue_name, lease=LEASE, env=env) as fleet:
        async with client_app:
            handle = await offload.bulk.enqueue(n)
            victim = fleet.start(env={"SEGUE_FAULTPOINT": "after_offload_put:kill"})
            await eventually(lambda: _true(hits.exists()), timeout=15)
            victim.proc.wait(timeout=10)
            [orphan] = await keys_of(engine, ks.blob(handle.id, "*"))
            fleet.start()  # a worker with no fault point runs it again once the lease lapses
            assert await handle.result(timeout=30) == "r" * n
            info = await handle.info()
            blobs = await keys_of(engine, ks.blob(handle.id, "*"))
            client: Any = admin_client(engine)
            try:
                ttls = {k: await client.pttl(k) for k in blobs}
                record_ttl = await client.pttl(ks.task(handle.id))
            finally:
                await client.aclose()
    assert info.status is TaskStatus.SUCCEEDED and info.offloaded == {"result": n + 2}
    # the killed run's chunks: never adopted, gone within the pending TTL
    assert orphan in ttls and 0 < ttls[orphan] <= PENDING_SECONDS * 1000
    # the run that ended it: its chunks kept as long as the record
    [kept] = [k for k in blobs if k != orphan]
    assert abs(ttls[kept] - record_ttl) < 5_000
