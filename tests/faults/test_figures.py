"""The figures table (tests/faults/figures.py) built from two hand-written reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults import figures

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

STORM = {
    "test": "test_sigkill_storm",
    "seed": 111,
    "mode": "quick",
    "lost": 0,
    "dup_effect": 0,
    "dup_exec": 3,
    "in_flight_killed": 5,
    "recovery_ms_p99": 2450.0,
}
KILLS = {
    "test": "test_client_kill_storms_lose_nothing_and_complete_nothing_twice",
    "seed": 222,
    "mode": "full",
    "lost": 2,
    "dup_effect": 0,
    "double_completions": 0,
    "recovery_ms_p99": None,  # no orphan: the figure is there but says nothing
}


def _row(table: list[str], metric: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split(" | ")]
        for line in table
        if line.startswith(f"| {metric} |")
    ]


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    (tmp_path / "storm.json").write_text(json.dumps(STORM))
    (tmp_path / "kills.json").write_text(json.dumps(KILLS))
    (tmp_path / "notes.txt").write_text("not a report")
    return tmp_path


def test_each_row_shows_the_worst_report_its_test_mode_and_seed(reports: Path) -> None:
    table = figures.lines(figures.load(reports))
    assert table[0] == "| Metric | Goal | Measured | Test (mode) | Seed |"

    [lost] = _row(table, figures.ROWS[0].metric)
    assert lost[1:] == [
        "0",
        "2 (worst of 2 reports)",
        "`test_client_kill_storms_lose_nothing_and_complete_nothing_twice` (full)",
        "222",
    ]
    [recovery] = _row(table, "Orphan recovery after worker SIGKILL, p99")
    assert recovery[2:] == ["2450.0 ms", "`test_sigkill_storm` (quick)", "111"]
    dup = _row(table, "Duplicate executions")
    assert [d[2] for d in dup] == ["3 (in flight on killed workers: 5) — W1 (vs in_flight_killed)"]
    doubles = _row(table, "Double completions / double effects (with ledger)")
    assert [d[2] for d in doubles] == ["0 (worst of 2 reports)", "0"]
    [cluster] = _row(table, "Cluster failover, client-visible unavailability")
    assert cluster[2:] == ["not measured", "", ""]


def test_the_command_prints_the_table_of_a_directory(
    reports: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert figures.main([str(reports)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Figures of 2 fault reports in {reports}")
    assert "| Poison crash loop | dead-lettered after `max_deliveries` (3) | not measured |" in out
    assert figures.main([str(reports / "missing")]) == 2
