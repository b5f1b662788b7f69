"""Records stay in the server's compact hash encoding (issue 22, item 5).

Redis and Valkey keep a small hash as a listpack until one of its values passes
`hash-max-listpack-value` (64 bytes by default); then the whole hash becomes a hashtable,
about three times the memory. A task record of a no-op task, finished with its result, or
stopped by `Pause` with its state kept, and the record of a plain chain, keep every value
short under the server's default settings (bench/memory_bench.py measures what it saves).
"""

from __future__ import annotations

from collections.abc import Callable

from segue import App, Context, Pause, TaskStatus
from tests._support import Engine, admin_client
from tests.integration.conftest import eventually, serving


async def test_finished_paused_and_workflow_records_stay_compact(
    make_app: Callable[..., App], segue_engine: Engine
) -> None:
    app = make_app()

    @app.task(name="noop")
    async def noop(i: int) -> int:
        return i

    @app.task(name="hold")
    async def hold(ctx: Context, i: int) -> int:
        await ctx.state.set(x=i)
        raise Pause(delay=3600)

    client = admin_client(segue_engine)
    try:
        async with app:
            done = await noop.enqueue(1)
            held = await hold.enqueue(2)
            chain = await (noop.call(3) | noop.call()).enqueue()
            base = f"{app.settings.prefix}:{{{app.settings.queue}}}:"
            assert await client.object("encoding", base + "wf:" + chain.id) == b"listpack"
            async with serving(app):
                assert await done.result(timeout=10) == 1
                assert await chain.result(timeout=10) == 3

                async def suspended() -> bool:
                    return await held.status() is TaskStatus.SUSPENDED

                await eventually(suspended)
            for task_id in (done.id, held.id, f"{chain.id}.1", f"{chain.id}.2"):
                assert await client.object("encoding", base + "task:" + task_id) == b"listpack"
            info = await done.info()
    finally:
        await client.aclose()
    assert [t.status for t in info.history] == [
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.SUCCEEDED,
    ]
    assert info.history[1].reason == info.worker_id
