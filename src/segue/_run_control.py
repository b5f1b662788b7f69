"""RunControl: the worker's side of one run, and the fenced server link of its ctx calls.

The worker binds each run it starts to a RunControl: the operator request (pause, cancel)
the run should obey, its query handlers, and `call`, which sends a ctx call again while the
server is unreachable, for up to half a lease; past that, ServerUnreachable stops the run
without spending a try. `Context` (_context.py) and `TaskState` reach the server through it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, TypeVar

from segue import _clock
from segue._broker import server_unreachable
from segue._errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from segue._broker import Broker
    from segue._handle import TaskHandle
    from segue._keys import Keyspace
    from segue._lifespan import Resource

log = logging.getLogger("segue.worker")
T = TypeVar("T")


class ServerUnreachable(BaseException):
    """Raised by a ctx call when the server stayed unreachable for half a lease: the run
    stops and goes back to its queue without spending a try (an outage is not the task's
    fault). A BaseException, so that `except Exception` in task code does not swallow it."""


class RunControl:
    """The worker's side of one run: the operator request the run should obey."""

    __slots__ = (
        "broker",
        "child_handle",
        "enqueue_child",
        "gen",
        "ks",
        "lease_seconds",
        "queries",
        "request",
        "resources",
    )

    def __init__(
        self,
        # under an id, with the sub-task's on_parent_end policy
        enqueue_child: Callable[[Any, str, str], Awaitable[TaskHandle[Any]]],
        broker: Broker,
        ks: Keyspace,
        gen: str,
        resources: dict[Resource[Any], Any] | None = None,
        *,
        lease_seconds: float,
        child_handle: Callable[[Any, str], TaskHandle[Any]] | None = None,
    ) -> None:
        self.enqueue_child = enqueue_child
        self.child_handle = child_handle
        self.lease_seconds = lease_seconds
        self.resources = resources or {}
        self.broker = broker
        self.ks = ks
        self.gen = gen
        self.request: str | None = None
        # the run's query handlers (ctx.on_query), answered on the worker's loop (_query.py)
        self.queries: dict[str, Callable[..., Any]] = {}

    async def call(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        """`send()`, a server call of ctx, sent again while the server is unreachable, for up
        to half a lease from the first sending: leases outlive such an outage (a lease keeps
        what it had left, up to half a lease, see bridge_gap), so the run goes on past it.
        Longer, ServerUnreachable stops the run, which is requeued without spending a try.
        Every ctx call is safe to send again: state writes and events are fenced to the
        run, sub-task ids are fixed, reads are reads."""
        give_up = _clock.monotonic() + self.lease_seconds / 2
        pause, failed = 0.05, False
        while True:
            try:
                if not failed:
                    return await send()
                # a resend may hang on a cut-off connection: it too ends at the deadline
                async with asyncio.timeout(max(give_up - _clock.monotonic(), 0.01)):
                    return await send()
            except BrokerError as exc:
                if not server_unreachable(exc):
                    raise
                cause: BaseException = exc
            except TimeoutError as exc:
                if not failed:
                    raise
                cause = exc
            now = _clock.monotonic()
            if not failed:
                failed = True
                log.warning(
                    "%s: the server is unreachable (%s); sending again for up to %.1f s",
                    what,
                    cause,
                    max(give_up - now, 0),
                )
            if now >= give_up:
                raise ServerUnreachable(
                    f"{what}: the server stayed unreachable for half a lease"
                ) from cause
            await asyncio.sleep(min(pause, give_up - now))
            pause = min(pause * 2, 1.0)
