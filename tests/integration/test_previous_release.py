"""Records written by the previous release are finished by this one (DESIGN §10, "Rolling
deploys": what is stored on the server is a contract between versions).

tests/releases/<commit>.json holds every key of one queue as that release left it, in every
state a deploy can find it (tests/releases/record.py made it). The test writes those keys
under a prefix of its own, checks that this release reads each record as it was, then
runs a worker of this release over them and checks that each task ends as it should: the
runs whose worker vanished are run again once their leases lapse, the paused one on resume,
the dead letter on retry, the half-done workflow and the parent waiting for its sub-tasks
to their ends. A change to a field code, a key name or a layout fails here.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from segue import App, Context, TaskStatus
from tests._support import ACL_PASSWORD, Engine, add_acl_user, admin_client, keys_of
from tests.integration.conftest import eventually, serving
from tests.releases.source import PREVIOUS

RELEASES = Path(__file__).resolve().parents[1] / "releases"


def load(release: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RELEASES / f"{release}.json").read_text())
    assert data["release"].startswith(release)
    return data


def _raw(value: str | dict[str, str]) -> str | bytes:
    return base64.b64decode(value["base64"]) if isinstance(value, dict) else value


def since_recording_ms(recorded: dict[str, Any]) -> int:
    at = datetime.fromisoformat(recorded["recorded_at"].replace("Z", "+00:00"))
    return int((datetime.now(UTC) - at).total_seconds() * 1000)


# Sorted-set scores at or above this are times (epoch ms): due times, lease ends, the
# expiry times of the ended-task indexes, next fire times
_EPOCH_MS = 10**12


def shifted(score: float, shift_ms: int) -> float:
    """A recorded score moved by the time passed since the recording, when it is a time:
    the records then stand as they stood when recorded (a due time still ahead, an ended
    task's index entry not yet expired), however long ago that was. Without it the
    fixture aged: an hour after recording, the claim script trimmed the ended tasks'
    index entries whose time (end + ttl) had passed."""
    return score + shift_ms if score >= _EPOCH_MS else score


async def restore(
    engine: Engine, prefix: str, keys: list[dict[str, Any]], shift_ms: int = 0
) -> None:
    """Write the recorded keys under `prefix`, with their remaining TTLs; sorted-set
    scores that are times move by `shift_ms`."""
    client = admin_client(engine)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for k in keys:
                name, value = f"{prefix}:{k['key']}", k["value"]
                match k["type"]:
                    case "hash":
                        pipe.hset(name, mapping={f: _raw(v) for f, v in value.items()})
                    case "list":
                        pipe.rpush(name, *(_raw(v) for v in value))
                    case "set":
                        pipe.sadd(name, *(_raw(v) for v in value))
                    case "zset":
                        pipe.zadd(name, {_raw(m): shifted(s, shift_ms) for m, s in value})
                    case "stream":
                        for entry_id, fields in value:
                            pipe.xadd(name, {f: _raw(v) for f, v in fields.items()}, id=entry_id)
                    case "string":
                        pipe.set(name, _raw(value))
                    case other:
                        raise AssertionError(f"key {name}: no restore for type {other}")
                if k["pttl"] > 0:
                    pipe.pexpire(name, k["pttl"])
            await pipe.execute()
    finally:
        await client.aclose()


def user_url(engine: Engine, prefix: str) -> str:
    """The engine's URL as a least-privilege user of `prefix` only (added on every node)."""
    for port in engine.ports or (urlsplit(engine.admin_url).port,):
        assert port is not None
        add_acl_user(port, user=prefix, prefix=prefix)
    scheme, _, rest = engine.admin_url.partition("://")
    return f"{scheme}://{prefix}:{ACL_PASSWORD}@{rest}"


async def _true(value: Awaitable[object]) -> bool:
    return bool(await value)


def new_release_app(url: str, prefix: str, queue: str) -> App:
    """The tasks of the recording under the same names, as a new deploy defines them: the
    runs that never ended there (`legacy.hold`) or always failed (`legacy.boom`,
    `legacy.flaky`) end here."""
    app = App("legacy", redis_url=url, prefix=prefix, queue=queue, poll_seconds=0.1)

    @app.task(name="legacy.add")
    async def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="legacy.hold")
    async def hold(x: int) -> int:
        return x * 10

    @app.task(name="legacy.boom", max_tries=1)
    async def boom(x: int) -> int:
        return -x

    @app.task(name="legacy.flaky", max_tries=3)
    async def flaky(ctx: Context, x: int) -> int:
        return x * 100 + ctx.tries

    @app.task(name="legacy.resumable")
    async def resumable(ctx: Context, n: int) -> int:
        # the state the previous release's first run stored, read back by this one
        assert await ctx.state.all() == {"seen": n, "note": "first run"}
        return n * 2

    @app.task(name="legacy.parent")
    async def parent(ctx: Context, n: int) -> int:
        # sub-task ids come from the parent's id: the same handles as the first run's
        subs = await ctx.enqueue([add.call(n, 1), hold.call(n)])
        return sum(await ctx.wait_for(subs))

    @app.task(name="legacy.only_one", unique=True)
    async def only_one(x: int) -> int:
        return x

    return app


# each recorded task: its status as recorded, and how it ends under this release
BEFORE = {
    "wf_first": TaskStatus.SUCCEEDED,
    "wf_middle": TaskStatus.RUNNING,
    "wf_last": TaskStatus.WAITING,
    "dead": TaskStatus.FAILED,
    "retrying": TaskStatus.RETRYING,
    "suspended": TaskStatus.SUSPENDED,
    "parent": TaskStatus.WAITING,
    "running": TaskStatus.RUNNING,
    "pause_asked": TaskStatus.RUNNING,  # with a pause request its worker never carried out
    "queued": TaskStatus.QUEUED,
    "keyed": TaskStatus.QUEUED,
    "unique": TaskStatus.QUEUED,
    "scheduled": TaskStatus.SCHEDULED,
    "paused": TaskStatus.PAUSED,
    "waiting": TaskStatus.WAITING,
    "expiring": TaskStatus.QUEUED,
}
RESULTS = {
    "wf_first": 3,
    "wf_middle": 30,
    "wf_last": 130,
    "dead": -7,
    "retrying": 902,  # x=9, on its second try
    "suspended": 42,
    "parent": 45,  # (4 + 1) + 4 * 10
    "running": 30,
    "queued": 5,
    "keyed": 42,
    "unique": 11,
    "scheduled": 10,
    "paused": 12,
    "waiting": 14,
}
# what is left of the queue once every task ended: records (with their TTLs), the done
# indexes, the events and the queue's markers; no index, lock or list still names a task
# stats and hist: the queue's counters and their 25-hour history (bounded hashes), which a
# new release starts writing beside the old one's records
LEFT_KINDS = {"task", "wf", "done", "events", "gen", "meta", "wake", "stats", "hist"}


@pytest.mark.parametrize("release", [PREVIOUS])
async def test_records_of_the_previous_release_are_finished_by_this_one(
    segue_engine: Engine, release: str
) -> None:
    recorded = load(release)
    ids: dict[str, str] = recorded["tasks"]
    queue = recorded["queue"]
    prefix = f"rel{uuid.uuid4().hex[:8]}"
    url = user_url(segue_engine, prefix)
    await restore(segue_engine, prefix, recorded["keys"], since_recording_ms(recorded))
    app = new_release_app(url, prefix, queue)
    handles = {role: await app.task_handle(ids[role]) for role in BEFORE}

    async with app:
        # read as recorded, before any worker of this release touched them
        assert {role: await h.status() for role, h in handles.items()} == BEFORE
        wf = await app.workflow_handle(ids["workflow"])
        assert await wf.status() is TaskStatus.RUNNING
        assert [s.id for s in await wf.steps()] == [
            ids[f"wf_{s}"] for s in ("first", "middle", "last")
        ]
        assert await handles["wf_first"].result() == 3
        held = await app.workflow_handle(ids["wf_paused"])
        assert await held.status() is TaskStatus.PAUSED
        [schedule] = await app.schedules()
        assert (schedule.id, schedule.task, schedule.queue, schedule.cron) == (
            ids["schedule"],
            "legacy.add",
            queue,
            "* * * * * *",
        )
        running = await handles["running"].info()
        assert (running.tries, running.progress, running.progress_message) == (1, (1, 4), "holding")
        assert running.args == [3] and running.worker_id
        assert await handles["suspended"].state() == {"seen": 21, "note": "first run"}
        events = [(e.kind, e.data) for e in await handles["running"].events()]
        assert events == [
            ("task.enqueued", None),
            ("task.started", None),
            ("task.progress", {"done": 1, "total": 4, "message": "holding"}),
        ]
        assert (await handles["suspended"].info()).due_at is not None
        dead = await app.dead_letters()
        assert [d.id for d in dead] == [ids["dead"]]
        assert dead[0].error is not None and dead[0].error.message == "boom 7"
        assert (await handles["retrying"].info()).tries == 1
        keyed = await handles["keyed"].info()
        assert (keyed.priority, keyed.args) == ("high", [40, 2])
        # the idempotency key and the unique lock of the previous release still hold
        add, only_one = app.registry["legacy.add"], app.registry["legacy.only_one"]
        assert (await add.options(key="order-7").enqueue(1, 1)).id == ids["keyed"]
        assert (await only_one.enqueue(99)).id == ids["unique"]

        restored_at = datetime.now(UTC)
        async with serving(app, concurrency=4):
            assert await handles["paused"].resume() is TaskStatus.QUEUED
            assert (await app.retry(ids["dead"])).id == ids["dead"]
            # resume answers with the status read after the command: with this worker
            # serving, the one held step may already have run by then
            assert await held.resume() in (TaskStatus.RUNNING, TaskStatus.SUCCEEDED)
            for role, value in RESULTS.items():
                assert await handles[role].result(timeout=30) == value, role
            assert await wf.result(timeout=30) == 130
            assert await held.result(timeout=30) == 3
            assert await handles["expiring"].wait_for(timeout=30) is TaskStatus.EXPIRED
            # the pause asked of the vanished run is carried out when its lease lapses
            asked = handles["pause_asked"]
            assert await asked.wait_for(TaskStatus.PAUSED, timeout=30) is TaskStatus.PAUSED
            assert (await asked.info()).history[-1].reason == "ops: hold it"
            assert await asked.resume() is TaskStatus.QUEUED
            assert await asked.result(timeout=30) == 50

            # the schedule of the previous release fires on this one's workers
            async def fired_here() -> datetime | None:
                [s] = await app.schedules()
                return s.last_tick if s.last_tick and s.last_tick > restored_at else None

            await eventually(lambda: _true(fired_here()), timeout=30)
            tick = await fired_here()
            assert tick is not None
            cron_task = f"{queue}:cron-{ids['schedule']}-{int(tick.timestamp() * 1000)}"
            assert await (await app.task_handle(cron_task)).result(timeout=30) == 21
            assert await app.unschedule(ids["schedule"])

            async def idle() -> bool:
                counts = await app.queue_counts()
                return all(counts[s] == 0 for s in ("queued", "running", "scheduled"))

            await eventually(idle, timeout=30)

        # each run whose worker vanished ran once more, as a lost run does
        for role in ("running", "wf_middle"):
            info = await handles[role].info()
            assert info.tries == 2, role
            queued_again = [t for t in info.history if t.status is TaskStatus.QUEUED]
            assert queued_again[-1].reason == "lease expired", role
        assert (await handles["suspended"].info()).tries == 1  # a Pause spends no try
        assert (await handles["retrying"].info()).tries == 2
        assert await app.dead_letters() == []
        counts = await app.queue_counts()
        assert all(counts[s] == 0 for s in ("queued", "running", "scheduled", "waiting", "paused"))
        # every recorded task ended as it should, and nothing else ran but the cron's ticks
        succeeded = {i.id for i in await app.tasks(TaskStatus.SUCCEEDED, limit=1000)}
        expected = {ids[role] for role in [*RESULTS, "pause_asked"]}
        expected |= {f"{ids['parent']}.1", f"{ids['parent']}.2"}  # its sub-tasks
        expected |= {s.id for s in await held.steps()}
        assert {i for i in succeeded if ":cron-" not in i} == expected
        assert await app.schedules() == []

    left = await keys_of(segue_engine, f"{prefix}:{{{queue}}}:*")
    assert {name.split(":", 3)[2] for name in left} <= LEFT_KINDS, left
