"""Payloads by reference (issue 21): arguments, results and ctx.state values over
offload_bytes go to the payload store, the record keeps a reference, and the stored chunks
live exactly as long as the record; over max_offload_bytes nothing is written. On a server
and on the cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from segue import App, Context, PayloadError, TaskStatus
from segue._offload import PENDING_SECONDS
from tests._support import admin_client, keys_of
from tests.integration.conftest import eventually

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
