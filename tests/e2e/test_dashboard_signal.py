"""The task page's signal form: it shows what a task waits for, and sends a signal once
per form shown (a form sent twice delivers once)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from segue import App, Context, TaskStatus
from tests.e2e.conftest import act, dashboard


async def test_the_task_page_sends_a_signal_once_per_form(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="dash.approve")
    async def approve(ctx: Context) -> Any:
        return [await ctx.wait_signal("approval"), await ctx.wait_signal("approval")]

    async with app, dashboard(app) as client:
        h = await approve.enqueue()
        await app.drain()
        assert await h.status() is TaskStatus.WAITING
        page = (await client.get(f"/tasks/{h.id}")).text
        assert "signal:approval" in page
        assert 'name="name" required maxlength="200" value="approval"' in page
        match = re.search(r'name="signal_id" value="([0-9a-f]+)"', page)
        assert match
        form = {"action": "signal", "id": h.id, "name": "approval", "signal_id": match[1]}
        await act(client, "task", **form, data='{"ok": true}')
        await act(client, "task", **form, data='{"ok": true}')  # the same form again
        await app.drain()
        assert await h.status() is TaskStatus.WAITING  # the second wait got nothing
        bad = await act(client, "task", action="signal", id=h.id, name="approval", data="{")
        assert bad.status_code == 303
        await act(client, "task", action="signal", id=h.id, name="approval", data="2")
        await app.drain()
        assert await h.result(timeout=5) == [{"ok": True}, 2]
