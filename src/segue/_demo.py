"""`segue demo`: a real worker over the embedded Valkey, shown live.

Everything here goes through the public API, as a user's code would: tasks are enqueued,
a worker in this process runs them, and the display follows their handles and the
queue's counts on the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from segue._app import App
from segue._context import Context
from segue._errors import Fail, SegueError, TaskFailed
from segue._handle import TaskHandle

console = Console()


def build_app() -> App:
    app = App("demo", queue="demo", concurrency=24, result_ttl_seconds=600.0)

    @app.task(name="demo.resize")
    async def resize(photo: str, size: int = 256) -> str:
        await asyncio.sleep(random.uniform(0.1, 1.2))  # an I/O-bound step
        return f"{photo} -> {size}px"

    @app.task(name="demo.checksum")
    def checksum(blocks: int) -> str:  # sync: runs in the worker's thread pool
        h = hashlib.sha256()
        for i in range(blocks):
            h.update(i.to_bytes(8, "little") * 512)
        return h.hexdigest()[:12]

    @app.task(name="demo.flaky", max_tries=3, retry_backoff=0.3)
    async def flaky(ctx: Context, n: int) -> int:
        if ctx.tries == 1:
            raise ConnectionError(f"upstream timed out on item {n} (try {ctx.tries})")
        return n * n

    @app.task(name="demo.validate", max_tries=1)
    async def validate(record: dict[str, Any]) -> bool:
        if "email" not in record:
            raise Fail(f"record {record['id']} has no email")
        return True

    @app.task(name="demo.report", priority="high")
    async def report(title: str) -> str:
        return f"report {title!r} generated at {time.strftime('%H:%M:%S')}"

    return app


async def _demo(total: int) -> None:
    app = build_app()
    t = app.registry
    n_resize = max(1, total * 5 // 10)
    n_sum = max(1, total * 2 // 10)
    n_flaky = max(1, total // 10)
    n_valid = max(1, total // 20)
    async with app:
        console.print(f"[bold]segue demo[/bold] server: {(await app.broker()).url}")
        start = time.monotonic()
        sigs = [t["demo.resize"].call(f"photo-{i:03}.jpg") for i in range(n_resize)]
        sigs += [t["demo.checksum"].call(random.randint(50, 400)) for _ in range(n_sum)]
        sigs += [t["demo.flaky"].call(i) for i in range(n_flaky)]
        sigs += [
            t["demo.validate"].call({"id": i, **({"email": "a@b.c"} if i % 3 else {})})
            for i in range(n_valid)
        ]
        handles: list[TaskHandle[Any]] = await app.enqueue_many(sigs)
        names = [s.task.name for s in sigs]
        delayed = await t["demo.report"].options(delay=2.0).enqueue("daily (delayed 2 s)")
        urgent = await t["demo.report"].options(priority="high").enqueue("urgent (high prio)")
        handles += [delayed, urgent]
        names += ["demo.report", "demo.report"]
        console.print(
            f"enqueued {len(handles)} tasks in {1000 * (time.monotonic() - start):.0f} ms "
            "(one batched call); one is delayed by 2 s, one has high priority"
        )
        worker = app.worker()
        worker_task = asyncio.create_task(worker.run())
        outcome = await _follow(app, handles, names)
        worker.stop()
        await worker_task
        elapsed = time.monotonic() - start
        _summary(outcome, handles, names, elapsed)
        sample = outcome.get(delayed.id)
        if sample is not None:
            console.print(f"delayed task: {sample[1]}")
        failed = next((v for v in outcome.values() if v[0] == "failed"), None)
        if failed is not None:
            console.print(f"a failure, as the caller sees it: [red]{failed[1]}[/red]")
        console.print("[green]done[/green]: the embedded server stops with this process.")


async def _follow(
    app: App, handles: list[TaskHandle[Any]], names: list[str]
) -> dict[str, tuple[str, str]]:
    kinds = Counter(names)
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    bars = {k: progress.add_task(k, total=n) for k, n in kinds.items()}
    outcome: dict[str, tuple[str, str]] = {}
    status = Table.grid(padding=(0, 2))

    async def one(h: TaskHandle[Any], kind: str) -> None:
        try:
            value = await h.result(timeout=120)
            outcome[h.id] = ("succeeded", str(value))
        except TaskFailed as exc:
            outcome[h.id] = ("failed", f"{exc.exc_type}: {exc.message}")
        except SegueError as exc:
            outcome[h.id] = ("error", str(exc))
        progress.advance(bars[kind])

    def render() -> Table:
        grid = Table.grid()
        grid.add_row(progress)
        grid.add_row(status)
        return grid

    waiters = [asyncio.create_task(one(h, k)) for h, k in zip(handles, names, strict=True)]
    with Live(render(), console=console, refresh_per_second=10) as live:
        while not all(w.done() for w in waiters):
            counts = await app.queue_counts("demo")
            status = Table.grid()
            shown = ("queued", "scheduled", "running", "succeeded", "failed")
            status.add_row(
                "on the server: " + "  ".join(f"{k} [bold]{counts[k]}[/bold]" for k in shown)
            )
            live.update(render())
            await asyncio.sleep(0.1)
        live.update(render())
    await asyncio.gather(*waiters)
    return outcome


def _summary(
    outcome: dict[str, tuple[str, str]],
    handles: list[TaskHandle[Any]],
    names: list[str],
    elapsed: float,
) -> None:
    table = Table(title=f"{len(outcome)} tasks in {elapsed:.1f} s")
    table.add_column("task")
    table.add_column("succeeded", justify="right")
    table.add_column("failed", justify="right")
    by_kind: dict[str, Counter[str]] = {}
    for h, name in zip(handles, names, strict=True):
        by_kind.setdefault(name, Counter())[outcome[h.id][0]] += 1
    for name, c in by_kind.items():
        table.add_row(name, str(c["succeeded"]), str(c["failed"] + c["error"]))
    console.print(table)


def run_demo(total: int = 300) -> None:
    try:
        asyncio.run(_demo(total))
    except KeyboardInterrupt:
        console.print("interrupted")
