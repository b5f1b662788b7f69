"""R2 for sagas: the server comes back with a copy of its data taken while a saga was
compensating (a compensation running), after that compensation and the next had ended
and the workflow was over. The run after T is gone from the server: the workers take the
compensation back once its lease lapsed, the compensations run again, and the workflow
ends FAILED again; each effect (idempotent, on a server that is not rolled back) happens
once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._support import ACL_PASSWORD, ACL_USER, Engine, Server, add_acl_user, admin_client
from tests._workers import Fleet
from tests.apps import sagas
from tests.faults.test_rollback import _restore, _snapshot, aof_server  # noqa: F401
from tests.integration.test_workflow_processes import Ledger, gate_key, ledger_key, use

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = [pytest.mark.slow, pytest.mark.pairable]


async def test_a_saga_rolled_back_while_compensating_compensates_again_once_each(
    aof_server: Server,  # noqa: F811
    segue_valkey: Engine,
    queue_name: str,
    tmp_path: Path,
) -> None:
    url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{aof_server.port}/0"
    ledger = Ledger(segue_valkey, queue_name)
    env = {
        "LEDGER_URL": segue_valkey.admin_url,
        "LEDGER_KEY": ledger_key(queue_name),
        "SEGUE_RECONCILE_SECONDS": "0.5",
    }
    fleet = Fleet("tests.apps.sagas:app", url, queue_name, concurrency=2, lease=1.0, env=env)
    app: App = use(sagas.app, url, queue_name)
    copy = tmp_path / "copy"
    with fleet:
        fleet.start()
        async with app:
            wf = (
                sagas.reserve.call("o9").options(compensate=sagas.release.call())
                | sagas.charge.call(amount=12).options(
                    compensate=sagas.refund.call(gate=gate_key(queue_name, "refund"))
                )
                | sagas.ship.call()
            )
            h = await wf.enqueue()
            await ledger.wait_for_label(f"{h.id}.c2", "refund")
            _snapshot(aof_server, copy)  # T: compensating, the refund running
            await ledger.open_gate("refund")
            assert await h.wait_ended(timeout=20) is TaskStatus.FAILED
        aof_server.kill()
        _restore(aof_server, copy)
        aof_server.start()
        add_acl_user(aof_server.port)
        async with app:
            again = await app.workflow_handle(h.id)
            assert await again.status() is TaskStatus.COMPENSATING  # as at T
            with pytest.raises(TaskFailed):
                await again.result(timeout=30)
            assert await again.status() is TaskStatus.FAILED
            steps = await again.steps()
    assert [s.compensation.status if s.compensation else None for s in steps] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        None,
    ]
    assert len(await ledger.rows(f"{h.id}.c2")) == 2  # the refund ran again after T
    client: Any = admin_client(segue_valkey)
    try:
        raw = await client.lrange(f"{ledger_key(queue_name)}:effects", 0, -1)
    finally:
        await client.aclose()
    assert [e.decode() for e in raw] == [
        "reserve",
        "charge",
        "refund payment-12",
        "release hold-o9",
    ]
