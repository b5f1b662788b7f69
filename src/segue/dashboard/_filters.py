"""The templates' filters and globals: how a value reads on a dashboard page.

`_app.py` hands them to the Jinja environment (`when`, `pretty`, `cell`, `number`,
`progress`, and `actions_for` for a task's buttons); no handler calls them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from segue._state import TaskStatus

RETRYABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})


def task_actions(status: TaskStatus) -> list[str]:
    """The buttons a task in this status gets (the others would only be refused)."""
    if status.is_final:
        return ["retry", "delete"] if status in RETRYABLE else ["delete"]
    if status is TaskStatus.PAUSED:
        return ["resume", "cancel"]
    return ["pause", "cancel"]


def cell(value: Any) -> str:
    """A value as short text for a table cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(cell(v) for v in value)
    return str(value)


def when(value: datetime | None) -> str:
    """A time as every page shows it: UTC, 24-hour (a schedule's times come in its zone)."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any, limit: int = 20_000) -> str:
    """A JSON value indented for reading, cut at `limit` characters (a payload may be big)."""
    text = json.dumps(value, ensure_ascii=False, default=repr, sort_keys=True)
    if len(text) > 80:  # short values read best on one line, longer ones indented
        text = json.dumps(value, indent=2, ensure_ascii=False, default=repr, sort_keys=True)
    if len(text) > limit:
        return f"{text[:limit]}\n… ({len(text) - limit} more characters)"
    return text


def progress_of(progress: tuple[float, float | None] | None) -> dict[str, Any] | None:
    if progress is None:
        return None
    done, total = progress
    percent = min(100.0, 100.0 * done / total) if total else None
    return {"done": done, "total": total, "percent": percent}


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
