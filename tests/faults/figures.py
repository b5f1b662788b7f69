"""The figures table of RELIABILITY §10, from the fault suite's JSON reports.

    python -m tests.faults.figures [reports-dir]

reads every `*.json` report in the directory (default: $SEGUE_FAULT_REPORTS, else
fault-reports/ at the repository's root; one report per test, written by the
`fault_report` fixture) and prints the table in Markdown: metric, goal, the measured value,
the test and mode that measured it, and its seed (so the run replays with `--fault-seed`).

A row takes its value from the figures the tests report under the names below. Where
several reports carry a figure, the row shows the worst of them (the highest) and how many
reports it was taken from. A figure no report carries reads "not measured".
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a row's value comes from: the figure `key` of the reports whose test name
    starts with `test` (any test if empty), except those starting with one of `exclude`."""

    key: str
    test: str = ""
    exclude: tuple[str, ...] = ()
    label: str = ""  # what the value is, when it needs saying (e.g. "p99")
    unit: str = ""

    def matches(self, report: dict[str, Any]) -> bool:
        name = str(report.get("test", ""))
        return (
            name.startswith(self.test)
            and not any(name.startswith(x) for x in self.exclude)
            and report.get(self.key) is not None
        )


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    goal: str
    sources: tuple[Source, ...]


# Runs whose losses are expected and reported as such, not counted as acked-write losses:
# the rollback restores an older copy; the failover test measures memory durability apart.
_EXPECTED_LOSS = (
    "test_a_server_restored_from_an_older_copy",
    "test_replicated_enqueues_survive_failover",
)

ROWS: tuple[Row, ...] = (
    Row(
        "Acked enqueues lost: worker faults, connection faults, server kill -9 with AOF",
        "0",
        (Source("lost", exclude=_EXPECTED_LOSS),),
    ),
    Row(
        'Acked enqueues lost on failover, `durability="replicated"`',
        "0 (fails instead of acking)",
        (
            Source("replicated_acked_lost", label="replicated"),
            Source("memory_acked_lost_during_partition", label="memory (reported)"),
            Source("lost_acked_before_kill", label="Sentinel primary killed"),
        ),
    ),
    Row(
        "Double completions / double effects (with ledger)",
        "0",
        (
            Source("dup_effect"),
            Source("double_completions"),
            Source("duplicate_fan_in_runs", label="workflow fan-in"),
        ),
    ),
    Row(
        "Duplicate executions",
        "≤ tasks in flight on faulted workers; 0 without faults",
        (
            Source("dup_exec", test="test_sigkill_storm", label="W1 (vs in_flight_killed)"),
            Source("dup_exec_finished_in_grace", label="W3 tasks done during the drain"),
            Source("dup_exec", test="test_tasks_blocking_the_loop", label="W5, no fault"),
            Source("dup_exec", test="test_latency_and_jitter", label="N1, no fault"),
        ),
    ),
    Row(
        "Orphan recovery after worker SIGKILL, p99",
        "≤ L + P + 1 s (default ≤ 20 s; CI ≤ 4 s)",
        (Source("recovery_ms_p99", unit="ms"),),
    ),
    Row(
        "Worker resume after server restart",
        "≤ 2 s, 0 wedged",
        (
            Source("resume_ms_p99", label="p99", unit="ms"),
            Source("resume_ms_max", label="max", unit="ms"),
            Source("wedged_workers", label="wedged"),
        ),
    ),
    Row(
        "Cluster failover, client-visible unavailability",
        "≤ 5 s at node-timeout 1 s",
        (
            Source("unavailability_ms", label="cluster primary SIGKILLed", unit="ms"),
            Source("unavailability_seconds", label="Sentinel failover", unit="s"),
        ),
    ),
    Row(
        "Poison crash loop",
        "dead-lettered after `max_deliveries` (3)",
        (
            Source("poison_attempts", label="attempts"),
            Source("companions_failed", label="tasks claimed with it, failed with it"),
        ),
    ),
    Row(
        "Pause-ack / cancel latency p99",
        "≤ H",
        (
            Source("pause_ack_ms_p99", label="pause-ack", unit="ms"),
            Source("cancel_ms_p99", label="cancel", unit="ms"),
        ),
    ),
    Row(
        "Re-executed work after resume/crash",
        "≤ 1 checkpoint interval",
        (Source("redone_steps", label="steps redone (vs kills)"),),
    ),
    Row(
        "Leaked per-task keys after retention",
        "0",
        (
            Source("leaked_per_task_keys"),
            Source("keys_without_ttl_outside_structural", label="keys without TTL"),
            Source("used_memory_delta_pct", label="used_memory delta", unit="%"),
        ),
    ),
    Row(
        "No-op throughput, 1 worker, C=32",
        "≥ streaq/SAQ on the same box; ≥ 2,000/s initial",
        (Source("noop_throughput_per_s", unit="/s"),),
    ),
    # figures of §8 the table above has no line for
    Row(
        "Rollback detected after a restore (R2)",
        "≤ 1 reconcile cycle; stuck = 0",
        (
            Source("rollback_detection_ms", label="detection", unit="ms"),
            Source("disagreements_after_2_intervals", label="unrepaired after 2 P"),
            Source("post_t_lost", label="enqueued after the copy, lost (expected)"),
        ),
    ),
    Row(
        "Requeue after the shutdown grace (W3)",
        "≤ 1 s",
        (Source("requeue_after_grace_ms_max", unit="ms"),),
    ),
    Row(
        "False lease expiries (W5 blocked loop, N1 latency, S4 skew)",
        "0",
        (Source("false_reclaims"), Source("false_lease_expiries")),
    ),
    Row(
        "Stale transitions accepted (W2 zombie, N3 partition)",
        "0",
        (Source("stale_writes_accepted"), Source("stale_transitions_accepted")),
    ),
    Row(
        "Throughput under +50 ± 20 ms latency (N1)",
        "≥ 50 % of baseline",
        (Source("rate_ratio", test="test_latency_and_jitter", label="of baseline"),),
    ),
)


def load(directory: Path) -> list[dict[str, Any]]:
    """Every report in `directory` (unreadable files are named on stderr and skipped)."""
    reports = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if not isinstance(data, dict):
            continue
        data.setdefault("test", path.stem)
        runs = data.get("runs")
        if isinstance(runs, dict) and all(isinstance(r, dict) for r in runs.values()):
            # one report holding several runs (R1: one per appendfsync): a report each
            for name, run in runs.items():
                reports.append({**data, **run, "test": f"{data['test']}[{name}]"})
        else:
            reports.append(data)
    return reports


def _rank(value: Any) -> float:
    if isinstance(value, bool):
        return float(not value)  # False (a broken bound) is the worse
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return float(len(value))
    return 0.0


def _show(value: Any, source: Source, among: int, report: dict[str, Any]) -> str:
    if isinstance(value, float):
        value = round(value, 1)
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    if source.unit:
        text += ("" if source.unit.startswith("/") else " ") + source.unit
    if source.key == "dup_exec" and "in_flight_killed" in report:
        text += f" (in flight on killed workers: {report['in_flight_killed']})"
    if source.key == "redone_steps" and "kills" in report:
        text += f" ({report['kills']} kills)"
    if source.label:
        text += f" — {source.label}"
    if among > 1:
        text += f" (worst of {among} reports)"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def lines(reports: Sequence[dict[str, Any]], rows: Iterable[Row] = ROWS) -> list[str]:
    """The Markdown table, one line per row and source found."""
    out = ["| Metric | Goal | Measured | Test (mode) | Seed |", "|---|---|---|---|---|"]
    for row in rows:
        found = False
        for source in row.sources:
            matching = [r for r in reports if source.matches(r)]
            if not matching:
                continue
            found = True
            worst = max(matching, key=lambda r: _rank(r[source.key]))
            measured = _show(worst[source.key], source, len(matching), worst)
            test = f"`{worst.get('test', '?')}` ({worst.get('mode', '?')})"
            cells = (row.metric, row.goal, measured, test, str(worst.get("seed", "")))
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if not found:
            cells = (row.metric, row.goal, "not measured", "", "")
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    default = os.environ.get("SEGUE_FAULT_REPORTS", str(ROOT / "fault-reports"))
    directory = Path(args[0] if args else default)
    if not directory.is_dir():
        print(f"no reports directory {directory} (run scripts/faults first)", file=sys.stderr)
        return 2
    reports = load(directory)
    print(f"Figures of {len(reports)} fault reports in {directory}\n")
    print("\n".join(lines(reports)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
