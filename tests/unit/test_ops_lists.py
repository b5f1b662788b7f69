"""What the dashboard's lists compute from records and events: durations, grouped progress
events, and when a task entered its status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from segue._events import Event
from segue._ops_reads import _since
from segue.dashboard._ops_lists import duration, group_progress

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _event(kind: str, seconds: float, data: object = None) -> Event:
    return Event("q", f"{seconds}-0", kind, "q:1", "job", T0 + timedelta(seconds=seconds), data)


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (None, 0.0123, 12.34, 250, 7500, 3 * 86400 + 4 * 3600)] == [
        "",
        "12 ms",
        "12.3 s",
        "4 min 10 s",
        "2 h 5 min",
        "3 d 4 h",
    ]


def test_a_run_of_progress_events_is_one_row() -> None:
    events = [
        _event("task.started", 0),
        *(_event("task.progress", 1 + i, {"done": i + 1, "total": 5}) for i in range(5)),
        _event("checkpoint", 7, {"page": 3}),
        _event("task.progress", 8, {"done": 5, "total": 5}),
        _event("task.succeeded", 9),
    ]
    rows = group_progress(events)
    assert [(r.kind, r.count) for r in rows] == [
        ("task.started", 1),
        ("task.progress", 5),
        ("checkpoint", 1),
        ("task.progress", 1),
        ("task.succeeded", 1),
    ]
    grouped = rows[1]
    assert grouped.first_at == T0 + timedelta(seconds=1)
    assert grouped.at == T0 + timedelta(seconds=5)
    assert grouped.data == {"done": 5, "total": 5}  # the last progress


def test_a_task_entered_its_status_at_its_last_history_line() -> None:
    history = b"queued|1000|\nrunning|2000|w1\nqueued|3500|lease expired\n"
    assert _since(history, None, b"1000") == 3500
    assert _since(b"", None, None) is None
    assert _since(b"garbled", None, None) is None
    # a record of this release keeps it compactly (ms after its creation), and one an old
    # worker moved after that has lines in both forms: the latest of them counts
    assert _since(None, b"q0\nr1000|w1\nq2500|lease expired\n", b"1000") == 3500
    assert _since(b"running|5000|w1\n", b"q0\n", b"1000") == 5000
