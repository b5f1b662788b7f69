"""A live worker of the previous release meets a task whose argument is offloaded (issue 21,
Reliability; DESIGN §10 "Rolling deploys"): it releases the task rather than failing it, as
docs/payloads.md ("Rolling deploys") states, and a worker of this release then runs it.

A record holding a reference carries a mark after its task name. The old worker reads the
name through its own claim script, knows `rolling.measure` but not the marked name, and
releases the task: no try spent, rescheduled, a history line saying why. Its unknown-task
bound is raised (SEGUE_UNKNOWN_TASK_MAX_RELEASES, a setting of that release too) so the test
sees releases, not the dead letter the default bound of 3 gives a deploy left half done.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue import App, TaskStatus
from tests._support import Engine, admin_client
from tests._workers import ROOT, Fleet
from tests.apps import rolling
from tests.integration.conftest import eventually
from tests.integration.test_rolling_journal import NEW, make_due

pytestmark = pytest.mark.slow

RELEASED = "unknown task name, released"  # the previous release's history line
DATA = "x" * 4096  # over offload_bytes: the argument goes by reference


@pytest.fixture
def producer(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = rolling.app  # this process imports the new code
    saved = app.settings
    app.settings = saved.replace(
        redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1, offload_bytes=1024
    )
    yield app
    app.settings = saved


async def stored_name(engine: Engine, app: App, task_id: str) -> bytes:
    """The record's task name as stored (marks and all), read past segue's readers."""
    client = admin_client(engine)
    try:
        name: bytes = await client.hget(
            f"{app.settings.prefix}:{{{app.settings.queue}}}:task:{task_id}", "n"
        )
    finally:
        await client.aclose()
    return name


async def test_an_old_worker_releases_a_task_with_an_offloaded_argument(
    segue_valkey: Engine, producer: App, queue_name: str, previous_release: Path
) -> None:
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
        "SEGUE_UNKNOWN_TASK_MAX_RELEASES": "50",
    }
    with Fleet(
        "tests.apps.rolling:app", segue_valkey.url, queue_name, concurrency=2, lease=1.0
    ) as fleet:
        async with producer:
            handle = await rolling.measure.enqueue(DATA)
            assert await stored_name(segue_valkey, producer, handle.id) == (
                b"rolling.measure\x00offloaded"
            )

            # only the old release runs (a deploy not yet rolled out to the workers)
            old = fleet.start(env=old_env)

            async def released_twice() -> bool:
                history = (await handle.info()).history
                return sum(h.reason == RELEASED for h in history) >= 2

            # the second release comes a second after the first (releases back off by 1 s each)
            await eventually(released_twice, timeout=8)
            held = await handle.info()
            assert fleet.terminate_all() == {old.name: 0}

            # a worker of this release runs it, at once rather than at the release's due time
            await make_due(segue_valkey, producer, handle.id)
            fleet.start(env=NEW)
            assert await handle.result(timeout=8) == len(DATA)
            done = await handle.info()

    # the old worker released the task: no try spent, never failed, no dead letter
    assert held.status is TaskStatus.SCHEDULED
    assert held.tries == 0
    assert TaskStatus.FAILED not in {h.status for h in held.history}
    released = [h for h in held.history if h.reason == RELEASED]
    assert all(h.status is TaskStatus.SCHEDULED for h in released)
    # every claim that released it was the old worker's
    running = [h for h in held.history if h.status is TaskStatus.RUNNING]
    assert len(running) >= len(released) >= 2
    assert all(h.reason.startswith(old.id_prefix) for h in running)
    # the new worker ran it once, on the argument read back by reference
    assert done.status is TaskStatus.SUCCEEDED
    assert done.tries == 1
    assert done.name == "rolling.measure"
