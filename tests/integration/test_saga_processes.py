"""A saga across real worker processes: a worker SIGKILLed while a compensation runs loses
nothing, and every effect happens once (counted outside segue, on the ledger server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._support import Engine, admin_client
from tests._workers import Fleet
from tests.apps import sagas
from tests.integration.conftest import eventually
from tests.integration.test_workflow_processes import Ledger, gate_key, ledger_key, use

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(segue_engine: Engine, queue_name: str) -> Iterator[Fleet]:
    env = {"LEDGER_URL": segue_engine.admin_url, "LEDGER_KEY": ledger_key(queue_name)}
    with Fleet(
        "tests.apps.sagas:app", segue_engine.url, queue_name, concurrency=2, lease=1.0, env=env
    ) as f:
        yield f


async def test_a_worker_killed_during_compensation_loses_nothing_and_repeats_no_effect(
    segue_engine: Engine, queue_name: str, workers: Fleet
) -> None:
    ledger = Ledger(segue_engine, queue_name)
    app: App = use(sagas.app, segue_engine.url, queue_name)
    first = workers.start()
    async with app:
        wf = (
            sagas.reserve.call("o7").options(compensate=sagas.release.call())
            | sagas.charge.call(amount=30).options(
                compensate=sagas.refund.call(gate=gate_key(queue_name, "refund"))
            )
            | sagas.ship.call()
            | sagas.notify.call()
        )
        h = await wf.enqueue()
        refund_id = f"{h.id}.c2"
        await ledger.wait_for_label(refund_id, "refund")
        assert await h.status() is TaskStatus.COMPENSATING
        # the refund is done, its task not: the worker dies there
        workers.kill(first)
        await ledger.open_gate("refund")
        workers.start()
        with pytest.raises(TaskFailed):
            await h.result(timeout=20)
        assert await h.status() is TaskStatus.FAILED
        steps = await h.steps()

    refunds = await ledger.rows(refund_id)
    assert len(refunds) == 2  # run again after the kill
    assert [c.status if c else None for c in (s.compensation for s in steps)] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        None,
        None,
    ]
    client = admin_client(segue_engine)
    try:
        effects = [
            e.decode() for e in await client.lrange(f"{ledger_key(queue_name)}:effects", 0, -1)
        ]
    finally:
        await client.aclose()
    # each effect once, the compensations in reverse order
    assert effects == ["reserve", "charge", "refund payment-30", "release hold-o7"]
    assert not [r for r in await ledger.rows() if r.label == "notify"]


@pytest.mark.parametrize(
    "point", ["after_claim", "after_effect_before_complete", "after_complete_before_ack"]
)
async def test_a_compensation_worker_killed_at_a_crash_point_loses_nothing(
    segue_valkey: Engine, queue_name: str, point: str, tmp_path: Path
) -> None:
    """The compensations live on a queue of their own, served first by a worker that is
    SIGKILLed at `point` (its first hit of it is a compensation's); a second worker of that
    queue finishes them, and the saga ends FAILED with each effect once."""
    undo = f"{queue_name}-undo"
    ledger = Ledger(segue_valkey, queue_name)
    env = {"LEDGER_URL": segue_valkey.admin_url, "LEDGER_KEY": ledger_key(queue_name)}
    hits = tmp_path / "hits"
    faulty = {
        "SEGUE_FAULTPOINT": f"{point}:kill",
        "SEGUE_FAULTPOINT_ONCE": "1",
        "SEGUE_FAULTPOINT_LOG": str(hits),
    }
    app: App = use(sagas.app, segue_valkey.url, queue_name)
    with Fleet("tests.apps.sagas:app", segue_valkey.url, queue_name, lease=1.0, env=env) as fleet:
        fleet.start(2, queues=[queue_name])
        victim = fleet.start(2, queues=[undo], env=faulty)
        async with app:
            wf = (
                sagas.reserve.call("o8").options(
                    compensate=sagas.release.call().options(queue=undo)
                )
                | sagas.charge.call(amount=8).options(
                    compensate=sagas.refund.call().options(queue=undo)
                )
                | sagas.ship.call()
            )
            h = await wf.enqueue()

            async def died() -> bool:
                return not victim.alive()

            await eventually(died, timeout=20)
            assert point in hits.read_text()
            fleet.start(2, queues=[undo])  # the rescuer
            with pytest.raises(TaskFailed):
                await h.result(timeout=30)
            assert await h.status() is TaskStatus.FAILED
            steps = await h.steps()
    assert [s.compensation.status if s.compensation else None for s in steps] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.SUCCEEDED,
        None,
    ]
    client = admin_client(segue_valkey)
    try:
        raw = await client.lrange(f"{ledger_key(queue_name)}:effects", 0, -1)
    finally:
        await client.aclose()
    assert [e.decode() for e in raw] == ["reserve", "charge", "refund payment-8", "release hold-o8"]
    assert not [r for r in await ledger.rows() if r.label == "notify"]
