"""What every `segue` command shares: the Typer app, the consoles, and how a command finds
its App (`module:attribute`, or one built from `--url` or the environment)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from segue._app import App
from segue._display import clean, plain

cli = typer.Typer(
    name="segue",
    help="segue: a durable task queue for Python on Redis/Valkey.",
    no_args_is_help=True,
    add_completion=False,
)
# soft wrap: a line a script parses (a task id, an error) is never split at 80 columns
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


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
    table = Table(*header, title=title)
    for row in rows:
        table.add_row(*(plain(cell) for cell in row))  # stored strings: never markup
    out.print(table)


def client_app(app: str | None, url: str | None) -> App:
    """The App an inspection command talks through: `--app`, else one built from `--url`
    or the environment (SEGUE_*), else the embedded server of this project."""
    if app is not None:
        return load_app(app)
    return App("segue-cli", redis_url=url) if url else App("segue-cli")
