"""The dashboard's workflow page and list show a saga: COMPENSATING while its
compensations run (with no pause or cancel button: they would not stop them), then each
step's compensation beside the step."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from segue import App, TaskStatus
from tests.e2e.conftest import dashboard
from tests.integration.conftest import eventually, serving


async def test_the_workflow_page_shows_compensating_then_each_compensation(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    undo_gate = asyncio.Event()

    @app.task(name="pay")
    async def pay(cents: int) -> str:
        return f"payment-{cents}"

    @app.task(name="send", max_tries=1)
    async def send(payment: str) -> None:
        raise RuntimeError("no courier")

    @app.task(name="refund")
    async def refund(payment: str) -> str:
        await undo_gate.wait()
        return f"refunded {payment}"

    async with app, dashboard(app) as client:
        wf = await (pay.call(5).options(compensate=refund.call()) | send.call()).enqueue()
        async with serving(app):

            async def compensating() -> bool:
                return await wf.status() is TaskStatus.COMPENSATING

            await eventually(compensating)
            page = (await client.get(f"/workflows/{wf.id}")).text
            assert "s-compensating" in page
            assert 'value="cancel"' not in page and 'value="pause"' not in page
            listed = (await client.get(f"/workflows?queue={app.settings.queue}")).text
            assert "compensating" in listed
            undo_gate.set()
            assert await wf.wait_ended(timeout=10) is TaskStatus.FAILED
        page = (await client.get(f"/workflows/{wf.id}")).text
        cells = re.findall(
            r'<a href="/tasks/([^"]+)">refund</a> <span class="status s-(\w+)">', page
        )
        assert cells == [(f"{wf.id}.c1", "succeeded")]
