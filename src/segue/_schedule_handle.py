"""ScheduleHandle: one cron schedule by its id (`app.schedule(id)`): pause, resume, read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segue import _ops_actions, _scheduler
from segue._errors import TaskNotFound
from segue._keys import CronKeys

if TYPE_CHECKING:
    from segue._client import Client
    from segue._cron import ScheduleInfo


class ScheduleHandle:
    """A stored schedule: `await app.schedule("reports.daily").pause()`.

    A paused schedule skips its ticks: none is fired while it is paused, and none of them
    is caught up when it is resumed (even with `catch_up=True`); each skipped tick is noted
    (`ScheduleInfo.last_skipped`). The flag is on the server, so it holds for every worker,
    and outlives a worker restart and a re-declaration of the schedule (`@app.cron`).
    """

    __slots__ = ("_client", "id")

    def __init__(self, client: Client, schedule_id: str) -> None:
        self._client = client
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
        prefix = self._client.settings.prefix
        for info in await _scheduler.listing(prefix, await self._client.reads()):
            if info.id == self.id:
                return info
        raise self._not_found()

    async def _set(self, paused: bool) -> None:
        broker = await self._client.broker()
        ck = CronKeys(self._client.settings.prefix)
        if not await _ops_actions.set_schedule_paused(broker, ck, self.id, paused):
            raise self._not_found()

    def _not_found(self) -> TaskNotFound:
        return TaskNotFound(f"no schedule {self.id!r}: it was never stored, or was removed")
