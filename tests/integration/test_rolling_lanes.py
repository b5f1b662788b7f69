"""A live worker of the previous release (a9921ef) beside tasks in lanes (issue 20,
Reliability; docs/fairness.md "Rolling deploys").

Its claim never takes a task from a lane: a burst worker of that release (no reconciler)
empties the lists and leaves the keyed tasks queued. Its reconciler, though, finds a queued
task in no list of its own and puts it back in its list (the repair `queued_not_listed`):
a serving old worker then runs the keyed tasks under their name's limits, not their key's,
which that release does not have. Nothing is lost and nothing runs twice (a run starts only
from a queued record; the copy left in the lane is dropped when a new claim meets it), and
the limits both releases know hold across both. The old code of `lanes.call` declares
`concurrency=2` only (that release has no `Limit`), the new one adds
`Limit(1, key="tenant")`; `lanes.one` (`concurrency=1`) is the same in both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskStatus
from tests._support import Engine, keys_of
from tests._workers import ROOT, Fleet
from tests.apps import rolling_lanes
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow

NAP = 0.15


@pytest.fixture
def producer(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = rolling_lanes.app  # this process imports the new code
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    yield app
    app.settings = saved


def runs(directory: Path) -> list[tuple[str, str, str, float, int]]:
    path = directory / "runs"
    lines = path.read_text().split("\n") if path.exists() else []
    out = []
    for line in lines:
        if line:
            what, task, tenant, at, pid = line.split()
            out.append((what, task, tenant, float(at), int(pid)))
    return out


def most_at_once(rows: list[tuple[str, str, str, float, int]]) -> int:
    """The most runs of `rows` in progress at one time."""
    now = top = 0
    for what, *_ in sorted(rows, key=lambda r: (r[3], r[0] == "start")):
        now += 1 if what == "start" else -1
        top = max(top, now)
    return top


async def test_an_old_worker_runs_no_task_from_a_lane_and_keeps_the_limits_it_knows(
    segue_valkey: Engine,
    producer: App,
    queue_name: str,
    previous_release: Path,
    tmp_path: Path,
) -> None:
    d = str(tmp_path)
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
        "SEGUE_RECONCILE_SECONDS": "0.5",
    }
    with Fleet(
        "tests.apps.rolling_lanes:app", segue_valkey.url, queue_name, concurrency=4
    ) as fleet:
        async with producer:
            keyed = [await rolling_lanes.call.enqueue(d, tenant, NAP) for tenant in "aabbb"]
            ones = [await rolling_lanes.one.enqueue(d, f"o{i}", NAP) for i in range(4)]
            plain = [await rolling_lanes.plain.enqueue(d, f"p{i}", 0.0) for i in range(2)]
            # the keyed tasks wait in their keys' lanes
            assert await keys_of(segue_valkey, f"*{{{queue_name}}}:lane:2:lanes.call|*") != []

            # an old burst worker (no reconciler) runs what is in the lists, the limited
            # tasks one at a time, and nothing from a lane
            burst = fleet.start(env=old_env, args=["--burst"])
            assert fleet.wait_exit(burst, timeout=30) == 0
            assert [await h.status() for h in [*ones, *plain]] == [TaskStatus.SUCCEEDED] * 6
            assert [await h.status() for h in keyed] == [TaskStatus.QUEUED] * len(keyed)
            assert not [r for r in runs(tmp_path) if r[1] == "call"]

            # a serving old worker: its reconciler lists the keyed tasks, and it runs them
            # under the name's limit it knows (2 at once), not the keys'
            old = fleet.start(env=old_env)
            assert [await h.result(timeout=30) for h in keyed] == list("aabbb")

            # a worker of this release joins it; both serve a flood of a limited name
            new = fleet.start(env={"ROLLING_CODE": "new"})
            more = [await rolling_lanes.one.enqueue(d, f"m{i}", NAP / 3) for i in range(12)]
            for h in more:
                await h.result(timeout=30)
            # the new worker's claims drop the copies the old reconciler left in the lanes
            await eventually(lambda: no_keys(segue_valkey, f"*{{{queue_name}}}:lane:*"), timeout=15)
            infos = [await h.info() for h in [*keyed, *ones, *plain, *more]]

    # nothing lost, nothing run twice, no try spent on the way
    assert all(i.status is TaskStatus.SUCCEEDED and i.tries == 1 for i in infos)
    rows = runs(tmp_path)
    calls = [r for r in rows if r[1] == "call"]
    assert len([r for r in calls if r[0] == "start"]) == len(keyed)
    assert {r[4] for r in calls} == {old.pid}
    # the limits both releases know held across both: `lanes.call` at most 2 at once, one
    # `lanes.one` at a time (the old and the new worker share its running set)
    assert most_at_once(calls) <= 2
    assert most_at_once([r for r in rows if r[1] == "one"]) == 1
    assert {r[4] for r in rows if r[1] == "one" and r[2].startswith("m")} <= {old.pid, new.pid}


async def no_keys(engine: Engine, pattern: str) -> bool:
    return await keys_of(engine, pattern) == []
