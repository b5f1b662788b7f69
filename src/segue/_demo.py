"""`segue demo`: a real worker over the embedded Valkey, shown live.

Everything here goes through the public API, as a user's code would: tasks are enqueued,
a worker in this process runs them, and the display follows their handles and the
queue's counts on the server. Beside the batch, two long durable tasks run with
checkpoints; an operator (a coroutine here, the CLI or another process elsewhere) queries
one (its worker answers), pauses it, holds it, resumes it so that it finishes from its
`ctx.state`, and cancels the other.
Then a workflow runs (a chain with a fan-out group and a merge), its steps shown live; the
operator pauses it between two steps, so that the next step is held PAUSED, and resumes it.
Its contact sheet (a 400 KiB result) is stored by reference (offload_bytes) and handed on.
A saga follows: its last step fails, and the compensations of the others run in reverse.
Last, a queue of 4 shards is filled round-robin and drained by a worker claiming from each.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from segue import _demo_durable, _demo_flows
from segue._app import App
from segue._context import Context
from segue._errors import Fail, SegueError, TaskCancelled, TaskFailed, TaskNotRunning
from segue._handle import TaskHandle
from segue._options import Limit
from segue._redact import mask_url
from segue._state import TaskStatus

if TYPE_CHECKING:
    pass

console = Console()

INGEST_FILES = 20  # demo.ingest: one checkpointed step per file
INGEST_STEP_SECONDS = 0.15
PAUSE_AT = 6  # the operator pauses demo.ingest once it has done this many files
HOLD_SECONDS = 1.5  # how long it stays PAUSED
EXPORT_CHUNKS = 40  # demo.export: cancelled on its way
EXPORT_STEP_SECONDS = 0.1
CANCEL_AT = 8
ALBUM_PHOTOS = 12  # demo.scan finds this many photos in the album
OFFLOAD_BYTES = 256 * 1024  # the demo's offload_bytes (the recommended value)
SHEET_KIB = 400  # the contact sheet's size: offloaded


class Board:
    """What the long tasks tell the display about themselves (in this process: the worker
    runs here). Their durable truth is `ctx.state` on the server; this is only the view."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.done: Counter[str] = Counter()  # files processed, counting repeats

    def say(self, line: str) -> None:
        console.print(line)


def build_app(board: Board | None = None) -> App:
    # offload_bytes: the contact sheet (a big result) is stored by reference
    app = App(
        "demo",
        queue="demo",
        concurrency=24,
        result_ttl_seconds=600.0,
        offload_bytes=OFFLOAD_BYTES,
    )
    board = board or Board()

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

    @app.task(name="demo.ingest", priority="high")
    async def ingest(ctx: Context, files: list[str]) -> int:
        """A long task in checkpointed steps: its progress lives in ctx.state."""
        done: int = await ctx.state.get("done", 0)
        # answered by the worker running it, from the variables as they stand: a read only
        ctx.on_query("progress", lambda: {"file": files[min(done, len(files) - 1)], "done": done})
        if done:
            board.say(
                f"demo.ingest [bold]resumed from step {done}[/bold] of its ctx.state; "
                f"try {ctx.tries}" + (": the pause spent none" if ctx.tries == 1 else "")
            )
        while done < len(files):
            i = done
            await asyncio.sleep(INGEST_STEP_SECONDS)  # process files[i]
            board.done[files[i]] += 1
            done = i + 1
            await ctx.state.set(done=done)  # durable: survives pauses and worker deaths
            board.steps[ctx.task_id] = i + 1
            await ctx.checkpoint()  # where an operator's pause or cancel is obeyed
        return len(files)

    @app.task(name="demo.export", priority="high")
    async def export(ctx: Context, chunks: int) -> int:
        for i in range(await ctx.state.get("chunk", 0), chunks):
            try:
                await asyncio.sleep(EXPORT_STEP_SECONDS)  # write chunk i
            except asyncio.CancelledError:
                board.say(
                    f"demo.export: CancelledError at its current await (chunk {i + 1}), cleanup ran"
                )
                raise
            await ctx.state.set(chunk=i + 1)
            board.steps[ctx.task_id] = i + 1
            await ctx.checkpoint()
        return chunks

    @app.task(name="demo.summarize")
    async def summarize(ctx: Context, text: str) -> int:
        """Streams its answer word by word, as an LLM's tokens (ctx.stream)."""
        words = text.split()
        for word in words:
            await ctx.stream(word + " ")
            await asyncio.sleep(0.01)  # the model thinks
        return len(words)

    @app.task(name="demo.scan")
    async def scan(album: str) -> list[str]:
        await asyncio.sleep(0.4)  # list the album's photos
        return [f"{album}/img-{i:02}.jpg" for i in range(ALBUM_PHOTOS)]

    @app.task(name="demo.thumbnails")
    async def thumbnails(photos: list[str], part: int, parts: int) -> list[str]:
        await asyncio.sleep(0.7 + 0.1 * part)  # resize one part of the album
        return [p.replace(".jpg", "-256.jpg") for p in photos[part::parts]]

    @app.task(name="demo.contact_sheet")
    async def contact_sheet(parts: list[list[str]]) -> str:
        await asyncio.sleep(0.4)
        # the rendered sheet: over offload_bytes, so its record holds a reference
        title = f"contact sheet of {sum(len(p) for p in parts)} thumbnails"
        return title + "\n" + ("#" * 1023 + "\n") * SHEET_KIB

    @app.task(name="demo.publish")
    async def publish(sheet: str, album: str) -> str:
        await asyncio.sleep(0.3)
        return f"{album} published with a {sheet.partition(chr(10))[0]}"

    @app.task(name="demo.reserve")
    async def reserve(order: str) -> str:
        return f"stock held for {order}"

    @app.task(name="demo.charge")
    async def charge(hold: str, cents: int) -> str:
        return f"payment of {cents / 100:.2f} EUR"

    @app.task(name="demo.ship", max_tries=2, retry_backoff=0.05)
    async def ship(payment: str) -> str:
        raise RuntimeError("the courier refused the parcel")

    @app.task(name="demo.release")
    async def release(hold: str) -> str:
        return f"released: {hold}"

    @app.task(name="demo.refund")
    async def refund(payment: str) -> str:
        return f"refunded: {payment}"

    @app.task(name="demo.tick", ttl=60)
    async def tick(ctx: Context) -> str:
        return ctx.task_id

    @app.task(name="demo.rebuild_index", unique=True)
    async def rebuild_index(reason: str) -> str:
        await asyncio.sleep(0.2)
        return f"index rebuilt ({reason})"

    @app.task(name="demo.geocode", rate_limit="5/s")
    async def geocode(address: str) -> str:
        return f"{address}: 38.7 N, 9.1 W"

    @app.task(name="demo.tenant_sync", concurrency=Limit(2, key="tenant"))
    async def tenant_sync(tenant: str, row: int) -> str:
        await asyncio.sleep(0.05)
        return f"{tenant} row {row}"

    return app


async def _demo(total: int) -> None:
    board = Board()
    app = build_app(board)
    t = app.registry
    n_resize = max(1, total * 5 // 10)
    n_sum = max(1, total * 2 // 10)
    n_flaky = max(1, total // 10)
    n_valid = max(1, total // 20)
    async with app:
        console.print(
            f"[bold]segue demo[/bold] server: {mask_url((await app._client.broker()).url)}"
        )
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
        # as a producer without the task's code does: by name, checked on the worker
        by_name = await app.send("demo.report", "sent by name")
        handles += [delayed, urgent, by_name]
        names += ["demo.report", "demo.report", "demo.report"]
        console.print(
            f"enqueued {len(handles)} tasks in {1000 * (time.monotonic() - start):.0f} ms "
            "(one batched call); one is delayed by 2 s, one has high priority, one is sent "
            "by name (app.send)"
        )
        files = [f"batch-{i:02}.csv" for i in range(INGEST_FILES)]
        ingest = await t["demo.ingest"].enqueue(files)
        export = await t["demo.export"].enqueue(EXPORT_CHUNKS)
        console.print(
            f"and two long durable tasks: demo.ingest ({INGEST_FILES} files) "
            f"and demo.export ({EXPORT_CHUNKS} chunks)"
        )
        worker = app.worker()
        worker_task = asyncio.create_task(worker.run())
        operator = asyncio.create_task(_operate(app, board, ingest, export))
        outcome = await _follow(
            app, board, handles, names, {ingest: "demo.ingest", export: "demo.export"}
        )
        await operator
        elapsed = time.monotonic() - start
        _summary(outcome, handles, names, elapsed)
        sample = outcome.get(delayed.id)
        if sample is not None:
            console.print(f"delayed task: {sample[1]}")
        sent = outcome.get(by_name.id)
        if sent is not None:
            info = await by_name.info()
            console.print(
                f"sent by name: {sent[1]} ({', '.join(info.from_worker)} from the worker)",
                soft_wrap=True,
            )
        failed = next((v for v in outcome.values() if v[0] == "failed"), None)
        if failed is not None:
            console.print(f"a failure, as the caller sees it: [red]{failed[1]}[/red]")
        _durable_summary(outcome, board, files, ingest, export)
        try:
            await _demo_flows.workflow(app, console)  # the same worker runs its steps
            await _demo_flows.saga(app, console)
            await _demo_flows.stream(app, console)
            await _time_and_limits(app)
            await _demo_flows.sharding(app, console)
            await _demo_durable.show(console)
        finally:
            worker.stop()
            await worker_task
        console.print("[green]done[/green]: the embedded server stops with this process.")


async def _reached(board: Board, task_id: str, step: int) -> None:
    async with asyncio.timeout(30):
        while board.steps.get(task_id, 0) < step:
            await asyncio.sleep(0.02)


async def _operate(
    app: App, board: Board, ingest: TaskHandle[int], export: TaskHandle[int]
) -> None:
    try:
        await _operator(app, board, ingest, export)
    except (SegueError, TimeoutError) as exc:
        # never leave the display waiting on a task held forever
        board.say(f"[red]the operator's script failed[/red] ({exc!r}); cancelling both tasks")
        for h in (ingest, export):
            await h.cancel(reason="demo: operator script failed")


async def _operator(
    app: App, board: Board, ingest: TaskHandle[int], export: TaskHandle[int]
) -> None:
    """What an operator does from any process (here: this one), through the handles."""
    await _reached(board, ingest.id, PAUSE_AT)
    answer = await ingest.query("progress")
    board.say(f"operator: query demo.ingest 'progress' -> {answer} (its worker answered)")
    status = await ingest.pause(reason="demo: operator pause")
    board.say(
        f"operator: pause demo.ingest at step {board.steps[ingest.id]} -> {status} "
        "(stops at its next checkpoint)"
    )
    await ingest.wait_for(TaskStatus.PAUSED, timeout=10)
    held = await app.tasks(TaskStatus.PAUSED, queue="demo")
    board.say(
        f"demo.ingest is [yellow]PAUSED[/yellow] after step {board.steps[ingest.id]}, held on "
        f"the server; app.tasks(PAUSED): {len(held)}"
    )
    try:
        await ingest.query("progress")
    except TaskNotRunning as exc:
        board.say(
            f"operator: query demo.ingest -> TaskNotRunning ({exc.status}); "
            f"handle.state() always reads: {await ingest.state()}"
        )
    paused_at = time.monotonic()
    await _reached(board, export.id, CANCEL_AT)
    status = await export.cancel(reason="demo: operator cancel")
    board.say(f"operator: cancel demo.export at chunk {board.steps[export.id]} -> {status}")
    await export.wait_for(TaskStatus.CANCELLED, timeout=10)
    board.say("demo.export is [red]CANCELLED[/red]; its state was deleted with it")
    await asyncio.sleep(max(0.0, HOLD_SECONDS - (time.monotonic() - paused_at)))
    status = await ingest.resume(reason="demo: operator resume")
    board.say(f"operator: resume demo.ingest -> {status} (back in its queue)")


async def _follow(
    app: App,
    board: Board,
    handles: list[TaskHandle[Any]],
    names: list[str],
    durable: dict[TaskHandle[Any], str],
) -> dict[str, tuple[str, str]]:
    kinds = Counter(names)
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    bars = {k: progress.add_task(k, total=n, note="") for k, n in kinds.items()}
    totals = {"demo.ingest": INGEST_FILES, "demo.export": EXPORT_CHUNKS}
    long_bars = {
        h: progress.add_task(name, total=totals[name], note="queued") for h, name in durable.items()
    }
    outcome: dict[str, tuple[str, str]] = {}
    status = Table.grid(padding=(0, 2))
    base = await app.queue_counts("demo")  # records of earlier demos are still on the server

    async def one(h: TaskHandle[Any], kind: str) -> None:
        try:
            value = await h.result(timeout=120)
            outcome[h.id] = ("succeeded", str(value))
        except TaskFailed as exc:
            outcome[h.id] = ("failed", f"{exc.exc_type}: {exc.message}")
        except TaskCancelled:
            outcome[h.id] = ("cancelled", "")
        except SegueError as exc:
            outcome[h.id] = ("error", str(exc))
        if kind in bars:
            progress.advance(bars[kind])

    def render() -> Table:
        grid = Table.grid()
        grid.add_row(progress)
        grid.add_row(status)
        return grid

    styles = {
        TaskStatus.RUNNING: "[cyan]running[/cyan]",
        TaskStatus.PAUSED: "[yellow]PAUSED[/yellow] (held, state kept)",
        TaskStatus.SUCCEEDED: "[green]succeeded[/green]",
        TaskStatus.CANCELLED: "[red]CANCELLED[/red]",
    }

    async def refresh() -> None:
        nonlocal status
        counts = await app.queue_counts("demo")
        for h, bar in long_bars.items():
            st = await h.status()
            progress.update(bar, completed=board.steps.get(h.id, 0), note=styles.get(st, str(st)))
        ended = ("succeeded", "failed", "cancelled")
        counts.update({k: max(0, counts[k] - base[k]) for k in ended})
        status = Table.grid()
        shown = ("queued", "scheduled", "running", "paused", *ended)
        status.add_row(
            "on the server: " + "  ".join(f"{k} [bold]{counts[k]}[/bold]" for k in shown)
        )

    everything = [*zip(handles, names, strict=True), *durable.items()]
    waiters = [asyncio.create_task(one(h, k)) for h, k in everything]
    with Live(render(), console=console, refresh_per_second=10) as live:
        while not all(w.done() for w in waiters):
            await refresh()
            live.update(render())
            await asyncio.sleep(0.1)
        await refresh()
        live.update(render())
    if not console.is_terminal:
        console.line()  # piped output: the last frame of the display ends without one
    await asyncio.gather(*waiters)
    return outcome


def _summary(
    outcome: dict[str, tuple[str, str]],
    handles: list[TaskHandle[Any]],
    names: list[str],
    elapsed: float,
) -> None:
    table = Table(title=f"{len(handles)} tasks in {elapsed:.1f} s")
    table.add_column("task")
    table.add_column("succeeded", justify="right")
    table.add_column("failed", justify="right")
    by_kind: dict[str, Counter[str]] = {}
    for h, name in zip(handles, names, strict=True):
        by_kind.setdefault(name, Counter())[outcome[h.id][0]] += 1
    for name, c in by_kind.items():
        table.add_row(name, str(c["succeeded"]), str(c["failed"] + c["error"]))
    console.print(table)


def _durable_summary(
    outcome: dict[str, tuple[str, str]],
    board: Board,
    files: list[str],
    ingest: TaskHandle[int],
    export: TaskHandle[int],
) -> None:
    result, value = outcome[ingest.id]
    if result == "succeeded":
        once = all(board.done[f] == 1 for f in files)
        console.print(
            f"demo.ingest finished: {value} files"
            + (", each processed once across the pause" if once else "")
        )
    else:
        console.print(f"demo.ingest ended {result}: {value}")
    console.print(
        f"demo.export: result() raised TaskCancelled after chunk {board.steps.get(export.id, 0)}"
        if outcome[export.id][0] == "cancelled"
        else f"demo.export ended {outcome[export.id][0]}"
    )


# --- the workflow ------------------------------------------------------------------------


async def _time_and_limits(app: App) -> None:
    """A cron schedule firing each second (once per tick, whatever the number of workers),
    a unique task enqueued five times at once, calls held to a rate limit, and a per-tenant
    limit serving a quiet tenant in turn with a noisy one."""
    t = app.registry
    sid = await app.schedule(t["demo.tick"].call(), cron="*/1 * * * * *", id="demo-tick")
    fired: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while len(fired) < 3 and time.monotonic() < deadline:
            fired = [
                i.id
                for i in await app.tasks(TaskStatus.SUCCEEDED, limit=1000)
                if i.name == "demo.tick"
            ]
            await asyncio.sleep(0.1)
    finally:
        await app.unschedule(sid)
    ticks = sorted(int(i.rsplit("-", 1)[1]) for i in fired)[:3]
    gaps = ", ".join(f"{(b - a) / 1000:.0f} s" for a, b in itertools.pairwise(ticks))
    console.print(f"cron: demo.tick fired {len(ticks)} times, one per tick ({gaps} apart)")
    handles = await asyncio.gather(
        *(t["demo.rebuild_index"].enqueue(f"request {i}") for i in range(5))
    )
    value = await handles[0].result(timeout=10)
    console.print(
        f"unique: 5 enqueues of demo.rebuild_index gave {len({h.id for h in handles})} task: "
        f"{value}"
    )
    t0 = time.monotonic()
    calls = await app.enqueue_many(t["demo.geocode"].call(f"street {i}") for i in range(10))
    for h in calls:
        await h.result(timeout=20)
    console.print(f"rate limit: 10 demo.geocode calls at 5/s took {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    sync = t["demo.tenant_sync"]
    noisy = await app.enqueue_many(sync.call("noisy", i) for i in range(30))
    quiet = await app.enqueue_many(sync.call("quiet", i) for i in range(3))
    for h in quiet:
        await h.result(timeout=20)
    quiet_s = time.monotonic() - t0
    for h in noisy:
        await h.result(timeout=20)
    console.print(
        f"fairness: 2 at once per tenant; the quiet tenant's 3 calls, enqueued behind the "
        f"noisy one's 30, were done in {quiet_s:.1f} s, the noisy ones in "
        f"{time.monotonic() - t0:.1f} s"
    )


def run_demo(total: int = 300) -> None:
    try:
        asyncio.run(_demo(total))
    except KeyboardInterrupt:
        console.print("interrupted")
