"""The `segue` command: thin commands over the public API."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import typer.exceptions
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from segue._app import App
from segue._errors import SegueError
from segue._heartbeat import Health
from segue._logging import (
    BatchedHandler,
    JsonFormatter,
    LeanRecord,
    PlainFormatter,
    TaskFields,
)
from segue._settings import check_url, server_label
from segue._state import TaskInfo, TaskStatus

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
    raise typer.Exit(_error_line(message, code))


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def _error_line(message: object, code: int) -> int:
    flush_logs()
    if _debug and sys.exc_info()[0] is not None:
        traceback.print_exc()
    text = " ".join(str(message).split())  # one line, whatever the message holds
    err.print(f"[red]error:[/red] {escape(text)}", highlight=False)
    return code


def say_server(the_app: App, what: str = "server") -> None:
    """The first line of a command: which server it talks to (password masked)."""
    err.print(f"{what}: {server_label(the_app.settings)}", markup=False, highlight=False)


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


def _logging(level: str, fmt: str = "text") -> None:
    """Rich for a person at a terminal; one plain line per record elsewhere (a file, a
    pipe, a journal), where Rich would wrap each record over several lines and cost the
    worker most of its rate."""
    if fmt not in ("text", "json"):
        fail(f"--log-format {fmt!r}: use text or json", 2)
    if fmt == "json":
        handler: logging.Handler = BatchedHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif err.is_terminal:
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = BatchedHandler(sys.stderr)
        handler.setFormatter(PlainFormatter())
    handler.addFilter(TaskFields())
    # this process's logging is ours to set: records need no caller's frame, thread or
    # process (no format shows them), and finding them cost a busy worker a few per cent
    logging._srcfile = None
    logging.setLogRecordFactory(LeanRecord)
    logging.basicConfig(level=level.upper(), handlers=[handler])


@cli.command()
def worker(
    app: Annotated[str, typer.Argument(help="The App to serve, as module:attribute")],
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Runs at once (default: the App's, 16)"),
    ] = None,
    queues: Annotated[
        str | None, typer.Option("--queues", "-q", help="Comma-separated, served in order")
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", help="debug, info (a line per task start and end), warning or error"
        ),
    ] = "info",
    log_format: Annotated[
        str, typer.Option("--log-format", help="text, or json: one object per line")
    ] = "text",
    burst: Annotated[
        bool, typer.Option("--burst", help="Exit once nothing is queued, running or retrying")
    ] = False,
    pid_file: Annotated[
        Path | None,
        typer.Option(
            "--pid-file",
            help="Write the worker id here once registered (`segue check` reads "
            ".segue/worker.pid of the project by default)",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics of this worker here"),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="Address of the /metrics server")
    ] = "127.0.0.1",
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Restart the worker when a .py file under the current directory changes "
            "(development; needs watchfiles)",
        ),
    ] = False,
) -> None:
    """Run a worker until SIGTERM/SIGINT (a second signal stops at once, requeueing)."""
    _logging(log_level, log_format)
    if reload:
        from segue._reload import run_with_reload

        try:
            held: App | None = load_app(app)
        except typer.BadParameter:
            held = None  # the worker started below says what is wrong, and again after edits
        run_with_reload([a for a in sys.argv[1:] if a != "--reload"], held, Path.cwd())
        return
    the_app = load_app(app)
    say_server(the_app)
    if metrics_port is not None:
        from segue.metrics import PrometheusHook, serve_metrics

        hook = PrometheusHook()
        the_app.add_hook(hook)
        serve_metrics(hook, metrics_port, metrics_host)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        if burst:
            n = asyncio.run(_burst(the_app, names, concurrency, pid_file))
            flush_logs()  # the worker's batched lines come before the summary
            err.print(f"burst worker finished {n} runs")
        else:
            the_app.run_worker(queues=names, concurrency=concurrency, pid_file=pid_file)
    except SegueError as exc:
        fail(exc)


async def _burst(
    app: App, queues: list[str] | None, concurrency: int | None, pid_file: Path | None
) -> int:
    async with app:
        worker = app.worker(queues=queues, concurrency=concurrency, pid_file=pid_file)
        finished: int = await worker.run_until_idle()
        return finished


@cli.command()
def check(
    app: Annotated[str, typer.Argument(help="The App, as module:attribute")],
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="The worker to check (default: pid file)")
    ] = None,
    pid_file: Annotated[
        Path | None,
        typer.Option(
            "--pid-file",
            help="Where `segue worker --pid-file` wrote the id (default: .segue/worker.pid "
            "of the project, if it exists; else any worker of this host)",
        ),
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option("--max-age", help="Seconds (default: 3 heartbeat intervals)"),
    ] = None,
) -> None:
    """Exit 0 if the server answers and the worker's heartbeat is fresh; else exit 1 with
    one line saying why (for liveness and readiness probes)."""
    try:
        the_app = load_app(app)
    except typer.BadParameter as exc:  # a probe's log shows one line, not a usage box
        err.print(f"cannot load the app: {exc.message}", markup=False, highlight=False)
        raise typer.Exit(2) from None

    async def go() -> Health:
        try:
            return await the_app.check(worker_id, max_age=max_age, pid_file=pid_file)
        finally:
            await the_app.close()

    health = asyncio.run(go())
    if not health.ok:
        err.print(health.reason, markup=False, highlight=False)
        raise typer.Exit(1)
    out.print(health.reason, markup=False, highlight=False)


@cli.command()
def demo(
    tasks: Annotated[int, typer.Option("--tasks", "-n", help="How many tasks to run")] = 300,
) -> None:
    """Run a real worker over the embedded Valkey and show tasks flowing through it."""
    from segue._demo import run_demo

    try:
        run_demo(tasks)
    except SegueError as exc:
        fail(exc)


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
        fail(exc)
    raise typer.Exit(code)


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


_ID_COLUMNS = ("id", "step")


def print_rows(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], title: str) -> None:
    """A table for a person at a terminal; tab-separated lines, nothing cut, for a pipe."""
    if not out.is_terminal:
        # plain print: Rich would expand the tabs
        print(title)
        for row in (header, *rows):
            print("\t".join(row))
        return
    table = Table(title=title)
    for n, name in enumerate(header):
        if name in _ID_COLUMNS:  # the value `segue retry` and friends take: never cut
            longest = max((len(row[n]) for row in rows), default=len(name))
            table.add_column(name, no_wrap=True, min_width=longest)
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


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

        home = the_app.settings.home.resolve() if the_app.settings.home else find_home()
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


def _command(
    task_id: str, command: str, app: str | None, url: str | None, reason: str | None
) -> None:
    async def go() -> TaskStatus:
        async with client_app(app, url) as the_app:
            handle = await the_app.task_handle(task_id)
            status: TaskStatus = await getattr(handle, command)(reason)
            return status

    try:
        status = asyncio.run(go())
    except SegueError as exc:
        fail(f"{exc}{mixed_up(task_id, 'task')}")
    out.print(f"task {task_id}: {status}")


@cli.command()
def pause(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    app: AppOption = None,
    url: UrlOption = None,
    reason: ReasonOption = None,
) -> None:
    """Pause a task: held now if waiting; a running one stops at its next checkpoint."""
    _command(task_id, "pause", app, url, reason)


@cli.command()
def resume(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    app: AppOption = None,
    url: UrlOption = None,
    reason: ReasonOption = None,
) -> None:
    """Put a paused task back in its queue; it continues from its state."""
    _command(task_id, "resume", app, url, reason)


@cli.command()
def cancel(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    app: AppOption = None,
    url: UrlOption = None,
    reason: ReasonOption = None,
) -> None:
    """Cancel a task: removed if waiting, stopped at once if running."""
    _command(task_id, "cancel", app, url, reason)


workflow_cli = typer.Typer(help="Follow and steer a workflow by its id.", no_args_is_help=True)
cli.add_typer(workflow_cli, name="workflow")


def _workflow_command(
    workflow_id: str, command: str, app: str | None, url: str | None, running: bool = False
) -> None:
    the_app = client_app(app, url)

    async def go() -> tuple[TaskStatus, list[TaskInfo]]:
        async with the_app:
            handle = await the_app.workflow_handle(workflow_id)
            if command == "pause":
                await handle.pause(running=running)
            elif command != "status":
                await getattr(handle, command)()
            return await handle.status(), await handle.steps()

    if hint := mixed_up(workflow_id, "workflow"):
        fail(f"no workflow {workflow_id}{hint}")
    try:
        status, steps = asyncio.run(go())
    except SegueError as exc:
        fail(exc)
    rows = [(str(n), s.id, s.name, str(s.status)) for n, s in enumerate(steps, 1)]
    print_rows(("#", "step", "task", "status"), rows, f"workflow {workflow_id}: {status}")


@workflow_cli.command("status")
def workflow_status(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """The workflow's status and each step's."""
    _workflow_command(workflow_id, "status", app, url)


@workflow_cli.command("pause")
def workflow_pause(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id")],
    running: Annotated[
        bool, typer.Option("--running", help="Pause running steps too (at a checkpoint)")
    ] = False,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Start no new step until resumed (running steps finish, unless --running)."""
    _workflow_command(workflow_id, "pause", app, url, running)


@workflow_cli.command("resume")
def workflow_resume(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Continue a paused workflow from where it stopped."""
    _workflow_command(workflow_id, "resume", app, url)


@workflow_cli.command("cancel")
def workflow_cancel(
    workflow_id: Annotated[str, typer.Argument(help="The workflow id")],
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """Stop running steps and cancel every step not yet ended."""
    _workflow_command(workflow_id, "cancel", app, url)


@cli.command()
def retry(
    task_id: Annotated[str, typer.Argument(help="The task id")],
    app: AppOption = None,
    url: UrlOption = None,
    reason: ReasonOption = None,
) -> None:
    """Queue a failed, cancelled or expired task again (same id, tries from zero)."""
    _command(task_id, "retry", app, url, reason)


@cli.command()
def dead(
    queue: Annotated[str | None, typer.Option("--queue", "-q", help="Default: the App's")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many")] = 50,
    app: AppOption = None,
    url: UrlOption = None,
) -> None:
    """List the tasks of a queue that failed for good (its dead letters), newest first."""
    the_app = client_app(app, url)

    async def go() -> list[TaskInfo]:
        async with the_app:
            await warn_unknown_queue(the_app, queue)
            return await the_app.dead_letters(queue, limit=limit)

    try:
        infos = asyncio.run(go())
    except SegueError as exc:
        fail(exc)
    rows = []
    for info in infos:
        e = info.error
        error = f"{e.reason}: {e.type}: {e.message}" if e else ""
        ended = info.ended_at.isoformat(timespec="seconds") if info.ended_at else ""
        rows.append((info.id, info.name, str(info.tries), ended, error))
    print_rows(("id", "task", "tries", "ended", "error"), rows, f"{len(infos)} dead letter(s)")


@cli.command()
def dashboard(
    app: Annotated[str, typer.Argument(help="The App to show, as module:attribute")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    user: Annotated[
        str, typer.Option(envvar="SEGUE_DASHBOARD_USER", help="The user to sign in as")
    ] = "admin",
    password: Annotated[
        str | None,
        typer.Option(
            envvar="SEGUE_DASHBOARD_PASSWORD",
            help="Prefer the environment variable: a command line is visible to other users",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Serve without authentication: anyone who can reach the port can pause, "
            "cancel and retry tasks",
        ),
    ] = False,
    secure_cookies: Annotated[
        bool,
        typer.Option(
            "--secure-cookies",
            help="Mark cookies Secure (browsers then send them over HTTPS only): use it "
            "behind a TLS-terminating proxy",
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="The web server's: debug, info, warning or error")
    ] = "info",
) -> None:
    """Serve the web dashboard: queues, workers, tasks and workflows, and buttons to steer
    them. Asks for --password (or SEGUE_DASHBOARD_PASSWORD) unless --no-auth is given."""
    if no_auth == (password is not None):
        err.print(
            "[red]error:[/red] give a password (--password or SEGUE_DASHBOARD_PASSWORD) or "
            "--no-auth, not both and not neither"
        )
        raise typer.Exit(2)
    try:
        import uvicorn

        from segue.dashboard import create_app
    except ImportError as exc:
        fail(exc)
    the_app = load_app(app)
    say_server(the_app)
    secret = os.environ.get("SEGUE_DASHBOARD_SECRET")
    asgi = create_app(
        the_app,
        auth=None if password is None else (user, password),
        secret_key=secret.encode() if secret else None,
        secure_cookies=secure_cookies,
    )
    if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/yellow] no authentication, and listening on {host}")
    uvicorn.run(asgi, host=host, port=port, log_level=log_level.lower(), ws="none")


def main() -> None:
    from segue import _cli_inspect  # registers its commands on `cli`

    del _cli_inspect
    try:
        code = cli(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err.print("aborted")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except typer.exceptions.TyperException as exc:  # a usage error: one line, and where to look
        code = _error_line(f"{exc.format_message()} (see --help)", getattr(exc, "exit_code", 2))
    except SegueError as exc:
        code = _error_line(exc, 1)
    except Exception as exc:
        code = _error_line(f"{type(exc).__name__}: {exc} (segue --debug prints the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
