"""Sharded queues (docs/sharding.md): routing, claiming from every shard, pause across
shards, workflows and sub-tasks kept in one shard, per-key uniqueness, resharding."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import Counter
from typing import Any

import pytest

from segue import App, Context, QueueFull, TaskStatus
from segue._keys import queue_of
from segue._shards import logical_queue, shard_names, slot
from tests._support import Engine
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_polish import segue


def _app(engine: Engine, queue: str) -> tuple[App, dict[str, Any]]:
    app = App("shards", redis_url=engine.url, queue=queue, poll_seconds=0.2)
    ran: Counter[str] = Counter()

    @app.task
    async def job(ctx: Context, n: int) -> int:
        ran[ctx.task_id] += 1
        return n

    @app.task(unique=lambda n: str(n % 3))
    async def one_per(ctx: Context, n: int) -> int:
        ran[ctx.task_id] += 1
        await asyncio.sleep(0.5)
        return n

    @app.task
    async def parent(ctx: Context, k: int) -> list[str]:
        handles = [await ctx.enqueue(job.call(i)) for i in range(k)]
        return [h.id for h in handles]

    return app, {"job": job, "one_per": one_per, "parent": parent, "ran": ran}


def test_shard_tags_spread_evenly_over_the_slot_space() -> None:
    for n in (2, 3, 16, 100):
        names = shard_names("events", n)
        assert len(set(names)) == n
        # shard i hashes into the i-th n-th of the slots: one shard per window
        assert [slot(s) * n // 16384 for s in names] == list(range(n))
        assert {logical_queue(s) for s in names} == {"events"}
    assert set(shard_names("events", 16)).isdisjoint(shard_names("events", 32))


async def test_a_sharded_queue_on_one_server(segue_valkey: Engine, queue_name: str) -> None:
    app, t = _app(segue_valkey, queue_name)
    async with app:
        assert await app.queue(queue_name, shards=4).create() == 4
        handles = [await t["job"].enqueue(i) for i in range(40)]
        shards = Counter(queue_of(h.id) for h in handles)
        # round-robin: every shard gets its share, the base none
        assert set(shards) == set(shard_names(queue_name, 4))
        assert set(shards.values()) == {10}
        many = await app.enqueue_many([t["job"].call(i) for i in range(8)])
        assert len({queue_of(h.id) for h in many}) == 4
        # an idempotency key routes by the key: the same key finds the same task
        a = await t["job"].options(key="k1").enqueue(1)
        b = await t["job"].options(key="k1").enqueue(1)
        assert a.id == b.id
        assert (await app.queue(queue_name).counts())["queued"] == 49
        async with serving(app):
            assert [await h.result(timeout=10) for h in handles] == list(range(40))
            assert await a.result(timeout=10) == 1
        assert set(t["ran"].values()) == {1} and len(t["ran"]) == 49
        counts = await app.queue(queue_name).counts()
        assert counts["succeeded"] == 49 and counts["queued"] == 0
        per_shard = await app.queue(queue_name).shard_counts()
        assert sum(c["succeeded"] for c in per_shard.values()) == 49
        assert await app.queues() == sorted({*await app.queues()}) and queue_name in (
            await app.queues()
        )


async def test_a_later_declaration_that_disagrees_is_warned_about_and_the_server_wins(
    segue_valkey: Engine, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = _app(segue_valkey, queue_name)
    second, t = _app(segue_valkey, queue_name)
    async with first, second:
        assert await first.queue(queue_name, shards=4).create() == 4
        second.queue(queue_name, shards=8)  # declared in code, met at the first enqueue
        with caplog.at_level(logging.WARNING, logger="segue.shards"):
            h = await t["job"].enqueue(1)
        assert queue_of(h.id) in shard_names(queue_name, 4)
        assert "server holds 4 shards" in caplog.text


@pytest.fixture(params=["segue_valkey", "segue_cluster"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """A single server and the cluster."""
    found: Engine = request.getfixturevalue(request.param)
    return found


async def test_pause_and_resume_hold_across_shards(engine: Engine, queue_name: str) -> None:
    app, t = _app(engine, queue_name)
    async with app:
        q = app.queue(queue_name, shards=16)
        await q.create()
        await q.pause()
        assert await q.is_paused()
        handles = [await t["job"].enqueue(i) for i in range(32)]
        assert len({queue_of(h.id) for h in handles}) == 16
        async with serving(app) as worker:
            # nothing to wait for but time: several claim rounds over every shard
            await asyncio.sleep(0.6)
            assert worker.finished == 0
            assert {await h.status() for h in handles} == {TaskStatus.QUEUED}
            await q.resume()
            assert [await h.result(timeout=10) for h in handles] == list(range(32))


async def test_a_reshard_racing_a_pause_or_a_resume_leaves_every_shard_as_the_queue(
    engine: Engine, queue_name: str
) -> None:
    """A reshard and a pause (or a resume) sent at the same moment, from two processes, in
    both orders: every shard the workers serve ends flagged as the queue is."""
    app, t = _app(engine, queue_name)
    other = App("shards", redis_url=engine.url)
    async with app, other:
        broker = await app._client.broker()
        for i, (first, n) in enumerate([("pause", 4), ("reshard", 4), ("pause", 1)]):
            name = f"{queue_name}-{i}"
            q, q2 = app.queue(name), other.queue(name)
            if n > 1:
                await app.queue(name, shards=n).create()

            async def flags(name: str = name) -> set[bool]:
                sc = await broker.shards.read(name)
                names = sc.serving(name)
                return {await broker.reads.queue_paused(broker.keyspace(s)) for s in names}

            steps = [q.pause(), q2.reshard(2 * n + 2)]
            await asyncio.gather(*(steps if first == "pause" else steps[::-1]))
            assert await flags() == {True}, (first, n)
            assert len(await q.shard_counts()) == 1 + (n if n > 1 else 0) + 2 * n + 2
            # and a resume racing a reshard of the paused queue clears every shard
            await q.resume()
            await q.pause()
            await broker.shards.drained(name, n)
            steps = [q.resume(), q2.reshard(4 * n + 4)]
            await asyncio.gather(*(steps if first == "pause" else steps[::-1]))
            assert await flags() == {False}, (first, n)
        # the new shards run their tasks once resumed
        h = await t["job"].options(queue=f"{queue_name}-0").enqueue(7)
        assert logical_queue(queue_of(h.id)) == f"{queue_name}-0"
        async with serving(app, queues=[f"{queue_name}-0"]):
            assert await h.result(timeout=10) == 7


async def test_workflows_and_sub_tasks_stay_in_their_shard(
    segue_valkey: Engine, queue_name: str
) -> None:
    app, t = _app(segue_valkey, queue_name)
    job, parent = t["job"], t["parent"]
    async with app:
        await app.queue(queue_name, shards=8).create()
        wf = await (job.call(1) | job.call() | job.call()).enqueue()
        p = await parent.enqueue(5)
        async with serving(app):
            assert await wf.result(timeout=10) == 1
            children = await p.result(timeout=10)
        shard = queue_of(wf.id)
        assert shard in shard_names(queue_name, 8)
        steps = [i for i in t["ran"] if i.startswith(wf.id)]
        assert len(steps) == 3 and {queue_of(i) for i in steps} == {shard}
        assert {queue_of(c) for c in children} == {queue_of(p.id)}


async def test_unique_tasks_of_one_key_share_a_shard(segue_valkey: Engine, queue_name: str) -> None:
    app, t = _app(segue_valkey, queue_name)
    async with app:
        await app.queue(queue_name, shards=8).create()
        handles = [await t["one_per"].enqueue(n) for n in range(12)]
        by_key: dict[int, set[str]] = {}
        for n, h in enumerate(handles):
            by_key.setdefault(n % 3, set()).add(queue_of(h.id))
        assert all(len(s) == 1 for s in by_key.values())
        # one live task per key: the later enqueues got the first one's handle
        assert len({h.id for h in handles}) == 3


async def test_reshard_mid_drain_loses_nothing_and_never_splits_a_key(
    segue_valkey: Engine, queue_name: str
) -> None:
    app, t = _app(segue_valkey, queue_name)
    job = t["job"]
    async with app:
        q = app.queue(queue_name, shards=4)
        await q.create()
        first = [await job.enqueue(i) for i in range(40)]
        keyed_before = [await job.options(key=f"k{i}").enqueue(i) for i in range(8)]
        async with serving(app, concurrency=2):
            assert await q.reshard(8) == 8
            broker = await app._client.broker()
            await broker.shards.read(queue_name)
            later = [await job.enqueue(i) for i in range(40)]
            # new enqueues use the new count
            assert {queue_of(h.id) for h in later} == set(shard_names(queue_name, 8))
            # keyed ones keep the old routing while the old shards drain
            keyed_during = [await job.options(key=f"k{i}").enqueue(i) for i in range(8)]
            assert [queue_of(h.id) for h in keyed_during] == [queue_of(h.id) for h in keyed_before]
            for h in [*first, *later, *keyed_before]:
                await h.result(timeout=30)
        assert set(t["ran"].values()) == {1}
        assert len(t["ran"]) == 88


@pytest.mark.slow
async def test_the_cli_creates_and_reshards_a_queue_and_lists_it_whole(
    segue_valkey: Engine, queue_name: str
) -> None:
    url = segue_valkey.url
    made = segue("queue", "create", queue_name, "--shards", "4", "--url", url)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"queue {queue_name}: 4 shard(s)"
    app, t = _app(segue_valkey, queue_name)
    async with app:
        for i in range(8):
            await t["job"].enqueue(i)
        # listing pages through the shards: the queue's 8 tasks, 3 at a time
        pages = [await app.tasks("queued", queue=queue_name, offset=o, limit=3) for o in (0, 3, 6)]
        assert [len(p) for p in pages] == [3, 3, 2]
        assert len({i.id for p in pages for i in p}) == 8
    shown = segue("queues", "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [q for q in json.loads(shown.stdout) if q["queue"].startswith(queue_name)] == [
        {"queue": queue_name, "paused": False}
    ]
    resharded = segue("queue", "reshard", queue_name, "8", "--url", url)
    assert resharded.returncode == 0, resharded.stderr
    assert f"queue {queue_name}: resharded to 8 shard(s)" in resharded.stdout
    # the 4 shards still hold their 8 tasks: a second reshard waits for them to drain
    refused = segue("queue", "reshard", queue_name, "16", "--url", url)
    assert refused.returncode == 1
    assert "still draining" in refused.stderr


async def test_metrics_add_up_the_shards_and_show_each(
    segue_valkey: Engine, queue_name: str
) -> None:
    from segue.dashboard._metrics import render

    app, t = _app(segue_valkey, queue_name)
    async with app:
        await app.queue(queue_name, shards=4).create()
        for i in range(6):
            await t["job"].enqueue(i)
        text = (await render(app._client)).decode()
    lines = text.splitlines()
    assert f'segue_queue_tasks{{queue="{queue_name}",status="queued"}} 6.0' in lines
    assert f'segue_queue_ready{{queue="{queue_name}"}} 6.0' in lines
    per_shard = [ln for ln in lines if ln.startswith(f'segue_shard_ready{{queue="{queue_name}"')]
    assert len(per_shard) == 5  # the base and the 4 shards
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in per_shard) == 6


async def test_an_idle_cluster_worker_wakes_at_once_for_a_task_on_any_shard(
    segue_cluster: Engine, queue_name: str
) -> None:
    # a poll far longer than the wait allowed: only the wake tokens can explain a start
    app = App("shards", redis_url=segue_cluster.url, queue=queue_name, poll_seconds=10.0)
    started: dict[str, float] = {}

    @app.task
    async def job(ctx: Context, n: int) -> int:
        started[ctx.task_id] = time.monotonic()
        return n

    async with app:
        await app.queue(queue_name, shards=8).create()
        async with serving(app) as worker:
            await worker.ready.wait()
            took = []
            for i in range(8):  # round-robin: one task on each shard in turn
                await asyncio.sleep(0.1)  # the worker is idle, blocked in its waits
                at = time.monotonic()
                h = await job.enqueue(i)
                await eventually(functools.partial(_is_in, h.id, started), timeout=5)
                took.append(started[h.id] - at)
        assert max(took) < 1.0, took


async def _is_in(task_id: str, started: dict[str, float]) -> bool:
    return task_id in started


async def test_a_task_wide_rate_limit_is_split_over_the_shards(
    segue_valkey: Engine, queue_name: str
) -> None:
    app = App("shards", redis_url=segue_valkey.url, queue=queue_name, poll_seconds=0.2)
    starts: list[float] = []
    running = most = 0

    @app.task(rate_limit="20/s")
    async def call_api(i: int) -> int:
        starts.append(time.monotonic())
        return i

    @app.task(concurrency=8)
    async def fragile(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return i

    async with app:
        await app.queue(queue_name, shards=4).create()
        limited = await app.enqueue_many([call_api.call(i) for i in range(40)])
        capped = await app.enqueue_many([fragile.call(i) for i in range(40)])
        async with serving(app, concurrency=20):
            for h in [*limited, *capped]:
                await h.result(timeout=20)
    # each of the 4 shards starts 5/s (burst 1): 40 tasks spread evenly take about 2 s,
    # not the half second four whole budgets would allow
    assert starts[-1] - starts[0] >= 1.5
    for i, t in enumerate(starts):
        # over any second: the rate, plus each shard's burst and its early start
        assert sum(1 for s in starts[i:] if s - t < 1.0) <= 20 + 4 * 2
    assert most <= 8  # 2 per shard


async def test_max_queue_length_holds_per_shard(segue_valkey: Engine, queue_name: str) -> None:
    app = App("shards", redis_url=segue_valkey.url, queue=queue_name, max_queue_length=8)

    @app.task
    async def job(n: int) -> int:
        return n

    async with app:
        await app.queue(queue_name, shards=4).create()
        for i in range(8):  # round-robin: 2 in each shard, each shard's share of 8
            await job.enqueue(i)
        with pytest.raises(QueueFull) as refused:
            await job.enqueue(8)
        assert refused.value.limit == 2
        assert (await app.queue(queue_name).counts())["queued"] == 8


async def test_the_dashboard_lists_ended_tasks_of_every_shard_newest_first(
    segue_valkey: Engine, queue_name: str
) -> None:
    from segue.dashboard._ops_lists import ended_newest

    app, t = _app(segue_valkey, queue_name)
    async with app:
        await app.queue(queue_name, shards=4).create()
        handles = [await t["job"].enqueue(i) for i in range(8)]
        async with serving(app):
            for h in handles:
                await h.result(timeout=10)
        page = await ended_newest(app._client, TaskStatus.SUCCEEDED, queue_name, 0, 5)
        rest = await ended_newest(app._client, TaskStatus.SUCCEEDED, queue_name, 5, 5)
    got = [i.id for i in [*page, *rest]]
    assert len(got) == 8 and set(got) == {h.id for h in handles}
    ended = [i.ended_at for i in [*page, *rest]]
    assert ended == sorted(ended, reverse=True)  # type: ignore[type-var]


async def test_once_the_old_shards_drained_keyed_enqueues_route_by_the_new_count(
    segue_valkey: Engine, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segue import _shard_worker

    monkeypatch.setattr(_shard_worker, "DRAIN_GRACE_SECONDS", 0.0)
    app, t = _app(segue_valkey, queue_name)
    job = t["job"]
    async with app:
        q = app.queue(queue_name, shards=2)
        await q.create()
        before = [await job.options(key=f"k{i}").enqueue(i) for i in range(8)]
        await q.reshard(4)
        broker = await app._client.broker()
        groups = await _shard_worker.shard_groups(broker, [queue_name])
        watcher = _shard_worker.ShardWatcher(broker, groups, _nothing)
        await watcher.check(groups[0])  # old shards hold tasks: nothing changes
        assert (await broker.shards.read(queue_name)).old == 2
        async with serving(app):
            for h in before:
                await h.result(timeout=10)
        await watcher.check(groups[0])  # empty since now
        await watcher.check(groups[0])  # and still, past the grace: the old count goes
        assert (await broker.shards.read(queue_name)).old == 0
        after = [await job.options(key=f"n{i}").enqueue(i) for i in range(16)]
    assert {queue_of(h.id) for h in after} <= set(shard_names(queue_name, 4))
    assert len({queue_of(h.id) for h in after}) > 2


async def _nothing(group: Any, more: Any) -> None:
    del group, more


async def test_the_dashboard_lists_the_workflows_of_every_shard(
    segue_valkey: Engine, queue_name: str
) -> None:
    from segue.dashboard._ops_lists import workflow_rows
    from segue.dashboard._ops_views import _workflow_ids

    app, t = _app(segue_valkey, queue_name)
    job = t["job"]
    async with app:
        await app.queue(queue_name, shards=4).create()
        flows = [await (job.call(i) | job.call()).enqueue() for i in range(6)]
        assert len({queue_of(wf.id) for wf in flows}) == 4
        async with serving(app):
            for wf in flows:
                await wf.result(timeout=10)
        broker = await app._client.broker()
        shards = (await broker.shards.read(queue_name)).serving(queue_name)
        spaces = [broker.reads.keyspace(s) for s in shards]
        ids = await _workflow_ids(broker.reads, spaces, 0, 4) + await _workflow_ids(
            broker.reads, spaces, 4, 4
        )
        rows = await workflow_rows(app, queue_name, ids)
    assert ids == [wf.id for wf in reversed(flows)]  # newest first, across the shards
    assert [(r.steps, r.done, r.units) for r in rows] == [(2, 2, 2)] * 6
