"""A live worker of the previous release moves a task created by this release (issue 22,
item 5; docs/architecture.md, "Rolling deploys", compact histories).

This release writes a task's history compactly in 'hc'; the previous release knows only the
long form 'h', and appends its transitions there, beside 'hc'. Nothing about it keeps the
old worker off the task, and a reader of this release merges both forms by time: the
history reads whole and in order, numbered from 1, after the task went from this release to
the old one and back; and a record of this release, created without the count of lost
runs ('d'), runs under the old claim. Likewise a workflow
record of this release counts its steps ('stn') where the previous release listed them
('steps'): the old worker runs the steps, which it finds in its lists as any task, and
never reads the workflow's step list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._support import Engine, admin_client
from tests._workers import ROOT, Fleet
from tests.apps import rolling
from tests.integration.test_rolling_journal import NEW

pytestmark = pytest.mark.slow


@pytest.fixture
def producer(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = rolling.app  # this process imports the new code
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    yield app
    app.settings = saved


async def test_a_history_moved_by_an_old_worker_reads_whole_and_in_order(
    segue_valkey: Engine, producer: App, queue_name: str, previous_release: Path
) -> None:
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
    }
    key = f"{producer.settings.prefix}:{{{queue_name}}}:task:"
    client = admin_client(segue_valkey)
    with Fleet(
        "tests.apps.rolling:app", segue_valkey.url, queue_name, concurrency=2, lease=1.0
    ) as fleet:
        try:
            async with producer:
                handle = await rolling.hop.enqueue(7)
                created = await client.hgetall(key + handle.id)
                assert b"h" not in created and created[b"hc"] == b"q0\n"
                # lost runs start absent: the old claim reads them with a default
                assert b"d" not in created

                # only the old release runs: it fails the task, writing the long form
                old = fleet.start(env=old_env)
                with pytest.raises(TaskFailed):
                    await handle.result(timeout=20)
                assert fleet.terminate_all() == {old.name: 0}
                moved = await client.hgetall(key + handle.id)
                assert moved[b"hc"] == b"q0\n"
                assert moved[b"h"].decode().splitlines()[0].startswith("running|")
                assert (moved[b"t"], moved[b"g"]) == (b"1", b"1")
                assert (await handle.info()).tries == 1

                # this release again: an operator's retry, and a worker that succeeds
                assert await handle.retry() is TaskStatus.QUEUED
                fleet.start(env=NEW)
                assert await handle.result(timeout=20) == 7
                info = await handle.info()
        finally:
            await client.aclose()
    assert [t.status for t in info.history] == [
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.FAILED,
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
    ]
    assert [t.number for t in info.history] == [1, 2, 3, 4, 5, 6]
    assert info.history_total == 6
    assert info.problem is None
    times = [t.at for t in info.history]
    assert times == sorted(times)
    assert info.history[1].reason != "" and info.history[4].reason != ""  # their workers


async def test_an_old_worker_runs_the_steps_of_a_workflow_that_counts_them(
    segue_valkey: Engine, producer: App, queue_name: str, previous_release: Path
) -> None:
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
    }
    client = admin_client(segue_valkey)
    with Fleet(
        "tests.apps.rolling:app", segue_valkey.url, queue_name, concurrency=2, lease=1.0
    ) as fleet:
        try:
            async with producer:
                wf = await (rolling.double.call(2) | rolling.double.call()).enqueue()
                stored = await client.hgetall(
                    f"{producer.settings.prefix}:{{{queue_name}}}:wf:{wf.id}"
                )
                assert stored[b"stn"] == b"2" and b"steps" not in stored
                fleet.start(env=old_env)
                assert await wf.result(timeout=20) == 8
                steps = await wf.steps()
        finally:
            await client.aclose()
    assert [s.id for s in steps] == [f"{wf.id}.1", f"{wf.id}.2"]
    assert [s.status for s in steps] == [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
