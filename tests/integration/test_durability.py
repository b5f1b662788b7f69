"""Durability levels (issue #8): "fsync" waits for the server's AOF (WAITAOF), "replicated"
for replicas (WAIT); what the server does not confirm raises DurabilityError, and what it
cannot give is refused at start."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from segue import App, Context, DurabilityError
from tests._support import (
    ACL_PASSWORD,
    ACL_USER,
    Engine,
    add_acl_user,
    free_port,
    server_binary,
    start_process,
    stop,
)

TIMEOUT = 0.3  # durability_timeout_seconds of these tests: a refusal costs this long


class Pair:
    """A valkey primary with appendonly on, and one replica of it."""

    def __init__(self, directory: Path) -> None:
        binary = server_binary("valkey")
        assert binary is not None
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary_dir = directory / "primary"
        self.primary = start_process(
            binary,
            self.primary_port,
            self.primary_dir,
            "--appendonly",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        )
        self.replica = start_process(
            binary,
            self.replica_port,
            directory / "replica",
            "--replicaof",
            "127.0.0.1",
            str(self.primary_port),
        )
        add_acl_user(self.primary_port)
        self.url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{self.primary_port}/0"
        deadline = time.monotonic() + 20
        while self.replica_info().get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)

    def replica_info(self) -> dict[str, Any]:
        with redis.Redis(port=self.replica_port) as r:
            info: dict[str, Any] = r.info("replication")
        return info

    def replica_has(self, key: str) -> bool:
        with redis.Redis(port=self.replica_port) as r:
            return bool(r.exists(key))

    def aof_text(self) -> bytes:
        return b"".join(p.read_bytes() for p in (self.primary_dir / "appendonlydir").iterdir())

    def stop(self) -> None:
        stop(self.replica)
        stop(self.primary)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("durable-pair"))
    yield p
    p.stop()


def _app(url: str, queue_name: str, **overrides: Any) -> App:
    overrides.setdefault("durability_timeout_seconds", TIMEOUT)
    app = App("dur", redis_url=url, queue=queue_name, **overrides)

    @app.task(name="dur.add")
    async def add(a: int, b: int) -> int:
        return a + b

    return app


def _record(url: str, app: App, task_id: str) -> bool:
    ks_key = f"{app.settings.prefix}:{{{app.settings.queue}}}:task:{task_id}"
    client: Any = redis.Redis.from_url(url)
    try:
        return bool(client.exists(ks_key))
    finally:
        client.close()


async def test_fsync_waits_for_the_aof_and_replicated_for_the_replica(
    pair: Pair, queue_name: str
) -> None:
    # appendfsync everysec (the default): a confirmation waits for the next fsync, up to 1 s
    app = _app(pair.url, queue_name, durability="fsync", durability_timeout_seconds=2.0)
    add = app.registry["dur.add"]
    async with app:
        handle = await add.enqueue(1, 2)
        # confirmed fsynced: the task is in the AOF on disk when enqueue returns
        assert handle.id.encode() in pair.aof_text()
        replicated = await add.options(durability="replicated").enqueue(3, 4)
        # WAIT confirmed the replica has it: it reads there at once
        assert pair.replica_has(f"segue:{{{queue_name}}}:task:{replicated.id}")
        # both at once in one batch (the one WAITAOF, then the one WAIT)
        handles = await app.enqueue_many(
            [add.call(5, 6), add.options(durability="replicated").call(7, 8)]
        )
        for h in handles:
            assert pair.replica_has(f"segue:{{{queue_name}}}:task:{h.id}")
        steps = add.options(durability="replicated").call(1, 1) | add.call(2)
        flow = await steps.enqueue()
        assert await app.drain() == 6
        assert await flow.result(timeout=5) == 4
        assert await replicated.result(timeout=5) == 7


async def test_a_task_already_there_is_confirmed_behind_a_write_of_its_own(
    pair: Pair, queue_name: str
) -> None:
    app = _app(pair.url, queue_name)
    add = app.registry["dur.add"]
    async with app:
        pair.replica.send_signal(signal.SIGSTOP)  # connected, but acknowledges nothing
        try:
            await add.options(key="k").enqueue(1, 1)  # memory: returns at once
            # the same key again finds the task there and writes nothing: a WAIT behind
            # nothing would confirm at once; it must confirm the task, which the frozen
            # replica does not have
            started = time.monotonic()
            with pytest.raises(DurabilityError, match="confirmed: 0 replicas"):
                await add.options(key="k", durability="replicated").enqueue(1, 1)
            assert time.monotonic() - started < TIMEOUT + 1.0
        finally:
            pair.replica.send_signal(signal.SIGCONT)
        handle = await add.options(key="k", durability="replicated").enqueue(1, 1)
        assert pair.replica_has(f"segue:{{{queue_name}}}:task:{handle.id}")


async def test_sub_tasks_wait_for_their_level_too(pair: Pair, queue_name: str) -> None:
    app = _app(pair.url, queue_name)
    add = app.registry["dur.add"]
    children: list[str] = []

    @app.task(name="dur.parent")
    async def parent(ctx: Context) -> int:
        child = await ctx.enqueue(add.options(durability="replicated").call(2, 3))
        children.append(child.id)
        # the child's enqueue returned: the replica has it already
        assert pair.replica_has(f"segue:{{{queue_name}}}:task:{child.id}")
        (total,) = await ctx.wait_for([child])
        return int(total)

    async with app:
        handle = await parent.enqueue()
        await app.drain()
        assert await handle.result(timeout=5) == 5
    # one child, however many times the parent ran (again after its wait, unless the child
    # had ended already: a repeat finds the child and confirms it behind a write of its own)
    assert len(set(children)) == 1


async def test_replicated_without_a_replica_raises_within_the_timeout(
    segue_valkey: Engine, queue_name: str
) -> None:
    app = _app(segue_valkey.url, queue_name, durability="replicated")
    add = app.registry["dur.add"]
    async with app:  # not refused at start: replicas come and go
        started = time.monotonic()
        with pytest.raises(DurabilityError) as caught:
            await add.enqueue(1, 2)
        assert time.monotonic() - started < TIMEOUT + 1.0
        err = caught.value
        text = str(err)
        assert "durability='replicated' (copied to 1 replica within 0.3 s)" in text, text
        assert f"127.0.0.1:{segue_valkey.url.rsplit(':', 1)[1].split('/')[0]}" in text
        assert "confirmed: 0 replicas" in text and "may still exist" in text
        # the write happened; only its durability is unconfirmed
        (task_id,) = err.task_ids
        assert _record(segue_valkey.admin_url, app, task_id)
        # a per-enqueue "memory" needs nothing more
        await add.options(durability="memory").enqueue(1, 1)
        with pytest.raises(DurabilityError, match="2 tasks"):
            await app.enqueue_many([add.call(1, 1), add.call(2, 2)])


async def test_fsync_on_a_server_without_aof_is_refused_at_start_and_per_enqueue(
    segue_valkey: Engine, queue_name: str
) -> None:
    with pytest.raises(DurabilityError, match=r"its append-only file is off \(appendonly no\)"):
        await _app(segue_valkey.url, queue_name, durability="fsync").connect()
    app = _app(segue_valkey.url, queue_name)
    add = app.registry["dur.add"]
    async with app:
        with pytest.raises(DurabilityError, match="durability='fsync' cannot be had"):
            await add.options(durability="fsync").enqueue(1, 2)
        # refused before writing: nothing was created
        assert await app.queue_counts() == dict.fromkeys(await app.queue_counts(), 0)


@pytest.fixture
def redis70(request: pytest.FixtureRequest) -> Engine:
    if server_binary("redis") is None:
        pytest.skip("redis-server (7.0, without WAITAOF) is not on PATH")
    engine: Engine = request.getfixturevalue("segue_redis")
    return engine


async def test_fsync_on_redis_7_0_is_refused_at_start(redis70: Engine, queue_name: str) -> None:
    app = _app(redis70.url, queue_name, durability="fsync")
    with pytest.raises(DurabilityError) as caught:
        await app.connect()
    text = str(caught.value)
    assert text.startswith("durability='fsync' cannot be had from the server at redis://127.0.0.1:")
    assert "it has no WAITAOF command (redis 7.0" in text
    await app.close()


@pytest.mark.cluster
async def test_cluster_without_replicas_or_aof_says_so(
    segue_cluster: Engine, queue_name: str
) -> None:
    with pytest.raises(DurabilityError, match="append-only file is off"):
        await _app(segue_cluster.url, queue_name, durability="fsync").connect()
    app = _app(segue_cluster.url, queue_name, durability="replicated")
    add = app.registry["dur.add"]
    async with app:
        # queues on different nodes: each node confirms its own writes
        other = f"{queue_name}x"
        with pytest.raises(DurabilityError, match="confirmed: 0 replicas") as caught:
            await app.enqueue_many([add.call(1, 1), add.options(queue=other).call(2, 2)])
        assert len(caught.value.task_ids) == 2
        counts = [await app.queue_counts(q) for q in (queue_name, other)]
        assert [c["queued"] for c in counts] == [1, 1]


def test_settings_validate_the_level() -> None:
    from segue import ConfigurationError, Settings

    assert Settings.from_env({"SEGUE_DURABILITY": "fsync"}).durability == "fsync"
    with pytest.raises(ConfigurationError, match="durability 'disk' is not one of"):
        Settings(durability="disk")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="durability_replicas"):
        Settings(durability_replicas=0)
