"""The `segue` commands of the operator's day: enqueue a task by name, delete an ended task,
pause and resume a cron schedule, send a task a signal, query a running task. Like the other
control commands they take `--app` or `--url`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from segue._cli_common import AppOption, UrlOption, cli, client_app, error_line, out
from segue._errors import SegueError
from segue._keys import PRIORITIES

schedule_cli = typer.Typer(help="Pause or resume a cron schedule by its id.", no_args_is_help=True)
cli.add_typer(schedule_cli, name="schedule")
queue_cli = typer.Typer(help="Create or reshard a queue (sharded queues).", no_args_is_help=True)
cli.add_typer(queue_cli, name="queue")


def _fail(text: str) -> typer.Exit:
    return typer.Exit(error_line(text, 1))  # one `error:` line, its text never markup


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _fail(f"{what} is not JSON ({exc}): {text[:80]!r}") from None


@cli.command()
def enqueue(
    name: Annotated[str, typer.Argument(help="The task's name, e.g. reports.build")],
    args: Annotated[
        str | None,
        typer.Argument(help="Its positional arguments: a JSON array (another value: one argument)"),
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option("--kwargs", help="Its keyword arguments: a JSON object")
    ] = None,
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Default: the App's")] = None,
    delay: Annotated[float | None, typer.Option("--delay", help="Seconds to wait first")] = None,
    priority: Annotated[
        str | None, typer.Option("--priority", help="low, normal (default) or high")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key: the same key, the same task")
    ] = None,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Enqueue a task by name, without its code (`app.send`); prints the task id. The
    worker that runs it checks the arguments and supplies max_tries, timeout and retries."""
    positional = [] if args is None else _json_arg(args, "the arguments")
    if not isinstance(positional, list):
        positional = [positional]
    named = {} if kwargs is None else _json_arg(kwargs, "--kwargs")
    if not isinstance(named, dict):
        raise _fail(f"--kwargs must be a JSON object, not {kwargs!r}")
    if priority is not None and priority not in PRIORITIES:
        raise _fail(f"--priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    options: dict[str, Any] = {}
    if delay is not None:
        options["delay"] = delay
    if priority is not None:
        options["priority"] = priority
    if key is not None:
        options["key"] = key

    async def go() -> str:
        async with client_app(app, url) as the_app:
            handle = await the_app.send(name, *positional, kwargs=named, queue=queue, **options)
            return handle.id

    try:
        task_id = asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    out.print(task_id, markup=False, highlight=False)


@cli.command()
def delete(
    task_id: Annotated[str, typer.Argument(help="The id of a task that ended")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Delete an ended task's record (result or error, history) before its ttl would."""

    async def go() -> bool:
        async with client_app(app, url) as the_app:
            return await (await the_app.task_handle(task_id)).delete()

    try:
        deleted = asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    if not deleted:
        raise _fail(f"no task {task_id}: it never existed, or its record is gone already")
    out.print(f"task {task_id}: deleted", markup=False, highlight=False)


def _schedule_command(schedule_id: str, pause: bool, app: str | None, url: str | None) -> None:
    async def go() -> None:
        async with client_app(app, url) as the_app:
            ref = the_app.schedule(schedule_id)
            await (ref.pause() if pause else ref.resume())

    try:
        asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    done = "paused: its ticks are skipped until resumed" if pause else "resumed"
    out.print(f"schedule {schedule_id}: {done}", markup=False, highlight=False)


@schedule_cli.command("pause")
def schedule_pause(
    schedule_id: Annotated[str, typer.Argument(help="The schedule id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Pause a schedule: its ticks are skipped (not fired, not caught up) until resumed."""
    _schedule_command(schedule_id, True, app, url)


@schedule_cli.command("resume")
def schedule_resume(
    schedule_id: Annotated[str, typer.Argument(help="The schedule id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Resume a paused schedule: its next tick fires as usual."""
    _schedule_command(schedule_id, False, app, url)


@cli.command()
def signal(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    name: Annotated[str, typer.Argument(help="The signal's name (what ctx.wait_signal waits for)")],
    data: Annotated[
        str | None, typer.Argument(help="The signal's data, as JSON (default: null)")
    ] = None,
    signal_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="The signal's id: a repeat with the same id delivers nothing twice"
        ),
    ] = None,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Send a task a signal: a wait for it gets it now, else it is buffered for the next."""
    try:
        value = None if data is None else json.loads(data)
    except ValueError as exc:
        raise _fail(f"the signal's data is not JSON: {exc}") from None

    async def go() -> str:
        async with client_app(app, url) as the_app:
            handle = await the_app.task_handle(task_id)
            return str(await handle.signal(name, value, id=signal_id))

    try:
        status = asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    out.print(f"task {task_id}: signal {name} sent ({status})", markup=False, highlight=False)


def _json_or_text(word: str) -> Any:
    try:
        return json.loads(word)
    except ValueError:
        return word  # a bare word is meant as a string: no quotes to escape in a shell


@cli.command()
def query(
    task_id: Annotated[str, typer.Argument(help="The id of a running task")],
    name: Annotated[str, typer.Argument(help="The query, as the task named it in ctx.on_query")],
    args: Annotated[
        list[str] | None,
        typer.Argument(help="The handler's arguments, each a JSON value (a bare word: a string)"),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="Seconds to wait for the answer")
    ] = 5.0,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Ask a running task a query; prints its answer as JSON."""

    async def go() -> Any:
        async with client_app(app, url) as the_app:
            handle = await the_app.task_handle(task_id)
            values = [_json_or_text(a) for a in args or ()]
            return await handle.query(name, *values, timeout=timeout)

    try:
        answer = asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    out.print(json.dumps(answer, ensure_ascii=False), markup=False, highlight=False)


def _queue_command(name: str, shards: int, reshard: bool, app: str | None, url: str | None) -> None:
    async def go() -> int:
        async with client_app(app, url) as the_app:
            queue = the_app.queue(name, shards=None if reshard else shards)
            return await (queue.reshard(shards) if reshard else queue.create())

    try:
        count = asyncio.run(go())
    except SegueError as exc:
        raise _fail(str(exc)) from None
    if reshard:
        said = (
            f"resharded to {count} shard(s); the tasks of the old ones stay there and drain "
            "(keyed enqueues keep the old routing until then)"
        )
    elif count != shards:
        said = f"exists with {count} shard(s) (the server's count is kept)"
    else:
        said = f"{count} shard(s)"
    out.print(f"queue {name}: {said}", markup=False, highlight=False)


@queue_cli.command("create")
def queue_create(
    name: Annotated[str, typer.Argument(help="The queue's name")],
    shards: Annotated[int, typer.Option("--shards", help="How many shards (1: unsharded)")] = 1,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Store a queue's shard count on the server (unless it holds one already)."""
    _queue_command(name, shards, False, app, url)


@queue_cli.command("reshard")
def queue_reshard(
    name: Annotated[str, typer.Argument(help="The queue's name")],
    shards: Annotated[int, typer.Argument(help="The new shard count")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Change a queue's shard count: new enqueues use it, tasks stay where they are, and
    keyed enqueues keep the old routing until the old shards drained."""
    _queue_command(name, shards, True, app, url)
