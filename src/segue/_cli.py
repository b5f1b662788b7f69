"""The `segue` command: thin commands over the public API."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.exceptions
from rich.logging import RichHandler

from segue._app import App
from segue._cli_common import (
    AppOption,
    ReasonOption,
    UrlOption,
    cli,
    client_app,
    err,
    error_line,
    fail,
    flush_logs,
    load_app,
    mixed_up,
    out,
    print_rows,
    say_server,
    warn_unknown_queue,
)
from segue._errors import ConfigurationError, SegueError
from segue._eventloop import runner
from segue._heartbeat import Health
from segue._logging import (
    BatchedHandler,
    JsonFormatter,
    LeanRecord,
    PlainFormatter,
    TaskFields,
)
from segue._state import TaskInfo, TaskStatus

# `cli` is the command group the commands below join; `main` runs it (the console script)
__all__ = ["cli", "main"]


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
    processes: Annotated[
        str | None,
        typer.Option(
            "--processes",
            "-p",
            help="Run N worker processes under one supervisor that forwards signals and "
            "restarts a child that dies; auto: the CPUs this process may use",
        ),
    ] = None,
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
    if "SEGUE_SUPERVISOR_PID" in os.environ:  # a supervisor's child: it named the server
        from segue._supervisor import die_with_supervisor

        die_with_supervisor()
    else:
        say_server(the_app)
    if processes is not None:
        _supervise(the_app, processes, metrics_port, pid_file, burst)
        return
    if metrics_port is not None:
        from segue.metrics import PrometheusHook, serve_metrics

        hook = PrometheusHook()
        the_app.add_hook(hook)
        serve_metrics(hook, metrics_port, metrics_host)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        if burst:
            with runner(the_app.settings.event_loop) as loop:
                n = loop.run(_burst(the_app, names, concurrency, pid_file))
            flush_logs()  # the worker's batched lines come before the summary
            err.print(f"burst worker finished {n} runs")
        else:
            the_app.run_worker(queues=names, concurrency=concurrency, pid_file=pid_file)
    except SegueError as exc:
        fail(exc)


def _supervise(
    app: App, processes: str, metrics_port: int | None, pid_file: Path | None, burst: bool
) -> None:
    from segue._supervisor import parse_processes, run_supervised

    if "SEGUE_SUPERVISOR_PID" in os.environ:  # never a supervisor under a supervisor
        fail("--processes in a worker process of a supervisor (SEGUE_SUPERVISOR_PID is set)", 2)
    try:
        n = parse_processes(processes)
    except ConfigurationError as exc:
        fail(exc, 2)
    # the children run this same command line, less the options that are the supervisor's
    code = run_supervised(
        sys.argv[2:], n, app, metrics_port=metrics_port, pid_file=pid_file, burst=burst
    )
    if code:
        raise typer.Exit(code)


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
        Path | None,
        typer.Option(
            help="Project directory (default: nearest with pyproject.toml, .git or .segue/)"
        ),
    ] = None,
) -> None:
    """Run the embedded Valkey server of this project in the foreground."""
    from segue import _embedded

    try:
        code = _embedded.run_foreground(home)
    except SegueError as exc:
        fail(exc)
    raise typer.Exit(code)


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
    rows: list[tuple[str, ...]] = [
        (str(n), s.id, s.name, str(s.status)) for n, s in enumerate(steps, 1)
    ]
    header: tuple[str, ...] = ("#", "step", "task", "status")
    if any(s.compensation for s in steps):
        # a saga: each step's compensation, once it was asked for, and how it ended
        header = (*header, "compensation")
        rows = [
            (*row, f"{c.name} {c.status}" if (c := s.compensation) else "")
            for row, s in zip(rows, steps, strict=True)
        ]
    print_rows(header, rows, f"workflow {workflow_id}: {status}")


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
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A Host name the dashboard answers to besides the bind address and "
            "localhost (repeat it; e.g. the name a reverse proxy forwards)",
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="Address of a reverse proxy whose X-Forwarded-For names the client, for "
            "the sign-in limiter (repeat it); other senders' headers are ignored",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow plain HTTP on an address beyond loopback (e.g. to a TLS-terminating "
            "proxy on another host): passwords and sessions then cross the network in clear",
        ),
    ] = False,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            envvar="SEGUE_DASHBOARD_SECRET_FILE",
            help="File of the key that signs sessions, generated (mode 600) if missing; "
            "default .segue/dashboard-secret of the project. SEGUE_DASHBOARD_SECRET wins",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="The web server's: debug, info, warning or error")
    ] = "info",
) -> None:
    """Serve the web dashboard: queues, workers, tasks and workflows, and buttons to steer
    them. Asks for --password (or SEGUE_DASHBOARD_PASSWORD) unless --no-auth is given."""
    if no_auth == (password is not None):
        fail(
            "give a password (--password or SEGUE_DASHBOARD_PASSWORD) or --no-auth, "
            "not both and not neither",
            2,
        )
    try:
        import uvicorn

        from segue.dashboard import create_app
    except ImportError as exc:
        fail(exc)
    loopback = host in _LOOPBACK
    if not loopback and no_auth:
        fail(f"--no-auth serves loopback only, not {host}", 2)
    if not loopback and not insecure:
        fail(
            f"{host} is beyond loopback and the dashboard speaks plain HTTP: "
            "bind 127.0.0.1 behind a TLS-terminating proxy, or pass --insecure",
            2,
        )
    the_app = load_app(app)
    say_server(the_app)
    try:
        asgi = create_app(
            the_app,
            auth=None if password is None else (user, password),
            secret_key=_dashboard_secret(secret_file, the_app.settings.home),
            secure_cookies=secure_cookies,
            allowed_hosts=[*_LOOPBACK, host, *(allowed_host or [])],
            trusted_proxies=trusted_proxy or (),
        )
    except ConfigurationError as exc:
        fail(exc, 2)
    # X-Forwarded-For is read by the dashboard itself, from --trusted-proxy only
    uvicorn.run(
        asgi,
        host=host,
        port=port,
        log_level=log_level.lower(),
        ws="none",
        proxy_headers=False,
    )


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _dashboard_secret(path: Path | None, home: str | Path | None) -> bytes:
    """SEGUE_DASHBOARD_SECRET, else the secret file (made with 32 random bytes, mode 600,
    when missing), so that sign-ins survive a restart without a weak secret ever in use."""
    given = os.environ.get("SEGUE_DASHBOARD_SECRET")
    if given:
        return given.encode()
    from segue import _embedded

    if path is None:
        path = _embedded.private_dir(Path(home) if home else _embedded.find_home())
        path = path / "dashboard-secret"
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            st = path.lstat()
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise ConfigurationError(
                    f"{path} is not private to this user (owner uid {st.st_uid}, mode "
                    f"{st.st_mode & 0o777:o}); `chmod 600 {path}` as its owner"
                ) from None
            return path.read_bytes().strip()
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot keep the dashboard's session secret in {path} ({exc.strerror}); set "
            "SEGUE_DASHBOARD_SECRET or --secret-file"
        ) from None


def main() -> None:
    from segue import _cli_inspect, _cli_ops  # register their commands on `cli`

    del _cli_inspect, _cli_ops
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
        code = error_line(f"{exc.format_message()} (see --help)", getattr(exc, "exit_code", 2))
    except SegueError as exc:
        code = error_line(exc, 1)
    except Exception as exc:
        code = error_line(f"{type(exc).__name__}: {exc} (segue --debug prints the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
