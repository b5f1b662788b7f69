"""Enqueuer: every way a call gets into a queue (one, many, after=, a sub-task, a graph).

The App holds one, over its Client; tasks, workers and the scheduler enqueue through it.
Until the wire layer lands, the App itself plays this part and `Enqueuer` names what the
worker and the scheduler use of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from segue._handle import TaskHandle
    from segue._settings import Settings
    from segue._task import Signature
    from segue._wire import EnqueueSpec

R = TypeVar("R")


class Enqueuer(Protocol):
    @property
    def settings(self) -> Settings: ...
    async def enqueue_child(self, sig: Signature[R], task_id: str) -> TaskHandle[R]: ...
    def _spec(
        self, sig: Signature[Any], task_id: str | None = None, queue: str | None = None
    ) -> tuple[str, EnqueueSpec]: ...
