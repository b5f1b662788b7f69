"""Reading a task record as anyone with write access may have left it: a field that does not
read is left empty and named, never raised (TaskInfo, for handles, the CLI and the
dashboard)."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

from segue._blobs import is_ref, parse_ref
from segue._codec import TypedDecoder, decode_plain
from segue._keys import queue_of
from segue._state import (
    StepInfo,
    TaskError,
    TaskInfo,
    TaskStatus,
    Transition,
    at_ms,
    from_ms,
    from_worker_names,
)
from segue._wire import TaskField as F
from segue._wire import history_lines, plain_name

_PLAIN = TypedDecoder(Any)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from segue._codec import TaskTypes


def parse_error(raw: bytes | None) -> TaskError | None:
    if not raw:
        return None
    data = decode_plain(raw)
    if not isinstance(data, dict):
        raise ValueError("an error that is not a JSON object")
    return TaskError(
        type=str(data.get("type", "Error")),
        message=str(data.get("message", "")),
        traceback=data.get("traceback"),
        reason=str(data.get("reason", "error")),
    )


class _Reader:
    """Reads the fields of one task record as written by anyone with write access: a field
    it cannot read is left empty and named in `problems`, never raised, so one bad record
    does not take a list, a page or a worker down with it."""

    def __init__(self, rec: dict[bytes, bytes]) -> None:
        self.rec = rec
        self.problems: list[str] = []

    def bad(self, code: bytes, why: str) -> None:
        shown = self.rec.get(code, b"")[:40].decode(errors="replace")
        self.problems.append(f"{code.decode()}={shown!r} {why}")

    def text(self, code: bytes, default: str = "") -> str:
        raw = self.rec.get(code)
        if raw is None:
            return default
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.bad(code, "is not UTF-8")
            return raw.decode(errors="replace")

    def integer(self, code: bytes) -> int | None:
        raw = self.rec.get(code)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            self.bad(code, "is not a number")
            return None

    def when(self, code: bytes) -> datetime | None:
        ms = self.integer(code)
        try:
            return from_ms(ms)
        except (OverflowError, ValueError, OSError):
            self.bad(code, "is not a time")
            return None

    def status(self) -> TaskStatus:
        try:
            return TaskStatus(self.text(F.STATUS.b))
        except ValueError:
            # a status no segue writes: the task is not one any worker will run
            self.bad(F.STATUS.b, "is not a status")
            return TaskStatus.FAILED

    def history(self) -> tuple[list[Transition], int]:
        """The kept transitions, numbered, and how many there were in all: the count the
        scripts keep, or the lines (a record from before it was kept, or one a worker of
        the previous release appended to without counting)."""
        lines, bad = history_lines(
            self.rec.get(F.HISTORY.b),
            self.rec.get(F.HISTORY_COMPACT.b),
            self.integer(F.ENQUEUED_AT.b),
        )
        total = max(self.integer(F.HISTORY_TOTAL.b) or 0, len(lines) + bad)
        first = total - len(lines) - bad + 1
        if bad:
            self.bad(F.HISTORY.b, "has a line that is not status|time|reason")
        out = []
        for n, (st, at, reason) in enumerate(lines, first):
            try:
                out.append(Transition(TaskStatus(st), at_ms(at), reason, n))
            except (ValueError, OverflowError, OSError):
                self.bad(F.HISTORY.b, "has a line that is not status|time|reason")
        return out, total

    def steps(self) -> list[StepInfo]:
        out = []
        count = self.integer(F.STEP_COUNT.b) or 0
        for n in range(1, count + 1):
            code = F.STEP_PREFIX.b + str(n).encode()
            line = self.rec.get(code, b"").decode(errors="replace")
            try:
                name, start, took, ok, kind = line.split("|")
                out.append(
                    StepInfo(name, at_ms(int(start)), int(took) / 1000, ok == "1", kind or None)
                )
            except (ValueError, OverflowError, OSError):
                self.bad(code, "is not name|start|ms|ok|type")
        return out

    def progress(self) -> tuple[float, float | None] | None:
        if F.PROGRESS.b not in self.rec:
            return None
        done_text, _, total_text = self.text(F.PROGRESS.b).partition(" ")
        try:
            done, total = float(done_text), float(total_text) if total_text else None
        except ValueError:
            self.bad(F.PROGRESS.b, "is not '<done> [<total>]'")
            return None
        if not math.isfinite(done) or (total is not None and not (math.isfinite(total))):
            self.bad(F.PROGRESS.b, "is not finite")
            return None
        return done, total

    def decoded(self, code: bytes, decoder: TypedDecoder) -> Any:
        try:
            return decoder.decode(self.rec[code])
        except Exception:  # any decode failure of stored JSON: not this reader's to raise
            self.bad(code, "does not decode")
            return None

    def error(self) -> TaskError | None:
        try:
            return parse_error(self.rec.get(F.ERROR.b))
        except Exception:
            self.bad(F.ERROR.b, "is not an error record")
            return None


def parse_info(task_id: str, rec: dict[bytes, bytes], tasks: Mapping[str, TaskTypes]) -> TaskInfo:
    r = _Reader(rec)
    name = plain_name(r.text(F.NAME.b))
    task = tasks.get(name)
    status = r.status()
    offloaded: dict[str, int] = {}
    for what, code in (("args", F.PAYLOAD.b), ("result", F.RESULT.b)):
        value = rec.get(code)
        if value is not None and is_ref(value):
            # shown as its size, read on demand (handle.download): not fetched for a listing
            with contextlib.suppress(ValueError):
                offloaded[what] = parse_ref(value).size
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    try:
        if "args" in offloaded:
            pass
        elif task is not None:
            args, kwargs = task.args_decoder.decode(rec[F.PAYLOAD.b])
        else:
            args, kwargs = decode_plain(rec[F.PAYLOAD.b])
        args, kwargs = list(args), dict(kwargs)
    except Exception:
        args, kwargs = [], {}
    history, history_total = r.history()
    result: Any = None
    if status is TaskStatus.SUCCEEDED and F.RESULT.b in rec and "result" not in offloaded:
        result = r.decoded(F.RESULT.b, task.result_decoder if task is not None else _PLAIN)
    worker = r.text(F.WORKER.b) or None
    progress = r.progress()
    version = r.integer(F.VERSION.b) or 1
    return TaskInfo(
        id=task_id,
        name=name,
        queue=queue_of(task_id),
        status=status,
        args=args,
        kwargs=kwargs,
        priority=r.text(F.PRIORITY.b, "normal"),
        tries=r.integer(F.TRIES.b) or 0,
        max_tries=r.integer(F.MAX_TRIES.b) or 0,
        worker_id=worker,
        enqueued_at=r.when(F.ENQUEUED_AT.b),
        started_at=r.when(F.STARTED_AT.b),
        ended_at=r.when(F.ENDED_AT.b),
        due_at=r.when(F.DUE_AT.b),
        history=history,
        result=result,
        error=r.error(),
        progress=progress,
        progress_message=r.text(F.PROGRESS_MESSAGE.b) or None,
        steps=r.steps(),
        problem="; ".join(r.problems) or None,
        pending_request=r.text(F.CONTROL.b) or None,
        pending_request_at=r.when(F.CONTROL_AT.b) if F.CONTROL.b in rec else None,
        history_total=history_total,
        offloaded=offloaded,
        workflow=_workflow_of(r.text(F.WORKFLOW.b) or r.text(F.COMPENSATES.b)),
        version=version,
        started_version=r.integer(F.STARTED_VERSION.b) or version,
        waiting_for=_waiting_for(r, status),
        signals_dropped=r.integer(F.SIGNALS_DROPPED.b) or 0,
        from_worker=from_worker_names(r.text(F.FROM_WORKER.b)),
    )


def _workflow_of(text: str) -> str | None:
    """The workflow of a step ('wf') or of a compensation ('cof': "<workflow>|<step n>")."""
    return text.rsplit("|", 1)[0] if text else None


def _waiting_for(r: _Reader, status: TaskStatus) -> str | None:
    """What a WAITING task waits for: `signal:<name>` (with its deadline, if any),
    `sub-tasks` (a ctx.wait_for) or `dependencies` (after=, an earlier workflow step)."""
    if status is not TaskStatus.WAITING:
        return None
    name = r.text(F.SIGNAL_WAIT.b)
    if name:
        due = r.when(F.SIGNAL_DEADLINE.b)
        return f"signal:{name}" + (f" until {due.isoformat()}" if due else "")
    lines, _ = history_lines(
        r.rec.get(F.HISTORY.b), r.rec.get(F.HISTORY_COMPACT.b), r.integer(F.ENQUEUED_AT.b)
    )
    if lines and lines[-1][0] == "waiting" and "sub-task" in lines[-1][2]:
        return "sub-tasks"
    return "dependencies"
