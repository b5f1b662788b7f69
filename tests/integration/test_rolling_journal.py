"""A live worker of the previous release meets tasks that have a step journal (issue 16,
Reliability; DESIGN §10 "Rolling deploys"): what it does is what docs/functions.md
("Rolling deploys") states.

The previous release's source comes from this repository's history (`git archive`), and
its worker runs as a process of its own with that source first on PYTHONPATH, serving the
old code of the tasks (tests/apps/rolling.py, ROLLING_CODE=old): in a rolling deploy the
old worker runs the old code of the task. A worker of this release journals the tasks, and
they wait (a durable sleep, a checkpoint-and-pause); then only the old worker runs, and
takes them. Its claim script is its own, loaded by hash, so nothing this release stores
keeps it off a journaled task: it runs the old code from the top, which sees the journal
as extra keys of `ctx.state`, and a task ending under it deletes the journal with its
state; a run of it that is lost counts as a try, and the journal it left is replayed by
the next worker of this release.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, TaskStatus
from tests._support import Engine, admin_client
from tests._workers import ROOT, Fleet
from tests.apps import rolling
from tests.integration.conftest import eventually
from tests.integration.test_durable_processes import state_of

pytestmark = pytest.mark.slow

NAP = 3600.0  # the tasks wait this long: the test makes them due when it wants, not a clock
NEW = {"ROLLING_CODE": "new"}


@pytest.fixture
def client_app(segue_valkey: Engine, queue_name: str) -> Iterator[App]:
    app = rolling.app  # this process imports the new code
    saved = app.settings
    app.settings = saved.replace(redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.1)
    yield app
    app.settings = saved


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def make_due(engine: Engine, app: App, *task_ids: str) -> None:
    """The tasks' waits end now (their entries of the scheduled set score 0)."""
    key = f"{app.settings.prefix}:{{{app.settings.queue}}}:sched"
    client = admin_client(engine)
    try:
        assert await client.zadd(key, dict.fromkeys(task_ids, 0), xx=True, ch=True) == len(task_ids)
    finally:
        await client.aclose()


async def test_an_old_worker_runs_a_journaled_task_from_the_top(
    segue_valkey: Engine,
    client_app: App,
    queue_name: str,
    tmp_path: Path,
    previous_release: Path,
) -> None:
    old_env = {
        "ROLLING_CODE": "old",
        "PYTHONPATH": os.pathsep.join([str(previous_release), str(ROOT)]),
    }
    order_dir, batch_dir = tmp_path / "order", tmp_path / "batch"
    order_dir.mkdir()
    batch_dir.mkdir()
    with Fleet(
        "tests.apps.rolling:app", segue_valkey.url, queue_name, concurrency=2, lease=1.0
    ) as fleet:
        new = fleet.start(env=NEW)
        async with client_app:
            order = await rolling.order.enqueue(str(order_dir), NAP)
            batch = await rolling.batch.enqueue(str(batch_dir), NAP)

            # this release journals two steps and sleeps; and one step, then a Pause
            async def waiting() -> bool:
                return all([await h.status() is TaskStatus.SUSPENDED for h in (order, batch)])

            await eventually(waiting, timeout=20)
            assert set(await state_of(segue_valkey, client_app, order.id)) == {
                "~j:reserve",
                "~j:charge",
                "~j:sleep#1",
            }
            assert set(await state_of(segue_valkey, client_app, batch.id)) == {
                "~j:part-0",
                "checkpoint",
            }
            assert fleet.terminate_all() == {new.name: 0}

            # the deploy rolls back (or an old worker is still up): only the old release runs
            old = fleet.start(env=old_env)
            await make_due(segue_valkey, client_app, order.id, batch.id)
            assert await order.result(timeout=20) == "old"
            info = await order.info()

            async def old_run_wrote() -> bool:
                return "old_run" in await state_of(segue_valkey, client_app, batch.id)

            await eventually(old_run_wrote, timeout=20)
            held = await state_of(segue_valkey, client_app, batch.id)
            old_batch_info = await batch.info()
            fleet.kill(old)

            # a worker of this release takes over the lost run, and replays the journal
            fleet.start(env=NEW)
            assert await batch.result(timeout=20) == "new"
            batch_info = await batch.info()
            order_left = await state_of(segue_valkey, client_app, order.id)

    # the old worker ran the previous release's segue, not this one
    assert Path((order_dir / "old-segue").read_text()).is_relative_to(previous_release)
    # the old code ran the durable function from the top: the journaled steps' effects
    # happened again, once by each release
    assert [len(lines(order_dir / s)) for s in ("reserve", "charge", "ship")] == [2, 2, 1]
    assert lines(order_dir / "reserve")[1] == str(old.pid)
    # its ctx.state showed the journal as extra keys, each a JSON object
    found: dict[str, Any] = json.loads((order_dir / "old-state.json").read_text())
    assert set(found) == {"~j:reserve", "~j:charge", "~j:sleep#1"}
    assert all(isinstance(v, dict) for v in found.values())
    # it ended the task: the journal went with the state; the summary stays on the record
    assert info.status is TaskStatus.SUCCEEDED
    assert order_left == {}
    assert [s.name for s in info.steps] == ["reserve", "charge", "sleep#1"]
    assert info.tries == 1  # the sleep spent no try, the old run one
    assert info.history[-2].status is TaskStatus.RUNNING
    assert info.history[-2].reason.startswith(old.id_prefix)

    # the old code's own checkpoint sits beside the journal, which it leaves alone
    assert json.loads((batch_dir / "old-state.json").read_text()).keys() == {
        "~j:part-0",
        "checkpoint",
    }
    assert held == {
        "~j:part-0": held["~j:part-0"],
        "checkpoint": 1,
        "old_run": old.pid,
    }
    assert old_batch_info.worker_id is not None
    assert old_batch_info.worker_id.startswith(old.id_prefix)
    # the old run was lost: a try, although the journal holds entries (the journal's
    # progress mark is the generation of this release's run, not the old one's)
    assert batch_info.tries == 2
    # the journal the old run left is replayed: part-0 ran once, by the first new worker
    assert [len(lines(batch_dir / s)) for s in ("part-0", "part-1")] == [1, 1]
    assert lines(batch_dir / "part-0") == [str(new.pids[0])]
    assert [s.name for s in batch_info.steps] == ["part-0", "part-1"]
