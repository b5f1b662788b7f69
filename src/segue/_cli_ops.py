"""The `segue` commands of the operator's day: delete an ended task, pause and resume a
cron schedule, query a running task. Like the other control commands they take `--app` or
`--url`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from segue._cli_common import AppOption, UrlOption, cli, client_app, error_line, out
from segue._errors import SegueError

schedule_cli = typer.Typer(help="Pause or resume a cron schedule by its id.", no_args_is_help=True)
cli.add_typer(schedule_cli, name="schedule")


def _fail(text: str) -> typer.Exit:
    return typer.Exit(error_line(text, 1))  # one `error:` line, its text never markup


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
