"""Logging: task fields on every line emitted inside a task, and the CLI's formats.

The library only adds a NullHandler; `segue worker --log-format json|text` configures the
root logger: text through Rich on a terminal, else one plain line per record (a file, a
pipe, systemd's journal), written in batches. Inside a run, `current_task` holds the task's
id and name, so any logger (the task's own, a library's) gets `record.task_id` /
`record.task_name` through `TaskFields`.
"""

from __future__ import annotations

import contextvars
import json
import json.encoder
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

# a str as a JSON string, as json.dumps(ensure_ascii=False) writes it
_quote = json.encoder.encode_basestring

current_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "segue_current_task", default=None
)


class OutageThrottle(logging.Filter):
    """One warning of a kind (its logger and message template ending in "retrying" or
    "reconnecting") per `seconds`: during an outage each of a worker's loops retries several
    times a second, and a line per retry buries the log (70 lines for 10 s)."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self._lock = threading.Lock()  # the lease thread logs too
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if record.levelno != logging.WARNING or not isinstance(msg, str):
            return True
        if not msg.endswith(("retrying", "reconnecting")):
            return True
        key = (record.name, msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.seconds:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            record.msg = f"{msg} ({held} more like it not shown)"
        return True


OUTAGE_THROTTLE = OutageThrottle()
for _name in (
    "segue.worker",
    "segue.scheduler",
    "segue.broker",
    "segue.forward",
    "segue.reconcile",
):
    logging.getLogger(_name).addFilter(OUTAGE_THROTTLE)


class TaskFields(logging.Filter):
    """Adds task_id and task_name (or "-") to every record, for formatters to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task.get()
        record.task_id, record.task_name = task if task is not None else ("-", "-")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, task fields, exception."""

    _stamp = (-1, "")  # the formatted second, reused: strftime per record is costly

    def format(self, record: logging.LogRecord) -> str:
        task_id = getattr(record, "task_id", "-")
        task = None if task_id == "-" else (task_id, getattr(record, "task_name", "-"))
        line = self._object(
            record.created, record.levelname, record.name, record.getMessage(), task
        )
        if record.exc_info:
            line += f', "exception": {_quote(self.formatException(record.exc_info))}'
        return line + "}"

    def line(self, now: float, level: str, name: str, message: str) -> str:
        """The line of a record without one (BatchedHandler.write's fast path)."""
        return self._object(now, level, name, message, current_task.get()) + "}"

    def _object(
        self, now: float, level: str, name: str, message: str, task: tuple[str, str] | None
    ) -> str:
        """The object's text but its closing brace. Written out rather than json.dumps of a
        dict, which was half the cost of a line; the same text (json's separators, strings
        quoted by json's own function)."""
        second = int(now)
        cached, stamp = self._stamp
        if cached != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, stamp)
        text = (
            f'{{"time": "{stamp}.{int((now - second) * 1000):03d}Z", "level": "{level.lower()}",'
            f' "logger": {_quote(name)}, "message": {_quote(message)}'
        )
        if task is not None:
            text += f', "task_id": {_quote(task[0])}, "task_name": {_quote(task[1])}'
        return text


_START = time.time()


class LeanRecord(logging.LogRecord):
    """A LogRecord made without what no format of `segue worker` shows (the caller's file,
    thread and process), which is most of its cost. The command installs it for its own
    process (logging.setLogRecordFactory); a program of yours keeps the standard one."""

    def __init__(  # the signature LogRecord's factory is called with
        self,
        name: str,
        level: int,
        pathname: str,
        lineno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        sinfo: str | None = None,
        **kwargs: Any,
    ) -> None:
        now = time.time()
        self.name = name
        self.msg = msg
        if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            args = args[0]  # logging's `log.info("%(a)s", {"a": 1})` form
        self.args = args
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = self.filename = self.module = pathname
        self.exc_info = exc_info
        self.exc_text = None
        self.stack_info = sinfo
        self.lineno = lineno
        self.funcName = func or "(unknown function)"
        self.created = now
        self.msecs = int((now - int(now)) * 1000) + 0.0
        self.relativeCreated = (now - _START) * 1000
        self.thread = self.threadName = self.processName = self.process = None
        self.taskName = None


class PlainFormatter(logging.Formatter):
    """`2026-12-07 17:46:18.123 INFO segue.worker: message`, one line per record (a message's
    own newlines escaped; a traceback follows on its own lines)."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = (-1, "")  # the formatted second, reused: strftime per record is costly

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelname, record.name, record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(self, now: float, level: str, name: str, message: str) -> str:
        second = int(now)
        cached, stamp = self._stamp
        if cached != second:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        if "\n" in message:
            message = message.replace("\n", "\\n")
        return f"{stamp}.{int((now - second) * 1000):03d} {level} {name}: {message}"


class BatchedHandler(logging.Handler):
    """Lines to a stream in batches: a record below WARNING waits at most `delay` seconds to
    be written with the others (one write instead of a write and a flush per record, which
    cost a busy worker most of its rate); a warning or worse is written at once, with what
    waited before it. What is left is written at exit (logging.shutdown flushes)."""

    def __init__(self, stream: TextIO, delay: float = 0.2) -> None:
        super().__init__()
        self.stream = stream
        self.delay = delay
        self._lines: list[str] = []
        self._wake = threading.Event()
        threading.Thread(target=self._writer, name="segue-log", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)  # under the handler's lock (Handler.handle holds it)
        if record.levelno >= logging.WARNING:
            self._write()
        elif len(self._lines) == 1:
            self._wake.set()

    def _write(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _writer(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.delay)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write()
            except (OSError, ValueError):  # the stream was closed under us: nothing to do
                pass

    def direct(self, level: int) -> bool:
        """True when a line at `level` may skip the record: this is the handler `segue worker`
        set up, unchanged (its formatter, its TaskFields filter alone, its level)."""
        return (
            type(self.formatter) in (PlainFormatter, JsonFormatter)
            and self.level <= level
            and len(self.filters) == 1
            and type(self.filters[0]) is TaskFields
        )

    def write(self, levelname: str, name: str, message: str) -> None:
        """Queue the line of a record below WARNING without making the record."""
        formatter = self.formatter
        assert isinstance(formatter, (PlainFormatter, JsonFormatter))  # direct() checked it
        line = formatter.line(time.time(), levelname, name, message)
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            if len(self._lines) == 1:
                self._wake.set()


def _direct_handler(logger: logging.Logger, level: int) -> BatchedHandler | None:
    """The handler of `segue worker` when it alone would see a record of `logger` at `level`:
    no handler, filter or stopped propagation of yours on the way, the command's record
    factory in place. Checked on every line (a few attribute reads), so a handler you add at
    any time sees the lines that follow."""
    if logging.getLogRecordFactory() is not LeanRecord or logger.disabled:
        return None
    node = logger
    while not node.handlers:
        for f in node.filters:
            if f is not OUTAGE_THROTTLE:  # it only holds back warnings
                return None
        if not node.propagate or node.parent is None:
            return None
        node = node.parent
    if node.parent is not None or node.filters or len(node.handlers) != 1:
        return None
    handler = node.handlers[0]
    if type(handler) is BatchedHandler and handler.direct(level):
        return handler
    return None


class LineLog:
    """A logger's INFO lines (the worker's task start and end), written straight into the
    batch of `segue worker`'s handler when nothing else would see them: making and passing
    a LogRecord cost a busy worker a third of its rate at INFO. Any other setup (your
    handlers or filters, your program's logging) gets the standard path, unchanged."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def info(self, msg: str, *args: object) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = _direct_handler(logger, logging.INFO)
        if handler is None:
            logger.info(msg, *args, stacklevel=2)  # the record names our caller, as before
        else:
            handler.write("INFO", logger.name, msg % args if args else msg)
