"""The `segue` command: thin commands over the public API."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from segue._app import App
from segue._errors import SegueError

cli = typer.Typer(
    name="segue",
    help="segue: a durable task queue for Python on Redis/Valkey.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)


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


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
    )


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="The App to serve, as module:attribute")],
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="Comma-separated, served in order")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    burst: Annotated[
        bool, typer.Option("--burst", help="Exit once nothing is queued, running or retrying")
    ] = False,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once, requeueing)."""
    _logging(log_level)
    the_app = load_app(app)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        if burst:
            n = asyncio.run(_burst(the_app, names, concurrency))
            err.print(f"burst worker finished {n} runs")
        else:
            the_app.run_worker(queues=names, concurrency=concurrency)
    except SegueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


async def _burst(app: App, queues: list[str] | None, concurrency: int | None) -> int:
    async with app:
        return await app.drain(queues=queues, concurrency=concurrency)


@cli.command()
def demo(
    tasks: Annotated[int, typer.Option("--tasks", "-n", help="How many tasks to run")] = 300,
) -> None:
    """Run a real worker over the embedded Valkey and show tasks flowing through it."""
    from segue._demo import run_demo

    try:
        run_demo(tasks)
    except SegueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@cli.command()
def server(
    home: Annotated[
        Path | None, typer.Option(help="Project directory (default: nearest with pyproject.toml)")
    ] = None,
) -> None:
    """Run the embedded Valkey server of this project in the foreground."""
    from segue import _embedded

    try:
        code = _embedded.run_foreground(home)
    except SegueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def main() -> None:
    cli()
