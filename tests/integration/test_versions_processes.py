"""Task versions across a deploy (issue 17, item 1), with real worker processes on a single
server and on the cluster: workers of the old code (tests/apps/versions.py, every task at
version 1) run while a client of the new code enqueues; then the old workers stop and
workers of the new code take over the tasks in flight.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from segue import App, TaskFailed, TaskStatus
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import versions
from tests.integration.conftest import eventually
from tests.integration.test_durable_processes import state_of

pytestmark = pytest.mark.slow

# the unknown-task bound made small: a newer task released past it must not be failed
BOUND = {
    "SEGUE_UNKNOWN_TASK_MAX_RELEASES": "2",
    "SEGUE_UNKNOWN_TASK_WINDOW_SECONDS": "0.5",
    "SEGUE_NEWER_VERSION_BACKOFF_SECONDS": "0.2",
}


@pytest.fixture(params=["segue_valkey", "segue_cluster"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A single server and the cluster (not Redis too: worker processes cost seconds)."""
    found: Engine = request.getfixturevalue(request.param)
    return found


def client(engine: Engine, queue: str, code: str) -> tuple[App, dict[str, Any]]:
    app = App("versions", redis_url=engine.url, queue=queue, poll_seconds=0.2)
    return app, versions.register(app, code)


async def newer_releases(app: App, task_id: str) -> list[float]:
    """When the task was released by workers whose code of it is older (epoch seconds)."""
    info = await (await app.task_handle(task_id)).info()
    return [t.at.timestamp() for t in info.history if t.reason == "newer version, released"]


async def test_a_deploy_releases_newer_tasks_to_old_workers_and_migrates_older_ones(
    engine: Engine, queue_name: str
) -> None:
    old_app, old = client(engine, queue_name, "old")
    new_app, new = client(engine, queue_name, "new")
    with Fleet(
        "tests.apps.versions:app", engine.url, queue_name, concurrency=4, env=BOUND
    ) as fleet:
        fleet.start(env={"VERSIONS_CODE": "old"})
        async with old_app, new_app:
            counter = await old["counter"].enqueue()
            chain = await old["chain"].enqueue()
            gap = await old["gap"].enqueue()
            newer = await new["counter"].enqueue()  # version 2, before any worker has it

            async def written() -> bool:
                found = [await state_of(engine, old_app, h.id) for h in (counter, chain)]
                return found == [{"n": 4}, {"a": 1, "gone": "old"}]

            await eventually(written, timeout=20)

            async def past_the_bound() -> bool:
                at = await newer_releases(new_app, newer.id)
                return len(at) >= 4 and time.time() - at[0] > 0.6

            await eventually(past_the_bound, timeout=20)
            info = await newer.info()
            assert info.status is not TaskStatus.FAILED and info.tries == 0

            # the deploy: the old workers stop (their tasks requeued with their state),
            # workers of the new code start
            fleet.terminate_all()
            fleet.start(env={"VERSIONS_CODE": "new"})
            # state migrated 1->2; ctx.version is the version the task started under
            assert await counter.result(timeout=20) == {"version": 1, "state": {"count": 40}}
            # 1->2->3, the second migration dropping keys
            assert await chain.result(timeout=20) == {"version": 1, "state": {"c": 20}}
            assert await newer.result(timeout=20) == {"version": 2, "state": {}}
            infos = [await counter.info(), await newer.info()]
            assert [(i.version, i.started_version) for i in infos] == [(2, 1), (2, 2)]
            with pytest.raises(TaskFailed) as failed:
                await gap.result(timeout=20)
            assert failed.value.reason == "version_unsupported"
            assert "migrate={1: ...}" in failed.value.message
