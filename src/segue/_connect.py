"""A worker and a server that does not answer: waited for, not failed on.

At start, `wait_for_server` waits for the first connection; while serving, the claim loop's
`Outage` paces the round trips that fail and logs the outage once, then now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from segue import _clock
from segue._broker import server_unreachable
from segue._embedded import server_label
from segue._errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from segue._broker import Broker
    from segue._client import Client

log = logging.getLogger("segue.worker")


async def wait_for_server(
    client: Client, stopping: Callable[[], bool], outage_log_seconds: float
) -> Broker:
    """The client's broker; a server that does not answer yet (restarting, or started
    after the workers) is waited for, so a supervisor's restart does not race it. Other
    errors (a refused password, a bad URL) are raised at once."""
    delay = 0.1
    since: float | None = None
    said = 0.0
    while True:
        try:
            broker = await client.broker()
        except BrokerError as exc:
            if stopping() or not server_unreachable(exc):
                raise
            now = _clock.monotonic()
            if since is None:
                since = said = now
                log.warning("%s; the worker waits for it", exc)
            elif now - said >= outage_log_seconds:
                said = now
                log.warning(
                    "still waiting for %s (%.0f s)", server_label(client.settings), now - since
                )
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            continue
        if since is not None:
            log.warning("server reachable again after %.1f s", _clock.monotonic() - since)
        return broker


class Outage:
    """The claim loop's round trips while the server does not answer. Outcomes not sent
    are kept by the caller; resending them is safe because finish.lua is fenced by lease
    generation. The first failure retries at once (a dropped connection reconnects on the
    next call); later ones pause briefly first."""

    def __init__(self, log_seconds: float) -> None:
        self.log_seconds = log_seconds  # how often an outage is logged again
        self._since: float | None = None  # when round trips began to fail
        self._said = 0.0  # when the outage was last logged

    async def failed(self, exc: BrokerError, stopping: Callable[[], bool]) -> None:
        now = _clock.monotonic()
        if self._since is None:
            log.warning("server unavailable (%s); retrying", exc)
            self._since = self._said = now
            return
        if now - self._said >= self.log_seconds:  # not one line per try
            self._said = now
            log.warning("server still unavailable after %.0f s (%s)", now - self._since, exc)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while not stopping():
                    await asyncio.sleep(0.1)

    def answered(self) -> None:
        """A round trip went through: an outage, if any, is over."""
        if self._since is not None:
            log.warning("server reachable again after %.1f s", _clock.monotonic() - self._since)
            self._since = None
