"""ScheduleHandle: one cron schedule by its id (`app.schedule(id)`): pause, resume, read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segue import _ops_actions, _scheduler
from segue._errors import TaskNotFound
from segue._keys import CronKeys

if TYPE_CHECKING:
    from segue._app import App
    from segue._cron import ScheduleInfo


class ScheduleHandle:
    """A stored schedule: `await app.schedule("reports.daily").pause()`.

    A paused schedule skips its ticks: none is fired while it is paused, and none of them
    is caught up when it is resumed (even with `catch_up=True`); each skipped tick is noted
    (`ScheduleInfo.last_skipped`). The flag is on the server, so it holds for every worker,
    and outlives a worker restart and a re-declaration of the schedule (`@app.cron`).
    """

    __slots__ = ("_app", "id")

    def __init__(self, app: App, schedule_id: str) -> None:
        self._app = app
        self.id = schedule_id

    def __repr__(self) -> str:
        return f"<ScheduleHandle {self.id}>"

    async def pause(self) -> None:
        """Skip this schedule's ticks until `resume()`. Pausing a paused one changes nothing."""
        await self._set(True)

    async def resume(self) -> None:
        """Fire this schedule's ticks again, from its next one on."""
        await self._set(False)

    async def info(self) -> ScheduleInfo:
        for info in await _scheduler.listing(self._app, await self._app.broker()):
            if info.id == self.id:
                return info
        raise self._not_found()

    async def _set(self, paused: bool) -> None:
        broker = await self._app.broker()
        ck = CronKeys(self._app.settings.prefix)
        if not await _ops_actions.set_schedule_paused(broker, ck, self.id, paused):
            raise self._not_found()

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(f"no schedule {self.id!r}: it was never stored, or was removed")
