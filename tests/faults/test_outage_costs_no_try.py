"""A server outage while tasks call ctx (RELIABILITY §8 B): it is not the tasks' fault, so
it costs no try. A ctx call sends again for up to half a lease (what a lease outlives);
past that the run is requeued without spending a try."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from segue import TaskStatus
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.conftest import Report
from tests.faults.ledger import Ledger, LedgerServer
from tests.faults.test_server_faults import AofServer, pointed
from tests.faults.test_worker_faults import APP
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow

OUTAGE_S = 5.0


async def test_ctx_calls_during_a_server_outage_spend_no_try(
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """Two tasks call ctx.progress every 50 ms when the server is killed for 5 s and
    restarted from its AOF. Under a 30 s lease (15 s of resending) the call waits the outage
    out and the run goes on; under a 2 s lease (1 s) the run is requeued and runs again.
    Both end succeeded with tries 1."""
    (tmp_path / "server").mkdir()
    server = AofServer(tmp_path / "server", fsync="always")
    server.start()
    patient_q, brief_q = f"{queue_name}l", f"{queue_name}s"
    env = fault_ledger.env()
    patient = Fleet(APP, server.url, patient_q, lease=30.0, env=env, log_dir=tmp_path / "l")
    brief = Fleet(APP, server.url, brief_q, lease=2.0, env=env, log_dir=tmp_path / "s")
    try:
        with pointed(faults.app, server.url, patient_q) as app, patient, brief:
            patient.start(2)
            brief.start(2)
            async with app:
                waits = await faults.report.enqueue(8_000)
                requeued = await faults.report.options(queue=brief_q).enqueue(8_000)

                async def both_report() -> bool:
                    infos = [await waits.info(), await requeued.info()]
                    return all(i.progress is not None for i in infos)

                await eventually(both_report, timeout=20, interval=0.1)
                killed = server.kill()
                await asyncio.sleep(OUTAGE_S)
                up = server.start()
                for h in (waits, requeued):
                    assert await h.result(timeout=30) > 0
                infos = {"waits": await waits.info(), "requeued": await requeued.info()}
                runs = {
                    "waits": (await Ledger(fault_ledger, patient_q).read()).executions[waits.id],
                    "requeued": (await Ledger(fault_ledger, brief_q).read()).executions[
                        requeued.id
                    ],
                }
    finally:
        server.stop()
    fault_report.add(
        outage_ms=round((up - killed) * 1000),
        runs={k: len(v) for k, v in runs.items()},
        tries={k: i.tries for k, i in infos.items()},
    )
    for info in infos.values():
        assert info.status is TaskStatus.SUCCEEDED
        assert info.tries == 1, info.history
    assert len(runs["waits"]) == 1  # its ctx.progress waited the outage out
    assert len(runs["requeued"]) == 2  # stopped at half a lease, run again
    reasons = [t.reason for t in infos["requeued"].history if t.status is TaskStatus.QUEUED]
    assert reasons[-1] == "server unreachable"
