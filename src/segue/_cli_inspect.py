"""The `segue` commands that look at a server: status, queues, tasks, info, events, purge.

They take `--app module:attribute` (its settings) or `--url`, else SEGUE_* variables, else
the embedded server of this project, like the control commands in _cli.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path  # noqa: TC003 (typer reads the annotations at run time)
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from segue._blobs import human_size
from segue._cli_common import (
    AppOption,
    UrlOption,
    cli,
    client_app,
    fail,
    mixed_up,
    out,
    print_rows,
    warn_unknown_queue,
)
from segue._display import clean, plain
from segue._errors import SegueError
from segue._state import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from segue._app import App
    from segue._state import TaskInfo

_COUNTS = ("queued", "scheduled", "waiting", "running", "paused", "succeeded", "failed")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def print_json(data: Any) -> None:
    """One JSON document on stdout (dataclasses, datetimes and enums as msgspec encodes)."""
    sys.stdout.write(msgspec.json.encode(data).decode() + "\n")


def _run(go: Callable[[], Awaitable[Any]], hint: str = "") -> Any:
    try:
        return asyncio.run(go())  # type: ignore[arg-type]
    except SegueError as exc:
        fail(f"{exc}{hint}")  # one line of text, never markup


async def _queue_rows(the_app: App) -> list[tuple[str, ...]]:
    rows = []
    for name in await the_app.queues():
        queue = the_app.queue(name)
        counts = await queue.counts()
        paused = "paused" if await queue.is_paused() else ""
        rows.append((name, paused, *(str(counts.get(k, 0)) for k in _COUNTS)))
    return rows


@cli.command()
def status(app: AppOption = None, url: UrlOption = None, json: JsonOption = False) -> None:
    """Every queue with its tasks counted by status, and the live workers."""

    async def go() -> tuple[list[tuple[str, ...]], list[Any]]:
        async with client_app(app, url) as the_app:
            return await _queue_rows(the_app), await the_app.workers()

    rows, workers = _run(go)
    live = [w for w in workers if not w.stale]
    if json:  # counts as JSON numbers, not the table's strings
        queues = [
            {
                "queue": q,
                "state": state,
                **{k: int(n) for k, n in zip(_COUNTS, counts, strict=True)},
            }
            for q, state, *counts in rows
        ]
        print_json({"queues": queues, "workers": live})
        return
    print_rows(("queue", "state", *_COUNTS), rows, f"{len(rows)} queue(s)")
    out.print(f"{len(live)} live worker(s), {sum(w.running for w in live)} task(s) running")


@cli.command()
def queues(app: AppOption = None, url: UrlOption = None, json: JsonOption = False) -> None:
    """The names of the queues this server has seen, and whether each is paused."""

    async def go() -> list[tuple[str, ...]]:
        async with client_app(app, url) as the_app:
            return [row[:2] for row in await _queue_rows(the_app)]

    rows = _run(go)
    if json:
        print_json([{"queue": q, "paused": state == "paused"} for q, state in rows])
        return
    print_rows(("queue", "state"), rows, f"{len(rows)} queue(s)")


@cli.command()
def workers(app: AppOption = None, url: UrlOption = None, json: JsonOption = False) -> None:
    """The workers registered on the server, with their last heartbeat."""

    async def go() -> list[Any]:
        async with client_app(app, url) as the_app:
            return await the_app.workers()

    found = _run(go)
    if json:
        print_json(found)
        return
    rows = [
        (
            w.id,
            w.host,
            str(w.pid),
            ",".join(w.queues),
            f"{w.running}/{w.concurrency}",
            str(w.finished),
            f"{w.age:.1f} s" + (" (stale)" if w.stale else ""),
        )
        for w in found
    ]
    header = ("id", "host", "pid", "queues", "running", "finished", "last beat")
    print_rows(header, rows, f"{len(rows)} worker(s)")


@cli.command()
def tasks(
    status_: Annotated[str, typer.Option("--status", "-s", help="A TaskStatus")] = "queued",
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Default: the App's")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many")] = 50,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many first")] = 0,
    app: AppOption = None,
    url: UrlOption = None,
    json: JsonOption = False,
) -> None:
    """Tasks of one queue in one status, paged."""
    try:
        wanted = TaskStatus(status_)
    except ValueError:
        fail(f"{status_!r} is not one of {', '.join(TaskStatus)}", 2)

    async def go() -> list[TaskInfo]:
        async with client_app(app, url) as the_app:
            return await the_app.tasks(wanted, queue=queue, offset=offset, limit=limit)

    infos: list[TaskInfo] = _run(go)
    if json:
        print_json(infos)
        return
    rows: list[tuple[str, ...]] = [
        (i.id, i.name, str(i.status), str(i.tries), _progress_text(i), i.worker_id or "")
        for i in infos
    ]
    header: tuple[str, ...] = ("id", "task", "status", "tries", "progress", "worker")
    if wanted in (TaskStatus.SCHEDULED, TaskStatus.RETRYING):
        # when each will run: the question a list of scheduled tasks is read for
        rows = [(*row, _utc(i.due_at)) for row, i in zip(rows, infos, strict=True)]
        header = (*header, "due (UTC)")
    print_rows(header, rows, f"{wanted} tasks")


def _utc(at: Any) -> str:
    return "" if at is None else f"{at:%Y-%m-%d %H:%M:%S}"


def _progress_text(info: TaskInfo) -> str:
    if info.progress is None:
        return ""
    done, total = info.progress
    return f"{done:g}/{total:g}" if total else f"{done:g}"


@cli.command()
def info(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Show live progress until the task ends")
    ] = False,
    app: AppOption = None,
    url: UrlOption = None,
    json: JsonOption = False,
) -> None:
    """A task's record: status, arguments, history, progress, result or error."""

    async def go() -> tuple[TaskInfo, dict[str, Any], list[Any]]:
        async with client_app(app, url) as the_app:
            handle = await the_app.task_handle(task_id)
            if follow:
                await _follow(handle)
            return await handle.info(), await handle._state_shown(50), await handle.events()

    shown, state, task_events = _run(go, mixed_up(task_id, "task"))
    if json:
        print_json({**msgspec.to_builtins(shown), "state": state, "events": task_events})
        return
    # every stored string is shown cleaned and as plain text: no markup, no escape sequences
    out.print(
        Text.assemble(
            plain(shown.id, "bold"), "  ", plain(shown.name), "  ", plain(str(shown.status), "bold")
        )
    )
    if shown.problem:
        _say(f"  bad record: {shown.problem}")
    if "args" in shown.offloaded:
        _say(_offloaded_line(shown, "args"))
    else:
        _say(f"  args {shown.args!r} kwargs {shown.kwargs!r}")
    _say(f"  tries {shown.tries}/{shown.max_tries}  worker {shown.worker_id or '-'}")
    if shown.from_worker:
        _say(f"  enqueued by name: {', '.join(shown.from_worker)} from the worker")
    if shown.version != shown.started_version:
        _say(f"  version {shown.version} (started under {shown.started_version})")
    elif shown.version != 1:
        _say(f"  version {shown.version}")
    if shown.due_at is not None:
        _say(f"  due {_utc(shown.due_at)} UTC")
    if shown.waiting_for is not None:
        _say(f"  waiting for {shown.waiting_for}")
    if shown.signals_dropped:
        _say(f"  {shown.signals_dropped} signal(s) still buffered at its end were dropped")
    if shown.progress is not None:
        message = f" {shown.progress_message}" if shown.progress_message else ""
        _say(f"  progress {_progress_text(shown)}{message}")
    if shown.pending_request is not None:
        at = shown.pending_request_at
        when = f" at {at:%Y-%m-%d %H:%M:%S}" if at else ""
        _say(f"  {shown.pending_request} requested{when}, not carried out yet")
    dropped = shown.history_total - len(shown.history)
    if dropped > 0:
        _say(f"  ({dropped} earlier transitions not kept: a record keeps the last 200)")
    for t in shown.history:
        _say(f"  {t.at:%Y-%m-%d %H:%M:%S}  {t.status:<10} {t.reason}")
    if shown.status is TaskStatus.SUCCEEDED and "result" in shown.offloaded:
        _say(_offloaded_line(shown, "result"))
    elif shown.status is TaskStatus.SUCCEEDED:
        _say(f"  result {shown.result!r}")
    if state:
        _say(f"  state {state!r}")
    for ev in task_events:
        extra = "" if ev.data is None else f" {ev.data!r}"
        _say(f"  event {ev.at:%H:%M:%S.%f} {ev.kind}{extra}")
    if shown.error is not None:
        e = shown.error
        _say(f"  error ({e.reason}) {e.type}: {e.message}")
        if e.traceback:
            _say(e.traceback)


def _say(text: str) -> None:
    out.print(clean(text), markup=False, highlight=False)


def _offloaded_line(shown: TaskInfo, what: str) -> str:
    size = human_size(shown.offloaded[what])
    return f"  {what} offloaded ({size}): segue download {shown.id} {what} -o {what}.json"


@cli.command()
def download(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    what: Annotated[
        str, typer.Argument(help="args (the JSON [args, kwargs]) or result (its JSON value)")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output"),
    ] = None,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """A task's stored arguments or result as JSON, offloaded (read from the payload store)
    or not."""
    if what not in ("args", "result"):
        fail(f"what to download is args or result, not {what!r}")

    async def go() -> bytes:
        async with client_app(app, url) as the_app:
            handle = await the_app.task_handle(task_id)
            return await handle.download("args" if what == "args" else "result")

    data: bytes = _run(go, mixed_up(task_id, "task"))
    if output is None:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    else:
        output.write_bytes(data)


@cli.command()
def watch(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """A live progress bar until the task ends, then its record (`info --follow`)."""
    info(task_id, follow=True, app=app, url=url, json=False)


async def _follow(handle: Any) -> None:
    """A progress bar fed by the task's record until it ends (a person is watching)."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[n]}"))
    row = bar.add_task(handle.id, total=None, n="")
    with Live(bar, console=out, transient=True):
        while True:
            now = await handle.info()
            done, total = now.progress or (0.0, None)
            bar.update(row, completed=done, total=total, n=f"{now.status} {_progress_text(now)}")
            if now.status.is_final:
                return
            await asyncio.sleep(0.25)


@cli.command()
def events(
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Repeat for several")
    ] = None,
    since: Annotated[str, typer.Option(help="'$' new only, '0' all kept, or an event id")] = "$",
    count: Annotated[int | None, typer.Option("--count", "-n", help="Stop after N")] = None,
    app: AppOption = None,
    url: UrlOption = None,
    json: JsonOption = False,
) -> None:
    """Follow the event streams of queues live (Ctrl-C to stop)."""

    async def go() -> None:
        seen = 0
        async with client_app(app, url) as the_app:
            async for e in the_app.events(queue, since=since, block=1.0):
                if json:
                    print_json(e)
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        return
                    continue
                data = "" if e.data is None else f" {e.data!r}"
                out.print(
                    f"{e.at:%H:%M:%S.%f} {e.queue} {e.kind} {e.task_id} {e.task_name}{data}",
                    markup=False,
                    highlight=False,
                )
                seen += 1
                if count is not None and seen >= count:
                    return

    try:
        _run(go)
    except KeyboardInterrupt:
        pass


@cli.command()
def purge(
    queue: Annotated[str, typer.Argument(help="The queue to empty")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    include_sleeping: Annotated[
        bool,
        typer.Option("--include-sleeping", help="Cancel tasks in a durable sleep (ctx.sleep) too"),
    ] = False,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Cancel every task of a queue that waits to run; running tasks and sleeping ones
    (a durable sleep, unless --include-sleeping) go on."""
    the_app = client_app(app, url)

    async def known() -> None:
        async with the_app:
            await warn_unknown_queue(the_app, queue)

    _run(known)
    question = f"cancel every queued, scheduled or paused task of queue {queue!r}?"
    if not yes and not typer.confirm(question):
        raise typer.Exit(1)

    async def go() -> int:
        async with the_app:
            return await the_app.queue(queue).purge(include_sleeping=include_sleeping)

    n = _run(go)
    out.print(f"queue {queue}: {n} task(s) cancelled")


@cli.command()
def schedules(app: AppOption = None, url: UrlOption = None, json: JsonOption = False) -> None:
    """Every cron schedule with its next run and last tick, soonest first."""

    if json:

        async def listing() -> list[Any]:
            async with client_app(app, url) as the_app:
                return await the_app.schedules()

        print_json(_run(listing))
        return

    async def go() -> list[tuple[str, ...]]:
        async with client_app(app, url) as the_app:
            rows: list[tuple[str, ...]] = []
            for s in await the_app.schedules():
                nxt = s.next_run.isoformat(timespec="seconds") if s.next_run else "-"
                last = s.last_tick.isoformat(timespec="seconds") if s.last_tick else "-"
                state = "paused" if s.paused else "active"
                if s.last_overlapped is not None:
                    at = s.last_overlapped.isoformat(timespec="seconds")
                    state += f" (skipped {at}: previous run still going)"
                rows.append((s.id, s.task, s.queue, s.cron, s.tz or "UTC", nxt, last, state))
            return rows

    rows = _run(go)
    header = ("id", "task", "queue", "cron", "tz", "next run", "last tick", "state")
    print_rows(header, rows, f"{len(rows)} schedule(s)")


@cli.command()
def unschedule(
    schedule_id: Annotated[str, typer.Argument(help="The schedule id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Remove a schedule: no tick after this fires."""

    async def go() -> bool:
        async with client_app(app, url) as the_app:
            return await the_app.unschedule(schedule_id)

    if not _run(go):
        fail(f"no schedule {schedule_id!r}")
    out.print(f"schedule {schedule_id}: removed")
