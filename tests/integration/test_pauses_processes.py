"""`Pause(state=...)` is one step on the server: a worker SIGKILLed on either side of it
leaves the state and the suspension both written or neither (issue 16, item 3).

Worker subprocesses of tests/apps/pauses.py, single server and cluster; each step is
recorded in a ledger list, read here to count executions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from segue import App, TaskStatus
from tests._support import Engine
from tests._workers import Fleet
from tests.apps import pauses
from tests.integration.test_durable_processes import Ledger, ledger_key, state_of, steps

pytestmark = pytest.mark.slow
KILLED = -9


@pytest.fixture
def workers(segue_engine: Engine, queue_name: str) -> Iterator[Fleet]:
    env = {"LEDGER_URL": segue_engine.admin_url, "LEDGER_KEY": ledger_key(queue_name)}
    with Fleet(
        "tests.apps.pauses:app", segue_engine.url, queue_name, concurrency=1, lease=1.5, env=env
    ) as f:
        yield f


@pytest.fixture
def client_app(segue_engine: Engine, queue_name: str) -> App:
    # an App of this test's own: the module's would keep a client of the previous test's loop
    app = App("pauses", redis_url=segue_engine.url, queue=queue_name, poll_seconds=0.2)
    app.paged = pauses.register(app)  # type: ignore[attr-defined]
    return app


def _kill_at(point: str) -> dict[str, str]:
    return {"SEGUE_FAULTPOINT": f"{point}:kill", "SEGUE_FAULTPOINT_ONCE": "1"}


async def test_a_kill_after_the_pause_was_recorded_finds_state_and_suspension_together(
    workers: Fleet, client_app: App, segue_engine: Engine, queue_name: str
) -> None:
    first = workers.start(env=_kill_at("after_complete_before_ack"))
    async with client_app:
        h = await client_app.paged.enqueue(20, 5)  # type: ignore[attr-defined]
        assert workers.wait_exit(first) == KILLED
        # the worker died before it read the reply: the server has both, or it would not
        assert await state_of(segue_engine, client_app, h.id) == {"next": 5}
        info = await h.info()
        history = [t.status for t in info.history]
        assert history[:3] == [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUSPENDED]
        # the claim sent with that finish may have taken the task again before the kill:
        # that run is lost (its lease lapses) and counts as a try
        reclaimed = info.status is TaskStatus.RUNNING
        assert history[3:] == ([TaskStatus.RUNNING] if reclaimed else [])
        workers.start()
        assert await h.result(timeout=20) == 20
        rows = await Ledger(segue_engine, queue_name).rows(h.id)
        info = await h.info()
    assert sorted(steps(rows)) == list(range(20))  # each step once: nothing was redone
    assert info.tries == (2 if reclaimed else 1)


async def test_a_kill_before_the_pause_was_sent_finds_neither(
    workers: Fleet, client_app: App, segue_engine: Engine, queue_name: str
) -> None:
    first = workers.start(env=_kill_at("before_pause"))
    async with client_app:
        h = await client_app.paged.enqueue(20, 5)  # type: ignore[attr-defined]
        assert workers.wait_exit(first) == KILLED
        assert await state_of(segue_engine, client_app, h.id) == {}
        info = await h.info()
        assert info.status is TaskStatus.RUNNING  # until its lease lapses
        assert TaskStatus.SUSPENDED not in [t.status for t in info.history]
        workers.start()
        assert await h.result(timeout=20) == 20
        rows = await Ledger(segue_engine, queue_name).rows(h.id)
        info = await h.info()
    # the lost run's five steps ran again from the last checkpoint (none): at least once
    runs = Counter(steps(rows))
    assert sorted(runs) == list(range(20))
    assert [s for s, n in sorted(runs.items()) if n > 1] == [0, 1, 2, 3, 4]
    assert info.tries == 2  # the lost run counted as a try
