"""Context: what a running task knows about its own run."""

from __future__ import annotations

import logging
from typing import Any

_task_log = logging.getLogger("segue.task")


class _TaskLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('task_id')}] {msg}", kwargs


class Context:
    """Passed as the first parameter to tasks that declare `ctx: Context`.

    Attributes: `task_id`, `tries` (1 on the first run), `worker_id`, `queue`, `name`,
    and `log`, a logger whose lines carry the task id.
    """

    __slots__ = ("log", "name", "queue", "task_id", "tries", "worker_id")

    def __init__(self, *, task_id: str, name: str, tries: int, worker_id: str, queue: str) -> None:
        self.task_id = task_id
        self.name = name
        self.tries = tries
        self.worker_id = worker_id
        self.queue = queue
        self.log: logging.LoggerAdapter[logging.Logger] = _TaskLog(
            _task_log, {"task_id": task_id, "task_name": name}
        )

    def __repr__(self) -> str:
        return f"<Context {self.task_id} {self.name} try={self.tries} worker={self.worker_id}>"
