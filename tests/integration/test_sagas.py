"""Sagas: a workflow step's compensation (`.options(compensate=...)`) runs when the workflow
fails or is cancelled, for the steps that succeeded, in reverse order. Run on a single
server, on the cluster, and on Redis when it is on PATH."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from segue import App, ConfigurationError, TaskFailed, TaskStatus
from tests.integration.conftest import eventually, serving


def _saga(app: App, effects: list[str], *, fail_at: str = "ship") -> tuple[object, ...]:
    """reserve, charge, ship, notify: each records its effect (outside segue), the one
    named `fail_at` fails; reserve and charge have compensations."""

    @app.task(name="reserve")
    async def reserve(order: str) -> str:
        effects.append("reserve")
        return f"hold-{order}"

    @app.task(name="charge")
    async def charge(hold: str, amount: int) -> str:
        effects.append("charge")
        return f"payment-{amount}"

    @app.task(name="ship", max_tries=1)
    async def ship(payment: str) -> str:
        if fail_at == "ship":
            raise RuntimeError("no courier")
        effects.append("ship")
        return "parcel"

    @app.task(name="notify")
    async def notify(parcel: str) -> None:
        effects.append("notify")

    @app.task(name="release")
    async def release(hold: str, reason: str) -> None:
        effects.append(f"release {hold} {reason}")

    @app.task(name="refund")
    async def refund(payment: str) -> None:
        effects.append(f"refund {payment}")

    return reserve, charge, ship, notify, release, refund


async def test_a_saga_failing_at_step_3_compensates_steps_2_then_1(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    effects: list[str] = []
    reserve, charge, ship, notify, release, refund = _saga(app, effects)
    async with app:
        wf = (
            reserve.call("o1").options(compensate=release.call(reason="failed"))  # type: ignore[attr-defined]
            | charge.call(amount=30).options(compensate=refund.call())  # type: ignore[attr-defined]
            | ship.call()  # type: ignore[attr-defined]
            | notify.call()  # type: ignore[attr-defined]
        )
        h = await wf.enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed):
                await h.result(timeout=10)
        assert effects == ["reserve", "charge", "refund payment-30", "release hold-o1 failed"]
        assert await h.status() is TaskStatus.FAILED
        steps = await h.steps()
        assert [s.status for s in steps] == ["succeeded", "succeeded", "failed", "failed"]
        comps = [s.compensation for s in steps]
        assert comps[0] is not None and comps[0].name == "release"
        assert comps[1] is not None and comps[1].name == "refund"
        assert comps[0].status is comps[1].status is TaskStatus.SUCCEEDED
        assert comps[0].workflow == h.id
        assert comps[2] is None and comps[3] is None
