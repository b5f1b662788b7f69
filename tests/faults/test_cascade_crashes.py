"""A cascade to sub-tasks cut mid-walk (segue._faults.CASCADE_POINTS): the client that sent
the cancel stops after its first batch, and the worker whose forwarder took the walk on is
SIGKILLed after the next one (`mid_cascade`). Half the tree is cancelled and the parent's
marker holds the rest; another worker finishes the walk, and the whole tree ends cancelled
with nothing running and no marker left.

A batch is CASCADE_BATCH (200) sub-tasks, so the tree has three: the client's, the killed
worker's, the last. Its sub-tasks are delayed an hour (they wait in the schedule, cheaply)
but for the first, which runs on the worker that is killed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskHandle, TaskStatus, _faults
from segue._broker import CASCADE_BATCH
from segue._faults import FaultInjected
from segue._keys import Keyspace
from tests._support import Engine, admin_client
from tests._workers import Fleet, Slot
from tests.apps import faults
from tests.integration.conftest import eventually

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

APP = "tests.apps.faults:app"
KILLED = -9
LEASE = 1.0  # the killed worker's running sub-task is reaped (and cancelled) after it
SUBTASKS = 2 * CASCADE_BATCH + 50


# the cluster variant runs in full mode: the same walk on one slot of a cluster (a tree is
# in one slot), where the single server already checks every rule in quick mode
@pytest.fixture(params=["segue_valkey", pytest.param("segue_cluster", marks=pytest.mark.full_only)])
def engine(request: pytest.FixtureRequest) -> Engine:
    found: Engine = request.getfixturevalue(request.param)
    return found


@pytest.fixture
def cascade_app(engine: Engine, queue_name: str) -> Iterator[App]:
    app = faults.app
    saved = app.settings
    app.settings = saved.replace(redis_url=engine.url, queue=queue_name, poll_seconds=0.2)
    yield app
    app.settings = saved


def sub_ids(root: str) -> list[str]:
    return [f"{root}.{k}" for k in range(1, SUBTASKS + 1)]


def read(path: Path) -> str:
    return path.read_text()


async def statuses(admin: Any, ks: Keyspace, ids: list[str]) -> list[str | None]:
    pipe = admin.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(ks.task(task_id), "s")
    return [s.decode() if s else None for s in await pipe.execute()]


async def half_walked(
    app: App, fleet: Fleet, admin: Any, ks: Keyspace, hits: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[TaskHandle[Any], Slot]:
    """A tree whose cancel's walk both its walkers left half-way: the root WAITING on
    SUBTASKS sub-tasks (the first running) is cancelled by this process, which stops after
    one batch (`mid_cascade:raise`), and the worker that runs the tree, whose forwarder
    takes the walk on, is SIGKILLed after the next (`mid_cascade:kill`). Returns the root
    and the killed worker's slot."""
    victim = fleet.start(
        2, env={"SEGUE_FAULTPOINT": "mid_cascade:kill", "SEGUE_FAULTPOINT_LOG": str(hits)}
    )
    await fleet.ready(victim)
    root = await faults.tree.enqueue(SUBTASKS - 1, running=1)
    subs = sub_ids(root.id)

    async def built() -> bool:
        if await root.status() is not TaskStatus.WAITING:
            return False
        return (await statuses(admin, ks, subs[:1]))[0] == "running"

    await eventually(built, timeout=30)
    monkeypatch.setattr(_faults, "_POINTS", {"mid_cascade": "raise"})
    try:
        with pytest.raises(FaultInjected):
            await root.cancel(reason="cut")
    finally:
        monkeypatch.setattr(_faults, "_POINTS", {})
    assert fleet.wait_exit(victim) == KILLED
    assert "mid_cascade kill" in read(hits)
    return root, victim


async def test_a_walk_cut_by_its_client_and_by_a_killed_worker_is_finished_by_another(
    engine: Engine,
    cascade_app: App,
    queue_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ks = Keyspace("segue", queue_name)
    admin: Any = admin_client(engine)
    fleet = Fleet(APP, engine.url, queue_name, lease=LEASE, log_dir=tmp_path / "logs")
    try:
        async with cascade_app:
            with fleet:
                root, _ = await half_walked(
                    cascade_app, fleet, admin, ks, tmp_path / "hits", monkeypatch
                )
                subs = sub_ids(root.id)
                # two batches reached (the running one was asked, and may have stopped
                # before its worker died), the rest is where it was; the marker says where
                # the walk goes on and the root's record that it is under way
                half = await statuses(admin, ks, subs)
                assert half[0] in ("running", "cancelled")
                assert Counter(half[1 : 2 * CASCADE_BATCH]) == {"cancelled": 2 * CASCADE_BATCH - 1}
                assert Counter(half[2 * CASCADE_BATCH :]) == {"scheduled": 50}
                marker = (await admin.hget(ks.base + "cascade", root.id)).decode()
                assert marker.startswith(f"cancel|{2 * CASCADE_BATCH + 1}|{SUBTASKS}|")
                assert await admin.hget(ks.task(root.id), "cw") == b"1"

                fleet.start(2)

                async def finished() -> bool:
                    return set(await statuses(admin, ks, subs)) == {"cancelled"}

                await eventually(finished, timeout=20)
                assert await root.status() is TaskStatus.CANCELLED
                assert await admin.hlen(ks.base + "cascade") == 0
                assert await admin.hget(ks.task(root.id), "cw") is None
                assert await admin.zcard(ks.leases) == 0
                assert await admin.zcard(ks.scheduled) == 0
    finally:
        await admin.aclose()
