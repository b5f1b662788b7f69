"""Per-task output streams (ctx.stream, handle.stream) in one process, on a single server and
on the cluster: order, resuming exactly, the end of every kind of task, trimming, lifetimes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from segue import (
    App,
    Context,
    Pause,
    StreamRestarted,
    StreamTruncated,
    SyncContext,
    TaskHandle,
    TaskNotFound,
    TaskStatus,
)
from tests._support import admin_client
from tests.integration.conftest import eventually, serving


async def read_all(handle: TaskHandle[Any], after: str | None = None) -> list[Any]:
    return [chunk async for chunk in handle.stream(after=after)]


async def read_entry_ids(handle: TaskHandle[Any]) -> list[str]:
    reads = await handle._client.reads()
    rows = await reads.read_output(reads.keyspace(handle.queue), handle.id, "0-0", 1000, None)
    return [r[0].decode() for r in rows]


async def test_ten_thousand_chunks_reach_two_readers_once_in_order_one_resuming(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    app = make_app()
    total = 10_000
    gate = asyncio.Event()

    @app.task(name="talker")
    async def talker(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.stream({"i": i})
            if i == n // 2:
                await gate.wait()  # the second reader leaves and comes back meanwhile
        return n

    async with app:
        h = await talker.enqueue(total)
        first = asyncio.create_task(read_all(h))
        second: list[Any] = []
        stream = h.stream()

        async def leave_early() -> None:
            async for chunk in stream:
                second.append(chunk)
                if len(second) == 1000:
                    break  # disconnects, keeping its position

        async with serving(app, concurrency=2):
            await asyncio.wait_for(leave_early(), 20)
            position = stream.position
            gate.set()
            rest = await asyncio.wait_for(read_all(h, after=position), 20)
            got = await asyncio.wait_for(first, 20)
            assert await h.result(timeout=5) == total
        expected = [{"i": i} for i in range(total)]
        assert got == expected
        assert second + rest == expected
        # batching: fewer entries than chunks
        admin = admin_client(segue_engine)
        try:
            entries = await admin.xlen(f"segue:{{{h.queue}}}:out:{h.id}")
        finally:
            await admin.aclose()
        assert entries < total / 5


async def test_every_reader_ends_for_a_cancelled_task_and_one_that_never_streams(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    seen_five = asyncio.Event()

    @app.task(name="endless")
    async def endless(ctx: Context) -> None:
        i = 0
        while True:
            await ctx.stream(i)
            i += 1
            await asyncio.sleep(0.01)

    async def read_until_cancelled(handle: TaskHandle[Any]) -> list[Any]:
        got: list[Any] = []
        async for chunk in handle.stream():
            got.append(chunk)
            if len(got) == 5:
                seen_five.set()
        return got

    @app.task(name="quiet")
    def quiet(ctx: SyncContext) -> int:
        return 1

    @app.task(name="sync_talker")
    def sync_talker(ctx: SyncContext) -> None:
        for i in range(3):
            ctx.stream(f"s{i}")

    async with app:
        h = await endless.enqueue()
        q = await quiet.enqueue()
        s = await sync_talker.enqueue()
        reader = asyncio.create_task(read_until_cancelled(h))
        async with serving(app, concurrency=4):
            # the cancel comes once five chunks are on the server: chunks the run gave that
            # were still waiting or on their way when it was cancelled are dropped with it
            await asyncio.wait_for(seen_five.wait(), 10)
            await h.cancel()
            got = await asyncio.wait_for(reader, 10)
            assert got[:5] == [0, 1, 2, 3, 4]
            assert got == list(range(len(got)))
            assert await asyncio.wait_for(read_all(q), 10) == []
            assert await asyncio.wait_for(read_all(s), 10) == ["s0", "s1", "s2"]
        # a task that ended before anyone read: the stream is still there to read
        assert await read_all(h) == got
        # a stream of a task cancelled before it ever ran ends too
        late = await quiet.enqueue()
        await late.cancel()
        assert await asyncio.wait_for(read_all(late), 10) == []


async def test_a_retry_shows_a_restart_and_a_trimmed_position_raises(
    make_app: Callable[..., App],
) -> None:
    app = make_app(max_stream_entries=100)
    trimmed = asyncio.Event()

    # how many chunks go in one entry depends on the round trip, so the task streams until
    # the server has trimmed the stream's start, however long that takes here
    @app.task(name="long")
    async def long(ctx: Context) -> None:
        for i in range(50_000):
            if trimmed.is_set():
                break
            await ctx.stream(i)
            await asyncio.sleep(0.001)
        await ctx.stream("last")

    async with app:
        h = await long.enqueue()
        draining = asyncio.create_task(app.drain())
        first: str | None = None
        while not draining.done():
            entries = await read_entry_ids(h)
            if entries and first is None:
                first = entries[0]
            if entries and first is not None and entries[0] != first:
                trimmed.set()
            await asyncio.sleep(0.02)
        await draining
        assert trimmed.is_set()
        entries = await read_entry_ids(h)
        # what is left of a capped stream: its start is gone
        with pytest.raises(StreamTruncated):
            await read_all(h)
        with pytest.raises(StreamTruncated):
            await read_all(h, after="1-0:0")
        # from a position it still holds, it reads on
        assert (await read_all(h, after=f"{entries[-3]}:0"))[-1] == "last"

    app2 = make_app()

    @app2.task(name="twice", max_tries=2, retry_backoff=0.01)
    async def twice2(ctx: Context) -> str:
        for i in range(2):
            await ctx.stream(f"{ctx.tries}-{i}")
        if ctx.tries == 1:
            raise ValueError("first try fails")
        return "done"

    async with app2:
        h2 = await twice2.enqueue()
        await app2.drain()
        got = await read_all(h2)
        assert got[:2] == ["1-0", "1-1"]
        assert isinstance(got[2], StreamRestarted) and got[2].tries == 2
        assert not got[2].resumed  # no durable state: the new try starts over
        assert got[3:] == ["2-0", "2-1"]
        # resuming after the marker goes on with the new run
        assert await read_all(h2, after=got[2].position) == ["2-0", "2-1"]
        # deleting the task deletes its stream
        assert await h2.delete()
        with pytest.raises(TaskNotFound):
            await read_all(h2)


async def test_a_stream_outlives_a_ttl_zero_task_for_its_linger_then_is_gone(
    make_app: Callable[..., App], segue_engine: Any
) -> None:
    # a linger long enough that a loaded machine reads within it: the "gone" half below
    # takes a short one and waits for the server to expire it
    app = make_app(stream_linger_seconds=60)

    @app.task(name="brief", ttl=0)
    async def brief(ctx: Context) -> None:
        await ctx.stream("hello")

    @app.task(name="mute", ttl=0)
    async def mute() -> None:
        pass

    @app.task(name="kept", ttl=0.3)
    async def kept(ctx: Context) -> None:
        await ctx.stream("kept")

    admin = admin_client(segue_engine)
    try:
        async with app:
            h = await brief.enqueue()
            m = await mute.enqueue()
            k = await kept.enqueue()
            await app.drain()
            assert await read_all(h) == ["hello"]  # no record, the stream is still there
            assert await read_all(m) == []  # an empty stream with its end marker
            assert await read_all(k) == ["kept"]
            base = f"segue:{{{h.queue}}}:"
            assert 0 < await admin.pttl(base + "out:" + h.id) <= 60_000
            # the longer of the task's ttl and the linger
            assert 300 < await admin.pttl(base + "out:" + k.id) <= 60_000

        brief_app = make_app(stream_linger_seconds=0.2)

        @brief_app.task(name="brief", ttl=0)
        async def brief_again(ctx: Context) -> None:
            await ctx.stream("hello")

        async with brief_app:
            b = await brief_again.enqueue()
            await brief_app.drain()
            stream_key = f"segue:{{{b.queue}}}:out:{b.id}"

            async def gone() -> bool:
                return not await admin.exists(stream_key)

            await eventually(gone, timeout=5)  # no stream is left after its linger
            with pytest.raises(TaskNotFound):
                await read_all(b)
    finally:
        await admin.aclose()


async def test_big_chunks_go_in_entries_of_about_a_mebibyte(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    big = "x" * 300_000

    @app.task(name="bulky")
    async def bulky(ctx: Context) -> None:
        for i in range(8):
            await ctx.stream(f"{i}{big}")

    async with app:
        h = await bulky.enqueue()
        await app.drain()
        got = await read_all(h)
        assert [c[0] for c in got] == [str(i) for i in range(8)]
        assert all(len(c) == 300_001 for c in got)
        assert len(await read_entry_ids(h)) >= 4  # three chunks at most per entry, and the end


async def test_a_durable_function_s_replay_writes_again_only_after_its_journal(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="durable_talker")
    async def durable_talker(ctx: Context) -> str:
        await ctx.stream("start")  # before any step: the replay knows it too
        await ctx.step("a", lambda: 1)
        await ctx.stream("after a")
        await ctx.step("b", lambda: 2)
        if not await ctx.state.get("paused"):
            await ctx.state.set(paused=True)
            raise Pause()  # suspended: the next run replays a and b
        await ctx.stream("after b")
        return "done"

    async with app:
        h = await durable_talker.enqueue()
        await app.drain()
        assert await h.result() == "done"
        got = await read_all(h)
    assert got[:2] == ["start", "after a"]
    assert isinstance(got[2], StreamRestarted) and got[2].resumed and got[2].tries == 1
    assert got[3:] == ["after b"]


async def test_a_paused_task_resumed_from_its_state_goes_on_after_a_resumed_marker(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    gate = asyncio.Event()

    @app.task(name="counter")
    async def counter(ctx: Context, n: int) -> int:
        for i in range(await ctx.state.get("next", 0), n):
            await ctx.stream(i)  # a checkpoint: a pause stops the loop here
            await ctx.state.set(next=i + 1)
            if i == 4:
                await gate.wait()
        return n

    async with app:
        h = await counter.enqueue(10)
        async with serving(app):
            stream = h.stream()
            first = [await stream.__anext__() for _ in range(5)]
            await h.pause()
            gate.set()
            await h.wait_for(TaskStatus.PAUSED, timeout=10)
            await h.resume()
            rest = [item async for item in stream]
            assert await h.result(timeout=10) == 10
    marks = [i for i, item in enumerate(rest) if isinstance(item, StreamRestarted)]
    assert len(marks) == 1, rest
    marker, before, after = rest[marks[0]], rest[: marks[0]], rest[marks[0] + 1 :]
    assert marker.resumed and marker.tries == 1
    # the paused run stopped at a ctx.stream (one more chunk, if the pause reached it later)
    assert first + before == list(range(5 + len(before))) and len(before) <= 1
    # the resumed run goes on from its ctx.state: a chunk written after the last state write
    # may come again, none is missed
    assert after == list(range(after[0], 10)) and after[0] <= 5 + len(before)
