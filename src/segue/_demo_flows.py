"""`segue demo`, its second half: a workflow paused and resumed between two steps, a saga
whose compensations run in reverse, a task's output streamed live, and a sharded queue.
The tasks are declared with the rest in _demo.build_app; these run them and show them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table

from segue._blobs import human_size
from segue._errors import SegueError
from segue._state import TaskInfo, TaskStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from segue._app import App
    from segue._handle import WorkflowHandle

ALBUM = "album-2026"  # the workflow: scan | 4 thumbnail parts | contact sheet | publish
THUMB_PARTS = 4
WORKFLOW_HOLD_SECONDS = 1.5  # how long the paused workflow holds its next step


async def workflow(app: App, console: Console) -> None:
    """A chain with a fan-out group and a merge, enqueued in one call, shown step by step;
    an operator pauses it between two steps and resumes it."""
    t = app.registry
    wf = (
        t["demo.scan"].call(ALBUM)
        | app.group(
            t["demo.thumbnails"].call(part=i, parts=THUMB_PARTS) for i in range(THUMB_PARTS)
        )
        | t["demo.contact_sheet"].call()
    ).then(t["demo.publish"], album=ALBUM)
    h = await wf.enqueue()
    steps = await h.steps()
    console.print(
        f"workflow: demo.scan | group({THUMB_PARTS} x demo.thumbnails) | demo.contact_sheet "
        f"| demo.publish ({len(steps)} steps)",
        soft_wrap=True,
    )
    operator = asyncio.create_task(_workflow_operator(app, h.id, console))
    status = await h.status()
    deadline = time.monotonic() + 60  # never hang the demo on a workflow gone wrong
    with Live(
        _steps_table(steps, status, console.width), console=console, refresh_per_second=10
    ) as live:
        while (not operator.done() or not status.is_final) and time.monotonic() < deadline:
            live.update(_steps_table(await h.steps(), status, console.width))
            await asyncio.sleep(0.1)
            status = await h.status()
        steps = await h.steps()
        live.update(_steps_table(steps, status, console.width))
    if not console.is_terminal:
        console.line()
    await operator
    try:
        value = await h.result(timeout=30)
    except SegueError as exc:
        console.print(f"workflow ended {await h.status()}: [red]{exc}[/red]", soft_wrap=True)
        return
    console.print(f"workflow result: [bold]{value}[/bold]", soft_wrap=True)
    sheet = next(s for s in steps if s.name == "demo.contact_sheet")
    path = ", ".join(
        f"{tr.status}" + (f" ({tr.reason})" if tr.status is TaskStatus.PAUSED else "")
        for tr in sheet.history
    )
    console.print(f"demo.contact_sheet history: {path}", soft_wrap=True)
    size, least = sheet.offloaded.get("result"), app.settings.offload_bytes
    if size is not None and least is not None:
        console.print(
            f"demo.contact_sheet result: offloaded ({human_size(size)}, over offload_bytes "
            f"{human_size(least)}), handed to demo.publish by reference; "
            f"segue download {sheet.id} result",
            soft_wrap=True,
            markup=False,
        )


async def saga(app: App, console: Console) -> None:
    """A saga: reserve | charge | ship, each undoable step with its compensation; ship
    fails, so the charge is refunded, then the stock released (reverse order)."""
    t = app.registry
    wf = (
        t["demo.reserve"].call("order-42").options(compensate=t["demo.release"].call())
        | t["demo.charge"].call(cents=1999).options(compensate=t["demo.refund"].call())
        | t["demo.ship"].call()
    )
    h = await wf.enqueue()
    console.print(
        "saga: demo.reserve (compensate=demo.release) | demo.charge (compensate=demo.refund) "
        "| demo.ship, which fails",
        soft_wrap=True,
    )
    with contextlib.suppress(SegueError):
        await h.result(timeout=30)  # returns once the compensations have run
    for step in await h.steps():
        undo = step.compensation
        undone = f" -> {undo.name} {undo.status}: {undo.result}" if undo else ""
        console.print(f"  {step.name} {step.status}{undone}", soft_wrap=True)
    console.print(f"saga ended {await h.status()}: compensated in reverse order")


async def _workflow_operator(app: App, workflow_id: str, console: Console) -> None:
    """Pause the workflow while its fan-out runs, show the next step held, resume it: what
    a web app or another process does with `app.workflow_handle(id)`."""
    h: WorkflowHandle[Any] = await app.workflow_handle(workflow_id)
    try:
        async with asyncio.timeout(30):
            await _until(h, lambda s: s.name == "demo.thumbnails", TaskStatus.RUNNING)
            status = await h.pause(reason="demo: operator pause between steps")
            console.print(
                f"operator: pause the workflow while {THUMB_PARTS} thumbnail steps run -> "
                f"{status} (no new step starts)",
                soft_wrap=True,
            )
            held = await _until(h, lambda s: True, TaskStatus.PAUSED)
            steps = await h.steps()
            done = sum(s.status is TaskStatus.SUCCEEDED for s in steps)
            console.print(
                f"workflow paused between steps: {done}/{len(steps)} done, next step "
                f"{held.name} is [yellow]PAUSED[/yellow] (held)",
                soft_wrap=True,
            )
            await asyncio.sleep(WORKFLOW_HOLD_SECONDS)
            status = await h.resume(reason="demo: operator resume")
            console.print(
                f"operator: resume the workflow -> {status} (held steps queued again)",
                soft_wrap=True,
            )
    except (SegueError, TimeoutError) as exc:
        console.print(
            f"[red]the workflow operator failed[/red] ({exc!r}); resuming it", soft_wrap=True
        )
        with contextlib.suppress(SegueError):
            await h.resume(reason="demo: operator script failed")


async def _until(
    h: WorkflowHandle[Any], which: Callable[[TaskInfo], bool], status: TaskStatus
) -> TaskInfo:
    """The first step that `which` selects and that is in `status`, once there is one."""
    while True:
        for step in await h.steps():
            if which(step) and step.status is status:
                return step
        await asyncio.sleep(0.05)


def _steps_table(steps: list[TaskInfo], status: TaskStatus, width: int) -> Table:
    styles = {
        TaskStatus.WAITING: "[dim]waiting[/dim]",
        TaskStatus.QUEUED: "queued",
        TaskStatus.RUNNING: "[cyan]running[/cyan]",
        TaskStatus.PAUSED: "[yellow]PAUSED[/yellow] (held)",
        TaskStatus.SUCCEEDED: "[green]succeeded[/green]",
        TaskStatus.FAILED: "[red]failed[/red]",
        TaskStatus.CANCELLED: "[red]cancelled[/red]",
    }
    table = Table(title=f"workflow steps (workflow {status})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    # what is left of the width once the other columns (up to 1 + 26 + 13) and the borders
    # are drawn, so that narrow terminals cut results rather than step names
    room = min(40, max(8, width - 54))
    table.add_column("result", overflow="ellipsis", no_wrap=True, max_width=room)
    for n, s in enumerate(steps, 1):
        name = s.name
        if "part" in s.kwargs:
            name += f" (part {s.kwargs['part'] + 1}/{s.kwargs.get('parts', '?')})"
        result = "" if s.result is None else str(s.result)
        table.add_row(str(n), name, styles.get(s.status, str(s.status)), result)
    return table


async def stream(app: App, console: Console) -> None:
    """A task's output read live, chunk by chunk, as it is written (handle.stream)."""
    h = await app.registry["demo.summarize"].enqueue(_SUMMARY)
    console.print("stream: demo.summarize says, live: ", end="")
    chunks = 0
    async for chunk in h.stream():
        chunks += 1
        console.print(str(chunk), end="", highlight=False)
    console.print()
    console.print(f"stream: {chunks} chunks, in order; the loop ended when the task did")


_SUMMARY = (
    "Every task of this demo ran at least once, was retried when it failed, and was paused, "
    "resumed or cancelled by an operator while it ran."
)


SHARDED_QUEUE = "demo-events"
SHARDS = 4
SHARDED_TASKS = 40


async def sharding(app: App, console: Console) -> None:
    """A queue of 4 shards (on one server, shards are only names): 40 tasks spread over
    them round-robin, drained by a worker that claims from each shard in turn."""
    q = app.queue(SHARDED_QUEUE, shards=SHARDS)
    count = await q.create()
    tick = app.registry["demo.tick"].options(queue=SHARDED_QUEUE)
    handles = await app.enqueue_many(tick.call() for _ in range(SHARDED_TASKS))
    ran = await app.worker(queues=[SHARDED_QUEUE]).run_until_idle()
    per_shard = Counter(h.queue for h in handles)
    spread = ", ".join(f"{n} in {name}" for name, n in sorted(per_shard.items()))
    console.print(
        f"sharding: {len(handles)} tasks round-robin over the {count} shards of "
        f"{SHARDED_QUEUE} ({spread}); one worker claiming from each shard in turn ran {ran}"
    )
