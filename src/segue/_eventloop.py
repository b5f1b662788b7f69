"""The event loop a worker runs on: asyncio's own, or uvloop when the settings ask for it.

uvloop is opt-in (the `event_loop` setting), never picked because it happens to be
installed: a loop is part of what a deployment runs, and changing it should be a choice.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from segue._errors import ConfigurationError

EventLoop = Literal["asyncio", "uvloop"]


def check_event_loop(name: str) -> EventLoop:
    if name not in ("asyncio", "uvloop"):
        raise ConfigurationError(f"event_loop {name!r} is not one of asyncio, uvloop")
    return name  # type: ignore[return-value]


def runner(name: EventLoop) -> asyncio.Runner:
    """An asyncio.Runner on the named loop."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigurationError(
                "event_loop='uvloop' needs the uvloop package: pip install 'segue[fast]'"
            ) from None
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()
