"""Type-checked by mypy, never run: @app.cron takes only functions callable with no
arguments (besides ctx), and schedules are typed."""

from __future__ import annotations

from datetime import datetime
from typing import assert_type

from segue import App, AsyncTask, Context, ScheduleHandle, ScheduleInfo, SyncTask

app = App("typing-cron")


@app.cron("30 9 * * mon-fri", name="reports.daily", tz="Europe/Lisbon")
async def daily() -> int:
    return 1


@app.cron("@hourly", name="reports.hourly", catch_up=True, max_tries=1)
def hourly(ctx: Context) -> str:
    return ctx.task_id


@app.cron("*/5 * * * *", name="reports.bad")  # type: ignore[arg-type]
async def needs_an_argument(x: int) -> int:
    return x


@app.task(name="math.double")
def double(x: int) -> int:
    return 2 * x


async def check() -> None:
    assert_type(daily, AsyncTask[[], int])
    assert_type(hourly, SyncTask[[], str])
    sid = await app.schedule(double.call(2), cron="*/5 * * * *")
    assert_type(sid, str)
    await app.schedule(daily, cron="0 * * * *", tz="UTC", id="daily-too", catch_up=True)
    assert_type(await app.unschedule(sid), bool)
    infos = await app.schedules()
    assert_type(infos, list[ScheduleInfo])
    assert_type(infos[0].next_run, datetime | None)
    await app.schedule(double.call(2), crons="* * * * *")  # type: ignore[call-overload]
    handle = app.schedule(sid)
    assert_type(handle, ScheduleHandle)
    await handle.pause()
    await handle.resume()
    assert_type((await handle.info()).paused, bool)
