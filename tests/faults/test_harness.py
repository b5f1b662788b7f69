"""The fault suite's own plumbing: seeds replay and reports land where the docs say."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.faults.conftest import Report, Scale

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable


def test_a_seed_replays_the_same_fault_schedule(fault_seed: int) -> None:
    first = random.Random(fault_seed)
    again = random.Random(fault_seed)
    assert [first.random() for _ in range(5)] == [again.random() for _ in range(5)]


def test_a_report_is_written_as_json_with_its_seed_and_mode(tmp_path: Path) -> None:
    report = Report("W1 storm[valkey]", 42, Scale(full=False))
    report.add(lost=0, dup_exec=3)
    path = report.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["seed"] == 42
    assert data["mode"] == "quick"
    assert data["lost"] == 0
    assert path.name == "W1_storm_valkey_.json"
