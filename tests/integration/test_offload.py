"""Payloads by reference (issue 21): arguments, results and ctx.state values over
offload_bytes go to the payload store, the record keeps a reference, and the stored chunks
live exactly as long as the record; over max_offload_bytes nothing is written. On a server
and on the cluster."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from segue import App, Context, PayloadError, TaskFailed, TaskStatus
from segue._keys import Keyspace
from segue._offload import PENDING_SECONDS
from segue._outcome import Released
from segue._reconcile import Reconciler
from segue._runner import Job, attempt
from tests._support import admin_client, keys_of
from tests.integration.conftest import eventually, serving
from tests.integration.test_cli_workflow import _segue

MiB = 1024 * 1024
OFFLOAD = 256 * 1024


async def _blobs(engine: Any, queue: str) -> list[str]:
    return await keys_of(engine, f"segue:{{{queue}}}:blob:*")


async def test_a_5_mib_argument_and_result_round_trip_by_reference_and_leave_no_chunk(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app(offload_bytes=OFFLOAD)
    data = "ab" * (5 * MiB // 2)

    @app.task(name="flip", ttl=1)
    async def flip(ctx: Context, text: str) -> str:
        await ctx.state.set(seen=text, small=1)
        assert await ctx.state.get("seen") == text
        return text[::-1]

    async with app:
        handle = await flip.enqueue(data)
        client = admin_client(segue_engine)
        try:
            record = await client.hgetall(f"segue:{{{queue_name}}}:task:{handle.id}")
        finally:
            await client.aclose()
        # the record holds a reference, not the 5 MiB
        assert len(record[b"p"]) < 200
        info = await handle.info()
        assert info.offloaded == {"args": len(data) + 9} and info.args == []
        await app.drain()
        assert await handle.result() == data[::-1]
        info = await handle.info()
        assert info.status is TaskStatus.SUCCEEDED
        assert info.offloaded == {"args": len(data) + 9, "result": len(data) + 2}
        assert (await handle.download("args")).startswith(b'[["abab')
        # the arguments and the result, kept with the record; the state's went with it
        kept = await _blobs(segue_engine, queue_name)
        assert len(kept) == 2
        assert all(".args." not in k for k in kept)
        # once the record expires, so do its chunks
        await eventually(lambda: _gone(segue_engine, queue_name, handle.id), timeout=5)


async def test_a_migration_reads_offloaded_state_and_stores_its_upgrade_by_reference(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    old = make_app(offload_bytes=OFFLOAD)
    new = make_app(offload_bytes=OFFLOAD)
    text = "xy" * MiB

    @old.task(name="off.v", max_tries=2, retry_backoff=2, ttl=1)
    async def job_v1(ctx: Context) -> int:
        await ctx.state.set(text=text)
        raise ValueError("stop here, state kept")

    def upgrade(state: dict[str, Any]) -> dict[str, Any]:
        # the value itself, not the reference the state hash holds
        return {"text": state["text"].upper()}

    @new.task(name="off.v", version=2, migrate={1: upgrade}, max_tries=2, ttl=1)
    async def job_v2(ctx: Context) -> int:
        client = admin_client(segue_engine)
        try:
            raw = await client.hget(f"segue:{{{queue_name}}}:state:{ctx.task_id}", "text")
        finally:
            await client.aclose()
        assert raw is not None and len(raw) < 200  # stored by reference again
        return (
            len(await ctx.state.get("text")) if await ctx.state.get("text") == text.upper() else 0
        )

    async with old, new:
        handle = await job_v1.enqueue()
        async with serving(old):
            await eventually(lambda: _status(handle, TaskStatus.RETRYING))
        await new.drain(horizon=10)
        assert await handle.result(timeout=5) == len(text)
        assert (await handle.info()).version == 2
        # the state's chunks (before and after the upgrade) went with the state
        assert not [k for k in await _blobs(segue_engine, queue_name) if ":state." in k]
        await eventually(lambda: _gone(segue_engine, queue_name, handle.id), timeout=5)


async def test_a_compensation_receives_its_steps_offloaded_result(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app(offload_bytes=OFFLOAD)
    big = "z" * MiB
    undone: list[int] = []

    @app.task(name="off.book")
    async def book() -> str:
        return big

    @app.task(name="off.fail", max_tries=1)
    async def fail(booked: str) -> None:
        raise RuntimeError("no")

    @app.task(name="off.unbook")
    async def unbook(booked: str) -> None:
        undone.append(len(booked) if booked == big else -1)

    async with app:
        h = await (book.call().options(compensate=unbook.call()) | fail.call()).enqueue()
        async with serving(app):
            with pytest.raises(TaskFailed):
                await h.result(timeout=10)
    assert undone == [len(big)]


async def _status(handle: Any, status: TaskStatus) -> bool:
    return bool(await handle.status() is status)


async def _gone(engine: Any, queue: str, task_id: str) -> bool:
    keys = await keys_of(engine, f"segue:{{{queue}}}:*{task_id}*")
    return not keys


async def test_over_max_offload_bytes_is_refused_before_anything_is_written(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app(offload_bytes=OFFLOAD, max_offload_bytes=MiB)

    @app.task(name="take")
    async def take(text: str) -> int:
        return len(text)

    async with app:
        fits = await take.enqueue("x" * (MiB // 2))
        before = await keys_of(segue_engine, f"segue:{{{queue_name}}}:*")
        with pytest.raises(PayloadError, match="max_offload_bytes"):
            await take.enqueue("x" * (2 * MiB))
        with pytest.raises(PayloadError, match="max_offload_bytes"):
            await app.enqueue_many([take.call("y"), take.call("x" * (2 * MiB))])
        assert await keys_of(segue_engine, f"segue:{{{queue_name}}}:*") == before
        await app.drain()
        assert await fits.result() == MiB // 2


async def test_a_deleted_task_takes_its_chunks_and_a_lost_enqueue_leaves_a_pending_one(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app(offload_bytes=OFFLOAD)

    @app.task(name="size", ttl=None)
    async def size(text: str) -> int:
        return len(text)

    async with app:
        handle = await size.enqueue("z" * MiB)
        await app.drain()
        assert await handle.result() == MiB
        assert len(await _blobs(segue_engine, queue_name)) == 1
        assert await handle.delete()
        assert await _blobs(segue_engine, queue_name) == []

        # a producer that stops between writing the chunks and the record leaves a key
        # that expires by itself (the bound on an orphan)
        from segue._offload import offload_specs

        broker = await app._client.broker()
        _, spec = app._enqueuer.spec(size.call("w" * MiB))
        await offload_specs(broker, [spec])
        [orphan] = await _blobs(segue_engine, queue_name)
        client = admin_client(segue_engine)
        try:
            ttl = await client.pttl(orphan)
        finally:
            await client.aclose()
        assert 0 < ttl <= PENDING_SECONDS * 1000


async def test_the_reconciler_expires_kept_chunks_whose_record_went_and_aligns_lifetimes(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    # a record deleted, or ended, by scripts that know nothing of chunks (a release before
    # payloads by reference, a hand edit, a restore) leaves kept chunks behind
    app = make_app(offload_bytes=OFFLOAD)
    ks = Keyspace("segue", queue_name)

    @app.task(name="size", ttl=None)
    async def size(text: str) -> int:
        return len(text)

    async with app:
        gone = await size.enqueue("a" * MiB)
        ended = await size.enqueue("b" * MiB)
        pending = await size.enqueue("c" * MiB)
        [gone_blob] = await keys_of(segue_engine, ks.blob(gone.id, "*"))
        [ended_blob] = await keys_of(segue_engine, ks.blob(ended.id, "*"))
        [pending_blob] = await keys_of(segue_engine, ks.blob(pending.id, "*"))
        client = admin_client(segue_engine)
        try:
            await client.delete(ks.task(gone.id))
            await client.pexpire(ks.task(ended.id), 60_000)
            broker = await app._client.broker()
            repairs = await Reconciler(broker, "test", [ks]).run_pass(ks, steps=None)
            assert sorted((r.kind, r.task_id) for r in repairs) == sorted(
                [("orphan_blob", gone.id), ("blob_lifetime", ended.id), ("stale_queued", gone.id)]
            )
            # an orphan expires as a pending value does (a key being written looks the same)
            assert 0 < await client.pttl(gone_blob) <= PENDING_SECONDS * 1000
            assert 0 < await client.pttl(ended_blob) <= 60_000
            assert await client.pttl(pending_blob) == -1  # its record is live: kept
            assert await Reconciler(broker, "test", [ks]).run_pass(ks, steps=None) == []
        finally:
            await client.aclose()


async def test_a_worker_of_the_release_before_releases_an_offloaded_task(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    # An earlier release's worker reads the record's name through its own claim script,
    # which knows nothing of the mark: it finds no task by that name and releases the task
    # without spending a try (runner.attempt's unknown-name branch, unchanged since), where
    # reading the reference as arguments would have failed it. This release runs it.
    app = make_app(offload_bytes=OFFLOAD)
    ks = Keyspace("segue", queue_name)

    @app.task(name="size")
    async def size(text: str) -> int:
        return len(text)

    async with app:
        handle = await size.enqueue("d" * MiB)
        client = admin_client(segue_engine)
        try:
            raw = await client.hget(ks.task(handle.id), "n")
        finally:
            await client.aclose()
        seen_by_old = raw.decode()
        assert seen_by_old != "size" and seen_by_old.startswith("size")
        assert app._registry.tasks.get(seen_by_old) is None
        job = Job(ks, handle.id, seen_by_old, b"", 1, "1", 0, 3)
        outcome = await attempt(job, None, app.settings, "old-worker", ThreadPoolExecutor(1))
        assert isinstance(outcome, Released)
        assert (await handle.info()).name == "size"
        await app.drain()
        assert await handle.result() == MiB


@pytest.mark.slow
async def test_segue_info_shows_the_size_and_segue_download_gives_the_value(
    segue_valkey: Any, queue_name: str, tmp_path: Path
) -> None:
    app = App("test", redis_url=segue_valkey.url, queue=queue_name, offload_bytes=OFFLOAD)

    @app.task(name="cli.big")
    async def big(text: str) -> int:
        return len(text)

    async with app:
        handle = await big.enqueue("e" * MiB)
        await app.drain()
        shown = _segue("info", handle.id, "--url", segue_valkey.url)
        assert shown.returncode == 0, shown.stderr
        assert f"args offloaded (1.0 MiB): segue download {handle.id} args" in shown.stdout
        assert "eeee" not in shown.stdout
        saved = tmp_path / "args.json"
        got = _segue("download", handle.id, "args", "-o", str(saved), "--url", segue_valkey.url)
        assert got.returncode == 0, got.stderr
        assert json.loads(saved.read_bytes()) == [["e" * MiB], {}]
        result = _segue("download", handle.id, "result", "--url", segue_valkey.url)
        assert result.returncode == 0 and json.loads(result.stdout) == MiB


async def test_a_chain_and_a_group_hand_on_offloaded_results(
    make_app: Callable[..., App],
) -> None:
    app = make_app(offload_bytes=OFFLOAD)

    @app.task(name="make")
    async def make(n: int) -> str:
        return "m" * n

    @app.task(name="measure")
    async def measure(text: str) -> int:
        return len(text)

    @app.task(name="total")
    async def total(texts: list[str]) -> int:
        return sum(len(t) for t in texts)

    async with app:
        chain = await (make.call(MiB) | measure.call()).enqueue()
        group = await (app.group([make.call(MiB), make.call(3)]) | total.call()).enqueue()
        await app.drain()
        assert await chain.result() == MiB
        assert await group.result() == MiB + 3


async def test_a_schedules_arguments_are_never_offloaded(make_app: Callable[..., App]) -> None:
    app = make_app(offload_bytes=OFFLOAD)

    @app.task(name="take")
    async def take(text: str) -> int:
        return len(text)

    async with app:
        with pytest.raises(PayloadError, match="not offloaded"):
            await app.schedule(take.call("s" * (2 * MiB)), cron="* * * * *")


class MemoryStore:
    """A PayloadStore in this process's memory (an external store, for the test)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], bytes] = {}

    async def put(self, task_id: str, name: str, data: bytes) -> None:
        self.values[task_id, name] = data

    async def get(self, task_id: str, name: str) -> bytes:
        return self.values[task_id, name]

    async def delete(self, task_id: str, name: str) -> None:
        self.values.pop((task_id, name), None)


async def test_a_store_of_your_own_holds_the_values_and_is_told_when_the_record_goes(
    segue_valkey: Any, queue_name: str
) -> None:
    store = MemoryStore()
    app = App(
        "test",
        redis_url=segue_valkey.url,
        queue=queue_name,
        offload_bytes=OFFLOAD,
        payload_store=store,
    )
    ks = Keyspace("segue", queue_name)

    @app.task(name="twice")
    async def twice(text: str) -> str:
        return text * 2

    async with app:
        handle = await twice.enqueue("t" * MiB)
        client = admin_client(segue_valkey)
        try:
            # an earlier release's worker would release it as well
            assert (await client.hget(ks.task(handle.id), "n")) != b"twice"
        finally:
            await client.aclose()
        await app.drain()
        assert await handle.result() == "t" * (2 * MiB)
        assert sorted(name.split(".")[0] for _, name in store.values) == ["args", "result"]
        assert await _blobs(segue_valkey, queue_name) == []  # nothing in Redis
        assert await handle.delete()
        assert store.values == {}
