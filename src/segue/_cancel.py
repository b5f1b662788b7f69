"""Stopping background loops whose cancellation Python 3.11 can lose.

On 3.11, `asyncio.wait_for` returns the inner result when it completes in the same loop
turn as a `cancel()`, and the CancelledError is never raised (fixed in 3.12). redis-py's
cluster client waits that way, so a worker's reconcile or heartbeat loop, cancelled while a
cluster call was ending, ran on forever and the worker never stopped. The task still counts
the request (`Task.cancelling()`): loops check it at each turn.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task was cancelled but the error got lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def sleep(seconds: float) -> None:
    """`asyncio.sleep` for a loop's turn, honouring a cancellation lost before it."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)
