"""Tasks run locally (called directly or with run()) get a working Context: in-memory state,
checkpoints that never stop them; sync tasks get the blocking SyncContext."""

from __future__ import annotations

from segue import App, Context, SyncContext


def test_a_sync_task_called_directly_gets_a_blocking_context() -> None:
    app = App("local", redis_url="redis://127.0.0.1:1/0")

    @app.task(name="count_up")
    def count_up(ctx: SyncContext, n: int) -> int:
        for i in range(n):
            ctx.state.set(i=i + 1)
            ctx.checkpoint()
        value: int = ctx.state.get("i")
        return value

    assert count_up(4) == 4


async def _async_local() -> int:
    app = App("local", redis_url="redis://127.0.0.1:1/0")

    @app.task(name="count_async")
    async def count_async(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.state.set(i=i + 1)
            await ctx.checkpoint()
        assert await ctx.state.all() == {"i": n}
        value: int = await ctx.state.get("i")
        return value

    return await count_async.run(3)


def test_an_async_task_run_locally_keeps_state_in_memory() -> None:
    import asyncio

    assert asyncio.run(_async_local()) == 3
