"""One attempt of one task: decode, call with a timeout, decide the outcome.

The outcome is one of segue._wire's Outcome cases; the worker sends it in its next batched
round trip. Nothing here talks to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segue._codec import PayloadTooLarge, decode_plain, encode
from segue._context import Context, PauseRequested, WaitingForSubtasks
from segue._errors import Fail, LeaseLost, Pause, PayloadError, RateLimited, Retry, SignalTimeout
from segue._faults import faultpoint
from segue._hooks import RunEnd, RunResult, after_run, call_hooks
from segue._journal import Sleeping
from segue._logging import LineLog, current_task
from segue._migrate import MigrationFailed, VersionUnsupported, upgrade
from segue._options import TaskOptions, check_limit_key
from segue._outcome import (
    Failed,
    Limited,
    NewerVersion,
    Outcome,
    Paused,
    PausedItself,
    Released,
    Requeued,
    Retrying,
    Slept,
    Succeeded,
    Waiting,
)
from segue._procpool import ProcessTaskError
from segue._run_control import RunControl, ServerUnreachable
from segue._signals import WaitingForSignal
from segue._sync_context import SyncContext

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from segue._hooks import Hook
    from segue._keys import Keyspace
    from segue._procpool import ProcessPool
    from segue._settings import Settings
    from segue._task import Task

log = logging.getLogger("segue.worker")
_UNTIMED = contextlib.nullcontext()  # a sync or process run without a timeout
# the task lines at INFO, cheap when only the command's own handler writes them
lines = LineLog(log)


@dataclass(slots=True, eq=False)
class Job:
    """A claimed run: what the claim script returned, plus how the worker may stop it."""

    ks: Keyspace
    id: str
    name: str
    payload: bytes
    tries: int
    gen: str
    timeout_ms: int
    max_tries: int
    input: bytes | None = None  # a workflow step's value from the steps before it (JSON)
    headers: bytes | None = None  # the enqueuer's headers (JSON), e.g. a trace context
    last_delivery: bool = False  # its worker dies once more and it fails as worker_lost
    run: RunControl | None = None
    task: asyncio.Task[None] | None = None
    lost: bool = False
    requeue: bool = False
    started: float = field(default=0.0)
    error: BaseException | None = None  # what the run raised, for hooks
    value: Any = None  # what it returned, for hooks
    unreadable: str | None = None  # the claimed row did not read in full: fail, do not run
    journal: list[bytes] | None = None  # its step journal, when the claim handed it over
    version: int = 1  # the record's version of the task's code (_migrate.py)
    started_version: int = 1  # the version it started under: ctx.version
    # an enqueue by name (app.send): "send", plus "mt"/"to"/"v" when this worker's definition
    # supplies max_tries/timeout/version (the record holds defaults for older workers)
    from_worker: str = ""


def _error(exc: BaseException, reason: str, *, with_tb: bool = True) -> bytes:
    tb = "".join(traceback.format_exception(exc)) if with_tb else None
    kind, message = type(exc).__qualname__, str(exc)
    if isinstance(exc, ProcessTaskError):  # as the child process raised it
        kind, message = exc.type_name, exc.args[0]
        tb = exc.remote_traceback if with_tb else None
    data = {
        "type": kind,
        "message": message,
        "traceback": tb,
        "reason": reason,
    }
    return encode(data, what="an error report", limit=1 << 30)


def _message(reason: str, message: str) -> bytes:
    data = {"type": "SegueError", "message": message, "traceback": None, "reason": reason}
    return encode(data, what="an error report", limit=1 << 30)


_ENDS: dict[str, RunEnd] = {
    "ok": "succeeded",
    "fail": "failed",
    "retry": "retrying",
    "suspend": "suspended",
    "sleep": "suspended",
    "pause": "suspended",
    "paused": "paused",
    "waiting": "waiting",
}


async def attempt(
    job: Job,
    task: Task[Any, Any] | None,
    settings: Settings,
    worker_id: str,
    executor: Executor,
    hooks: Sequence[Hook] = (),
    processes: ProcessPool | None = None,
) -> Outcome:
    """Run one attempt and say what should happen next."""
    if job.unreadable is not None:
        text = f"the record of task {job.id} does not read ({job.unreadable})"
        return Failed(_message("undecodable", text), "undecodable")
    if task is None:
        return Released(
            settings.unknown_task_max_releases,
            int(settings.unknown_task_window_seconds * 1000),
        )
    if job.from_worker:
        _take_definition(job, task)
    if job.version != task.opts.version:
        early = await _versions(job, task, settings)
        if early is not None:
            return early
    try:
        args, kwargs = task.args_decoder.decode(job.payload, first=job.input)
    except Exception as exc:
        # a producer without the code (app.send) was not checked against the parameters: a
        # value that does not fit one is its mistake, not a record gone bad
        why = "bad_arguments" if isinstance(exc, PayloadError) and job.from_worker else ""
        return Failed(
            _message(
                why or "undecodable",
                (
                    f"the arguments of task {job.id} ({job.name}) do not decode "
                    f"for its parameters: "
                    f"{exc}"
                ),
            ),
            why or "undecodable",
        )
    ctx: Context | None = None
    if task.takes_ctx or hooks:
        ctx = Context(
            task_id=job.id,
            name=job.name,
            tries=job.tries,
            worker_id=worker_id,
            queue=job.ks.queue,
            run=job.run,
            state_limit=settings.max_payload_bytes,
            headers=decode_plain(job.headers) if job.headers else None,
            sleep_inline_seconds=settings.sleep_inline_seconds,
            version=job.started_version,
        )
        if job.journal is not None:
            ctx._journal.preload(job.journal)
    if task.takes_ctx:
        assert ctx is not None
        args.insert(0, ctx if task.is_async else SyncContext(ctx, asyncio.get_running_loop()))
    # every log line of the run (its own loggers, libraries') carries the task's fields
    current_task.set((job.id, job.name))
    if ctx is None:
        return await _call(job, task, settings, executor, args, kwargs, processes)
    if hooks:
        await call_hooks(hooks, "before_run", ctx)
    # the run's last output chunks (if it streamed: a writer exists) are written before its
    # outcome is sent, and before the after_run hooks hear of its end
    try:
        outcome = await _call(job, task, settings, executor, args, kwargs, processes)
    except BaseException as exc:
        if ctx._output is not None:
            await ctx._close_output(ended=False)
        if hooks:
            cancelled = job.run is not None and job.run.request == "cancel"
            stopped: RunEnd = "cancelled" if cancelled else "stopped"
            await after_run(hooks, ctx, RunResult(stopped, error=exc))
        raise
    if ctx._output is not None:
        await ctx._close_output(ended=True)
    if hooks:
        end = _ENDS.get(outcome.action, "stopped")
        retry_in = outcome.delay_ms / 1000 if isinstance(outcome, Retrying) else None
        await after_run(hooks, ctx, RunResult(end, job.value, job.error, retry_in))
    return outcome


async def _versions(job: Job, task: Task[Any, Any], settings: Settings) -> Outcome | None:
    """What a run does before the task's code when the record is of another version than
    this worker's code of the task: release it (newer), or migrate its state (older)."""
    mine = task.opts.version
    if job.version > mine:
        if not task.opts.silent:
            lines.info(
                "task %s is of version %d, this worker's code is version %d: released",
                job.id,
                job.version,
                mine,
            )
        most = int(settings.newer_version_backoff_seconds * 1000)
        return NewerVersion(min(1000, most), most)
    if job.run is None:
        return None
    try:
        # an upgraded state value is bounded as ctx.state.set bounds it
        limit = (
            settings.max_payload_bytes
            if settings.offload_bytes is None
            else settings.max_offload_bytes
        )
        await upgrade(job.id, task.opts, job.version, job.run, limit)
    except VersionUnsupported as exc:
        log.warning("task %s failed: %s", job.id, exc)
        return Failed(_message("version_unsupported", str(exc)), "version_unsupported")
    except MigrationFailed as exc:
        return _failure(job, task, exc, "error")
    except ServerUnreachable as exc:
        log.warning("task %s stopped: %s; requeued, the try not spent", job.id, exc)
        return Requeued("server unreachable")
    except LeaseLost as exc:
        job.lost = True  # nothing to send: the task is another run's now
        log.warning("%s", exc)
        return Requeued("lease lost")
    job.version = mine
    return None


async def _call(
    job: Job,
    task: Task[Any, Any],
    settings: Settings,
    executor: Executor,
    args: list[Any],
    kwargs: dict[str, Any],
    processes: ProcessPool | None = None,
) -> Outcome:
    """Call the function under its timeout; the outcome, with job.error / job.value set."""
    silent = task.opts.silent
    if not silent:
        lines.info("task %s started name=%s try=%d", job.id, job.name, job.tries)
    timeout = job.timeout_ms / 1000 if job.timeout_ms else None
    # no timeout (the default): no timer to arm and disarm around an async function
    timer = None if timeout is None else asyncio.timeout(timeout)
    try:
        if timer is None and task.is_async:
            value = await task.fn(*args, **kwargs)
        else:
            async with timer or _UNTIMED:
                if task.is_async:
                    value = await task.fn(*args, **kwargs)
                elif processes is not None and task.opts.executor == "process":
                    # the child decodes the stored arguments itself and answers in JSON
                    limit = settings.max_result_bytes
                    result = await processes.run(task, job.payload, job.input, limit)
                    job.value = decode_plain(result)
                    if not silent:
                        lines.info("task %s succeeded", job.id)
                    return Succeeded(result)
                else:
                    loop = asyncio.get_running_loop()
                    # the thread sees the context variables of this run (set by hooks, say)
                    call = functools.partial(task.fn, *args, **kwargs)
                    value = await loop.run_in_executor(
                        executor, contextvars.copy_context().run, call
                    )
    except (WaitingForSubtasks, WaitingForSignal):
        return Waiting()
    except SignalTimeout as exc:
        # no retry: a new try would replay the same journaled timeout
        job.error = exc
        if not silent:
            lines.info("task %s failed: %s", job.id, exc)
        return Failed(_error(exc, "signal_timeout", with_tb=True), "signal_timeout")
    except Sleeping as exc:
        if not silent:
            lines.info("task %s sleeps for %.3f s (durable sleep)", job.id, exc.delay_ms / 1000)
        return Slept(exc.delay_ms)
    except ServerUnreachable as exc:
        if not silent:
            log.warning("task %s stopped: %s; requeued, the try not spent", job.id, exc)
        return Requeued("server unreachable")
    except PauseRequested:
        if not silent:
            lines.info("task %s paused at a checkpoint", job.id)
        return Paused()
    except Pause as exc:
        return _paused_itself(job, task, settings, exc)
    except RateLimited as exc:
        if not silent:
            lines.info("task %s rate limited: held for %.3f s", job.id, exc.retry_after)
        most = task.opts.max_pauses
        lane = "" if exc.key is None else held_lane(task.opts, exc.key)
        return Limited(int(exc.retry_after * 1000), -1 if most is None else most, lane)
    except Fail as exc:
        job.error = exc
        if not silent:
            lines.info("task %s failed (Fail): %s", job.id, exc.reason)
        return Failed(_error(exc, "fail", with_tb=False), "fail")
    except Retry as exc:
        job.error = exc
        if job.tries < job.max_tries:
            delay = exc.delay if exc.delay is not None else task.opts.backoff(job.tries)
            if not silent:
                lines.info("task %s asked to retry in %.2fs", job.id, delay)
            return Retrying(_error(exc, "retry", with_tb=False), int(delay * 1000))
        return Failed(_error(exc, "max_tries", with_tb=False), "max_tries")
    except TimeoutError as exc:
        if timer is None or not timer.expired():
            return _failure(job, task, exc, "error")
        expired = TimeoutError(f"task {job.id} ({job.name}) ran past its timeout of {timeout} s")
        return _failure(job, task, expired, "timeout")
    except Exception as exc:
        if isinstance(exc, TypeError) and (bad := _misfit(task, args, kwargs)) is not None:
            # the function was never entered: another try would fail the same way
            job.error = exc
            if not silent:
                log.warning("task %s failed: %s", job.id, bad)
            return Failed(
                _message("bad_arguments", f"task {job.id} ({job.name}): {bad}"), "bad_arguments"
            )
        return _failure(job, task, exc, "error")
    job.value = value
    faultpoint("after_effect_before_complete")
    # offloading: the worker puts a result over offload_bytes in the payload store
    offload = settings.offload_bytes is not None
    try:
        payload = encode(
            value,
            what=f"the result of task {job.id} ({job.name})",
            limit=settings.max_offload_bytes if offload else settings.max_result_bytes,
            setting="max_offload_bytes" if offload else "max_result_bytes",
        )
    except Exception as exc:
        # no retry: another try would most likely return the same value
        job.error = exc
        reason = "result_too_large" if isinstance(exc, PayloadTooLarge) else "unencodable_result"
        if not silent:
            log.warning("task %s failed: %s", job.id, exc)
        return Failed(_error(exc, reason, with_tb=False), reason)
    if not silent:
        lines.info("task %s succeeded", job.id)
    return Succeeded(payload)


def held_lane(opts: TaskOptions, key: str | int) -> str:
    """The lane whose budget RateLimited(key=...) holds: that key under the task's limit."""
    return f"{opts.limits.limit_name or opts.name}|{check_limit_key(key)}"


def _take_definition(job: Job, task: Task[Any, Any]) -> None:
    """A task enqueued by name runs with this worker's max_tries, timeout and version where
    its producer left them out (`from_worker`): a version not passed is this code's, so
    nothing is migrated or released for it."""
    marks = job.from_worker.split()
    if "v" in marks and job.started_version == job.version == 1:
        job.version = job.started_version = task.opts.version
    if "mt" in marks:
        job.max_tries = task.opts.max_tries
    if "to" in marks:
        timeout = task.opts.timeout
        job.timeout_ms = int(timeout * 1000) if timeout else 0


def _misfit(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """Why the arguments do not fit the function's parameters (naming the parameter), or
    None when they do. Asked only after a call raised TypeError, so a run whose arguments
    fit pays nothing for it."""
    try:
        task.check_args(tuple(args[1:] if task.takes_ctx else args), kwargs)
    except TypeError as exc:
        return str(exc)
    return None


def _paused_itself(job: Job, task: Task[Any, Any], settings: Settings, exc: Pause) -> Outcome:
    state = []
    for key, value in exc.state.items():
        try:
            encoded = encode(value, what=f"state value {key!r}", limit=settings.max_payload_bytes)
        except PayloadError as err:
            # as ctx.state.set would have raised in the task: this try fails, nothing written
            return _failure(job, task, PayloadError(f"Pause(state=...): {err}"), "error")
        state.append((key, encoded))
    if not task.opts.silent:
        lines.info("task %s paused itself (delay %s)", job.id, exc.delay)
    delay_ms = -1 if exc.delay is None else int(exc.delay * 1000)
    most = task.opts.max_pauses
    return PausedItself(delay_ms, -1 if most is None else most, tuple(state))


def _failure(job: Job, task: Task[Any, Any], exc: BaseException, reason: str) -> Outcome:
    job.error = exc
    if job.tries < job.max_tries:
        delay = task.opts.backoff(job.tries)
        if not task.opts.silent:
            lines.info(
                "task %s try %d failed (%r); retrying in %.2fs", job.id, job.tries, exc, delay
            )
        return Retrying(_error(exc, reason), int(delay * 1000))
    if not task.opts.silent:
        log.warning("task %s failed after %d tries: %r", job.id, job.tries, exc)
    return Failed(_error(exc, reason), reason)
