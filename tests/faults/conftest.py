"""The fault-injection suite (RELIABILITY §7-§8): quick mode in the CI suite, full mode by
`scripts/faults --full`.

Every fault test takes the `fault_seed` fixture (printed when the test fails, so a failure
replays with `--fault-seed N`), sizes its run from `fault_scale` (quick or full), and writes
its figures through `fault_report`: one JSON file per test under `fault-reports/` (or
`$SEGUE_FAULT_REPORTS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the shared harness's fixtures, for every fault test
from tests.faults.ledger import fault_ledger  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("segue faults")
    group.addoption(
        "--faults-full",
        action="store_true",
        default=os.environ.get("SEGUE_FAULTS_FULL") == "1",
        help="run the fault suite at its full sizes (RELIABILITY §8) instead of quick mode",
    )
    group.addoption(
        "--fault-seed",
        type=int,
        default=None,
        help="seed of every fault schedule (default: a new random seed per test)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.fault)
    # variants that repeat what a quick-mode sibling already checks, on a slower engine or
    # size: run by scripts/faults --full, left out of the CI suite's time budget
    if config.getoption("--faults-full"):
        return
    kept: list[pytest.Item] = []
    left: list[pytest.Item] = []
    for item in items:
        (left if item.get_closest_marker("full_only") else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run: `quick` keeps each test within seconds for the CI suite."""

    full: bool

    def pick(self, quick: int, full: int) -> int:
        return full if self.full else quick

    def seconds(self, quick: float, full: float) -> float:
        return full if self.full else quick


@pytest.fixture
def fault_scale(request: pytest.FixtureRequest) -> Scale:
    return Scale(full=bool(request.config.getoption("--faults-full")))


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    chosen = request.config.getoption("--fault-seed")
    seed = int(chosen) if chosen is not None else random.SystemRandom().randrange(1 << 31)
    request.node.user_properties.append(("fault_seed", seed))
    return seed


@pytest.fixture
def fault_rng(fault_seed: int) -> random.Random:
    """The test's fault schedule draws from this, so a seed replays the same schedule."""
    return random.Random(fault_seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == "fault_seed":
                report.sections.append(
                    ("fault seed", f"replay with: pytest {item.nodeid} --fault-seed {value}")
                )
    return report


class Report:
    """The figures of one fault test, written as JSON when the test ends (pass or fail)."""

    def __init__(self, name: str, seed: int, scale: Scale) -> None:
        self.name = name
        self.figures: dict[str, Any] = {
            "test": name,
            "seed": seed,
            "mode": "full" if scale.full else "quick",
        }
        self.started = time.monotonic()

    def add(self, **figures: Any) -> None:
        self.figures.update(figures)

    def write(self, directory: Path) -> Path:
        self.figures["wall_seconds"] = round(time.monotonic() - self.started, 3)
        directory.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        path = directory / f"{safe}.json"
        path.write_text(json.dumps(self.figures, indent=2, sort_keys=True, default=str))
        return path


@pytest.fixture
def fault_report(
    request: pytest.FixtureRequest, fault_seed: int, fault_scale: Scale
) -> Iterator[Report]:
    report = Report(request.node.name, fault_seed, fault_scale)
    yield report
    directory = Path(os.environ.get("SEGUE_FAULT_REPORTS", ROOT / "fault-reports"))
    report.write(directory)
