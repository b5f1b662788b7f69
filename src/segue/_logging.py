"""Logging: task fields on every line emitted inside a task, and the CLI's formats.

The library only adds a NullHandler; `segue worker --log-format json|text` configures the
root logger. Inside a run, `current_task` holds the task's id and name, so any logger (the
task's own, a library's) gets `record.task_id` / `record.task_name` through `TaskFields`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

current_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "segue_current_task", default=None
)


class TaskFields(logging.Filter):
    """Adds task_id and task_name (or "-") to every record, for formatters to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task.get()
        record.task_id, record.task_name = task if task is not None else ("-", "-")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", "-")
        if task_id != "-":
            line["task_id"] = task_id
            line["task_name"] = getattr(record, "task_name", "-")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)
