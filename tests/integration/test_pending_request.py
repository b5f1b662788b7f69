"""A pause asked of a running task that has not reached a checkpoint yet is visible: in
TaskInfo and in `segue info`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from segue import App, Context, TaskStatus
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_workflow import _segue

pytestmark = pytest.mark.slow


async def test_a_pending_pause_shows_in_task_info_and_segue_info(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    go_on = asyncio.Event()
    started = asyncio.Event()

    @app.task(name="pending.long")
    async def long(ctx: Context) -> str:
        started.set()
        await go_on.wait()  # no checkpoint: a pause waits until the one below
        await ctx.checkpoint()
        return "done"

    async with app, serving(app):
        h = await long.enqueue()
        await asyncio.wait_for(started.wait(), 10)
        assert await h.pause(reason="maintenance") is TaskStatus.RUNNING
        info = await h.info()
        assert info.pending_request == "pause" and info.pending_request_at is not None
        shown = await asyncio.to_thread(_segue, "info", h.id, "--url", app.settings.redis_url or "")
        assert shown.returncode == 0, shown.stderr
        at = f"{info.pending_request_at:%Y-%m-%d %H:%M:%S}"
        assert f"pause requested at {at}, not carried out yet" in shown.stdout
        go_on.set()

        async def paused() -> bool:
            return await h.status() is TaskStatus.PAUSED

        await eventually(paused, timeout=10)
        assert (await h.info()).pending_request is None
        await h.cancel()
