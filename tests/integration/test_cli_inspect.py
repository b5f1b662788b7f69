"""The inspection commands as an operator runs them: status, queues, tasks, info, events,
purge (output piped: tab-separated, nothing cut)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from segue import App, Context, TaskStatus
from tests.integration.conftest import serving
from tests.integration.test_cli_workflow import _segue

pytestmark = pytest.mark.slow


async def test_inspection_commands_show_what_the_server_holds(
    segue_valkey: Any, queue_name: str
) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="cli.report")
    async def report(ctx: Context, day: str) -> str:
        await ctx.progress(2, 4)
        return f"report {day}"

    url = segue_valkey.url
    async with app:
        done = await report.enqueue("monday")
        await app.drain()
        waiting = [await report.enqueue(f"day{i}") for i in range(3)]

        status = _segue("status", "--url", url)
        assert status.returncode == 0, status.stderr
        line = next(row for row in status.stdout.splitlines() if row.startswith(queue_name))
        cells = line.split("\t")
        assert cells[0] == queue_name and cells[2] == "3"  # queued
        assert cells[7] == "1"  # succeeded

        assert queue_name in _segue("queues", "--url", url).stdout

        listed = _segue("tasks", "--url", url, "--queue", queue_name, "--status", "queued")
        assert listed.returncode == 0, listed.stderr
        assert {h.id for h in waiting} <= set(listed.stdout.split())

        shown = _segue("info", done.id, "--url", url)
        assert shown.returncode == 0, shown.stderr
        assert "succeeded" in shown.stdout and "report monday" in shown.stdout
        assert "progress 2/4" in shown.stdout
        assert "args ['monday']" in shown.stdout
        assert "task.progress" in shown.stdout and "task.succeeded" in shown.stdout

        events = _segue("events", "--url", url, "-q", queue_name, "--since", "0", "-n", "4")
        assert events.returncode == 0, events.stderr
        kinds = [row.split()[2] for row in events.stdout.splitlines()]
        assert kinds == ["task.enqueued", "task.started", "task.progress", "task.succeeded"]

        as_json = json.loads(_segue("info", done.id, "--url", url, "--json").stdout)
        assert as_json["status"] == "succeeded" and as_json["result"] == "report monday"
        assert as_json["progress"] == [2.0, 4.0]
        kinds_json = [e["kind"] for e in as_json["events"]]
        assert kinds_json == ["task.enqueued", "task.started", "task.progress", "task.succeeded"]
        listed_json = _segue("tasks", "--url", url, "-q", queue_name, "--json").stdout
        assert {t["id"] for t in json.loads(listed_json)} == {h.id for h in waiting}
        await app.queue().pause()  # the worker below must not take the waiting tasks
        async with serving(app) as running_worker:
            await asyncio.wait_for(running_worker.ready.wait(), 10)  # registered
            state = json.loads(_segue("status", "--url", url, "--json").stdout)
            mine = next(q for q in state["queues"] if q["queue"] == queue_name)
            assert mine["succeeded"] == 1 and mine["state"] == "paused"
            assert any(queue_name in w["queues"] for w in state["workers"])
            workers = json.loads(_segue("workers", "--url", url, "--json").stdout)
            assert any(queue_name in w["queues"] for w in workers)
        unknown = _segue("info", f"{queue_name}:nosuch", "--url", url)
        assert unknown.returncode == 1
        first, *rest = unknown.stderr.splitlines()
        assert first.startswith("server: redis://")  # every command names its server first
        assert len(rest) == 1 and rest[0].startswith("error: ") and "no task" in rest[0]
        bad = _segue("tasks", "--url", url, "--status", "sleeping")
        assert bad.returncode == 2 and "'sleeping' is not one of" in bad.stderr

        sid = await app.schedule(report.call("weekly"), cron="0 9 * * mon", id=f"{queue_name}-w")
        try:
            listed = _segue("schedules", "--url", url)
            row = next(r for r in listed.stdout.splitlines() if r.startswith(sid))
            assert row.split("\t")[1:4] == ["cli.report", queue_name, "0 9 * * mon"]
            removed = _segue("unschedule", sid, "--url", url)
            assert removed.returncode == 0 and f"schedule {sid}: removed" in removed.stdout
            assert _segue("unschedule", sid, "--url", url).returncode == 1
        finally:
            await app.unschedule(sid)

        purged = _segue("purge", queue_name, "--yes", "--url", url)
        assert purged.returncode == 0, purged.stderr
        assert f"queue {queue_name}: 3 task(s) cancelled" in purged.stdout
        assert [await h.status() for h in waiting] == [TaskStatus.CANCELLED] * 3
        assert await done.status() is TaskStatus.SUCCEEDED
