"""What every `segue` command shares: the Typer app, the consoles, and how a command finds
its App (`module:attribute`, or one built from `--url` or the environment)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from segue._app import App
from segue._display import clean, plain
from segue._embedded import server_label
from segue._settings import check_url

cli = typer.Typer(
    name="segue",
    help="segue: a durable task queue for Python on Redis/Valkey.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: no `<bool>` after flags, paragraphs rewrapped to the terminal's width
    rich_markup_mode=None,
)
# soft wrap: a line a script parses (a task id, an error) is never split at 80 columns
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
_debug = False  # `segue --debug ...`: a failing command prints its traceback too


@cli.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print its traceback too")
    ] = False,
) -> None:
    """segue: a durable task queue for Python on Redis/Valkey."""
    global _debug
    _debug = debug


def fail(message: object, code: int = 1) -> NoReturn:
    """End the command with one `error:` line on stderr (and, with --debug, the traceback
    of the exception being handled)."""
    raise typer.Exit(error_line(message, code))


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def error_line(message: object, code: int) -> int:
    """Print `error: <message>` as one line on stderr; returns `code`."""
    flush_logs()
    if _debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    text = " ".join(str(message).split())  # one line, whatever the message holds
    err.print(f"[red]error:[/red] {escape(text)}", highlight=False)
    return code


def say_server(the_app: App) -> None:
    """The first line of a command: which server it talks to (password masked)."""
    err.print(f"server: {server_label(the_app.settings)}", markup=False, highlight=False)


def load_app(spec: str) -> App:
    """Import `module:attribute` (or `module`, taking its `app`) and return the App."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import module {module_name!r}: {exc}") from None
    obj = getattr(module, attr or "app", None)
    if not isinstance(obj, App):
        raise typer.BadParameter(
            f"{spec!r} is not a segue App (expected 'module:attribute' naming an App)"
        )
    return obj


AppOption = Annotated[
    str | None, typer.Option("--app", "-a", help="The App, as module:attribute (its settings)")
]
UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Server URL (default: SEGUE_REDIS_URL, else the embedded one)"),
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", "-r", help="Recorded in the task's history")
]


def print_rows(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], title: str) -> None:
    """A table for a person at a terminal; tab-separated lines, nothing cut, for a pipe."""
    if not out.is_terminal:
        # plain print: Rich would expand the tabs
        print(title)
        for row in (header, *rows):
            print("\t".join(clean(cell) for cell in row))
        return
    table = Table(title=title)
    for n, name in enumerate(header):
        if name in _ID_COLUMNS:  # the value `segue retry` and friends take: never cut
            longest = max((len(plain(row[n])) for row in rows), default=len(name))
            table.add_column(name, no_wrap=True, min_width=longest)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(plain(cell) for cell in row))  # stored strings: never markup
    out.print(table)


_ID_COLUMNS = ("id", "step")


def client_app(app: str | None, url: str | None, *, read_only: bool = True) -> App:
    """The App an inspection command talks through: `--app`, else one built from `--url`
    or the environment (SEGUE_*), else the embedded server of this project. Its first line
    names the server. These commands act on tasks that exist, so they start no new, empty
    embedded server: where none runs and no data was left, they say so and stop (one that
    left data is started, to show it)."""
    if app is not None:
        the_app = load_app(app)
    elif url:
        check_url(url, "--url")
        the_app = App("segue-cli", redis_url=url)
    else:
        the_app = App("segue-cli")
    say_server(the_app)
    if read_only and the_app.settings.redis_url is None:
        from segue._embedded import find_home

        home = Path(the_app.settings.home).resolve() if the_app.settings.home else find_home()
        if not _embedded_has_data(home / ".segue"):
            fail(
                f"no server runs for {home} (no embedded server nor data in {home / '.segue'}): "
                "run this where your project's workers run, or point at a server with --url, "
                "--app or SEGUE_REDIS_URL"
            )
    return the_app


def is_workflow_id(an_id: str) -> bool:
    """`<queue>:wf-<ULID>`: a workflow's id (its steps' ids add `.<n>`)."""
    local = an_id.partition(":")[2]
    return local.startswith("wf-") and "." not in local


def mixed_up(an_id: str, wanted: str) -> str:
    """A hint for an id of the other kind than the command takes, else ''."""
    if wanted == "task" and is_workflow_id(an_id):
        return f" ({an_id} is a workflow id: segue workflow status {an_id} shows it)"
    if wanted == "workflow" and not is_workflow_id(an_id):
        return f" ({an_id} is a task id, not a workflow's: segue info {an_id} shows it)"
    return ""


async def warn_unknown_queue(the_app: App, queue: str | None) -> None:
    """A warning on stderr when `queue` is none the server has seen (a typo, most often)."""
    name = queue or the_app.settings.queue
    known = await the_app.queues()
    if name not in known:
        listed = ", ".join(sorted(known)) or "none"
        err.print(
            f"warning: this server has no queue {name!r} (its queues: {listed})",
            markup=False,
            highlight=False,
        )


def _embedded_has_data(d: Path) -> bool:
    """A running embedded server, or the append-only files of one that ran (its data)."""
    from segue import _embedded

    if (d / "server.json").exists() and _embedded._running(d) is not None:
        return True
    aof = d / "appendonlydir"
    return aof.is_dir() and any(
        f.stat().st_size > 0 for f in aof.iterdir() if not f.name.endswith(".manifest")
    )
