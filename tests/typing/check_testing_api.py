"""Type-checked by mypy, never run: the health and testing helpers are typed."""

from __future__ import annotations

from typing import assert_type

from segue import App, Health, TaskInfo, Worker, WorkerInfo
from segue.testing import AppFactory, LocalServer, assert_history, start_server, worker

app = App("typing")


async def check(factory: AppFactory, info: TaskInfo) -> None:
    assert_type(await app.check(), Health)
    assert_type(await app.check("host-1-x", max_age=15.0, pid_file="w.pid"), Health)
    assert_type(await app.workers(), list[WorkerInfo])
    assert_type((await app.check()).worker, WorkerInfo | None)
    await app.check(max_age="15")  # type: ignore[arg-type]
    assert_type(factory(), App)
    assert_type(factory(app, concurrency=2), App)
    async with worker(app) as w:
        assert_type(w, Worker)
    assert_history(info, ["queued", "succeeded"])
    assert_type(start_server("/tmp/x"), LocalServer)
