"""A task migrated to a newer version of its code, with the worker SIGKILLed on either side
of the migration's write (segue._faults.VERSION_POINTS): the record's version and the
upgraded state are written together or not at all, and a state is upgraded once.

Worker subprocesses of tests/apps/versions.py: the old code (version 1) writes the state,
the new code (version 2, migrate={1: n -> count = n * 10}) upgrades it.
"""

from __future__ import annotations

from typing import Any

import pytest

from segue import App
from tests._support import Engine, admin_client
from tests._workers import Fleet
from tests.integration.conftest import eventually
from tests.integration.test_durable_processes import state_of
from tests.integration.test_versions_processes import client

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]

KILLED = -9
# short, so the kills cost little: a lease that lapses under load only requeues a run that is
# killed anyway, or a run of the old code, which writes the same state again
LEASE = 0.5


async def versions_of(engine: Engine, app: App, task_id: str) -> tuple[Any, Any]:
    """The record's `v` and `v0` fields, read from the server (None when absent)."""
    db = admin_client(engine)
    try:
        key = f"{app.settings.prefix}:{{{app.settings.queue}}}:task:{task_id}"
        v, v0 = await db.hmget(key, "v", "v0")
    finally:
        await db.aclose()
    return v and v.decode(), v0 and v0.decode()


async def test_a_kill_on_either_side_of_a_migration_leaves_state_and_version_together(
    segue_valkey: Engine, queue_name: str
) -> None:
    engine = segue_valkey
    old_app, old = client(engine, queue_name, "old")
    new_app, _ = client(engine, queue_name, "new")
    env = {"SEGUE_FAULTPOINT_ONCE": "1"}
    with Fleet(
        "tests.apps.versions:app", engine.url, queue_name, concurrency=1, lease=LEASE, env=env
    ) as fleet:
        fleet.start(env={"VERSIONS_CODE": "old"})
        async with old_app, new_app:
            h = await old["counter"].enqueue()

            async def written() -> bool:
                return await state_of(engine, old_app, h.id) == {"n": 4}

            await eventually(written, timeout=20)
            fleet.terminate_all()

            new = {"VERSIONS_CODE": "new"}
            slot = fleet.start(env={**new, "SEGUE_FAULTPOINT": "before_migrate:kill"})
            assert fleet.wait_exit(slot) == KILLED
            # upgraded in memory only: the record is still version 1, for the old code too
            assert await state_of(engine, old_app, h.id) == {"n": 4}
            assert await versions_of(engine, old_app, h.id) == (None, None)

            fleet.restart(slot, env={**new, "SEGUE_FAULTPOINT": "after_migrate:kill"})
            assert fleet.wait_exit(slot) == KILLED
            # both moved in one step; v0 keeps the version it started under
            assert await state_of(engine, old_app, h.id) == {"count": 40}
            assert await versions_of(engine, old_app, h.id) == ("2", "1")

            fleet.restart(slot, env=new)
            # not migrated again (count would be 400, or the migration would fail on `n`)
            assert await h.result(timeout=20) == {"version": 1, "state": {"count": 40}}
