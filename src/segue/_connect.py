"""A worker's first connection: the server is waited for, not failed on."""

from __future__ import annotations

import asyncio
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
