"""Local runs (`await task.run(...)`, calling a task): no server, state in memory, Pause
reaches the caller. Async tests here run on segue.testing's plugin runner."""

from __future__ import annotations

import pytest

from segue import App, Context, Pause, SyncContext


def local_app() -> App:
    # a URL nothing listens on: a local run must never connect
    return App("local", redis_url="redis://127.0.0.1:1/0", queue="jobs")


async def test_an_async_task_runs_locally_with_state_in_memory() -> None:
    app = local_app()
    seen: list[tuple[str, str, int, str]] = []

    @app.task(name="steps")
    async def steps(ctx: Context, n: int) -> list[int]:
        seen.append((ctx.task_id, ctx.worker_id, ctx.tries, ctx.queue))
        assert await ctx.state.get("done", 0) == 0  # every local run starts with no state
        for i in range(n):
            await ctx.state.set(done=i + 1, last=f"step {i}")
            await ctx.checkpoint()  # a no-op here: nobody can pause a local run
        await ctx.state.delete("last")
        return [await ctx.state.get("done"), len(await ctx.state.all())]

    assert await steps.run(3) == [3, 1]
    assert await steps(2) == [2, 1]  # calling an async task is the same local run
    assert seen == [("jobs:local", "local", 1, "jobs")] * 2
    assert app._client.connected is None  # nothing connected


async def test_a_sync_task_runs_locally_in_a_thread_or_inline() -> None:
    app = local_app()

    @app.task(name="tally")
    def tally(ctx: SyncContext, words: list[str]) -> dict[str, int]:
        for w in words:
            ctx.state.set(**{w: (ctx.state.get(w) or 0) + 1})
            ctx.checkpoint()
        counts: dict[str, int] = ctx.state.all()
        return counts

    assert await tally.run(["a", "b", "a"]) == {"a": 2, "b": 1}  # in a thread
    assert tally(["c"]) == {"c": 1}  # inline: calling a sync task returns its value


async def test_pause_raised_in_a_local_run_reaches_the_caller() -> None:
    app = local_app()
    reached: list[int] = []

    @app.task(name="wait_for_data")
    async def wait_for_data(ctx: Context, ready: bool) -> str:
        await ctx.state.set(polls=1)
        reached.append(await ctx.state.get("polls"))
        if not ready:
            raise Pause(delay=30)  # queued, this would be SUSPENDED and run again later
        return "done"

    @app.task(name="sync_wait")
    def sync_wait(ready: bool) -> str:
        if not ready:
            raise Pause()
        return "done"

    with pytest.raises(Pause) as paused:
        await wait_for_data.run(False)
    assert paused.value.delay == 30
    assert reached == [1]
    assert await wait_for_data.run(True) == "done"
    with pytest.raises(Pause):
        await sync_wait.run(False)
    with pytest.raises(Pause):
        sync_wait(False)
    assert sync_wait(True) == "done"
