"""Type-checked by mypy, never run: enqueue calls and results are typed end to end.

Each `type: ignore[code]` is a negative test: under `warn_unused_ignores` (strict), mypy
fails if the error it silences ever stops being an error.
"""

from __future__ import annotations

from typing import assert_type

from segue import (
    App,
    AsyncTask,
    Chain,
    Context,
    Signature,
    SyncContext,
    SyncTask,
    TaskHandle,
    TaskStatus,
    WorkflowHandle,
)

app = App("typing")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="files.process", max_tries=3)
async def process(ctx: Context, files: list[str]) -> int:
    return len(files)


@app.task(name="math.double")
def double(x: int) -> int:
    return 2 * x


@app.task
def greet(ctx: Context, name: str) -> str:
    return f"hi {name} from {ctx.task_id}"


@app.task(name="sync.steps")
def sync_steps(ctx: SyncContext, n: int) -> int:
    done: int = ctx.state.get("done", 0)
    ctx.state.set(done=n)
    ctx.checkpoint()
    return done


@app.task(name="math.total")
async def total(values: list[int]) -> int:
    return sum(values)


async def check() -> None:
    async_task: AsyncTask[..., int] = add
    sync_task: SyncTask[..., str] = greet
    del async_task, sync_task

    handle = await add.enqueue(1, 2)
    assert_type(handle, TaskHandle[int])
    assert_type(await handle.result(), int)
    assert_type(await process.enqueue(["a", "b"]), TaskHandle[int])
    assert_type(await double.options(delay=5, priority="high").enqueue(3), TaskHandle[int])
    assert_type(double.call(2), Signature[int])
    assert_type(await app.enqueue_many([double.call(i) for i in range(3)]), list[TaskHandle[int]])
    assert_type(double(4), int)
    assert_type(await add(1, 2), int)

    assert_type(await sync_steps.enqueue(3), TaskHandle[int])
    assert_type(sync_steps(3), int)
    assert_type(await handle.pause(), TaskStatus)
    assert_type(await handle.wait_for(TaskStatus.PAUSED, timeout=1), TaskStatus)
    await sync_steps.enqueue("3")  # type: ignore[arg-type]

    chain = add.call(1, 2) | double
    assert_type(chain, Chain[int])
    assert_type(await chain.enqueue(), WorkflowHandle[int])
    assert_type(await add.call(1, 2).then(add, 3).enqueue(), WorkflowHandle[int])
    fan_in = app.group(double.call(i) for i in range(3)) | total
    assert_type(await fan_in.enqueue(), WorkflowHandle[int])
    assert_type(await app.group([double.call(1)]).enqueue(), WorkflowHandle[list[int]])
    saga = add.call(1, 2).options(compensate=double.call()) | double
    assert_type(saga, Chain[int])
    assert_type(await (await saga.enqueue()).wait_ended(timeout=1), TaskStatus)
    add.call(1, 2).options(compensate=double)  # type: ignore[arg-type]
    add.call(1, 2).then(greet)  # type: ignore[arg-type]
    add.call(1, 2).then(add, "3")  # type: ignore[arg-type]
    await add.enqueue("1", 2)  # type: ignore[arg-type]
    await add.enqueue(1)  # type: ignore[call-arg]
    await process.enqueue(files=[1])  # type: ignore[list-item]
    await add.options(dely=5).enqueue(1, 2)  # type: ignore[call-arg]
    await add.options(priority="urgent").enqueue(1, 2)  # type: ignore[arg-type]
    text: str = await handle.result()  # type: ignore[assignment]
    del text


async def check_sub_tasks(ctx: Context) -> None:
    # ctx.enqueue sees a Signature through a protocol (Context sits below Task): the result
    # type still comes through, and a task that is not called yet is still refused
    assert_type(await ctx.enqueue(add.call(1, 2)), TaskHandle[int])
    assert_type(await ctx.enqueue([double.call(i) for i in range(3)]), list[TaskHandle[int]])
    await ctx.enqueue(add)  # type: ignore[call-overload]
