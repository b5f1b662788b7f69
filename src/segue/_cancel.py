"""Stopping background loops whose cancellation Python 3.11 can lose.

On 3.11, `asyncio.wait_for` returns the inner result when it completes in the same loop
turn as a `cancel()`, and the CancelledError is never raised (fixed in 3.12). redis-py's
cluster client waits that way, so a worker's reconcile or heartbeat loop, cancelled while a
cluster call was ending, ran on forever and the worker never stopped. Whoever stops such a
loop cancels it again until it ends (`cancel_and_wait`): the loops themselves need not
check. Used by the worker's services (_services.py) and by the pub/sub listener.
"""

from __future__ import annotations

import asyncio
from typing import Any

RESEND = 0.1  # seconds between cancellations of a task that has not ended yet


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for its end, cancelling it again each RESEND seconds while
    it runs on (a cancellation lost on the way); its result or error is dropped."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RESEND)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved
