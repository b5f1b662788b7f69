"""`@app.task(executor="process")`: sync tasks run in a pool of child processes of the worker.

A CPU-bound function in a thread holds the GIL and slows the worker's event loop (claims,
finishes, lease renewals, every other task); in a process of its own it uses another core.
A thread cannot be stopped, but a process can: a timeout, a cancel or a pause past its grace
kills the child that runs the task, and the pool starts a fresh one for the next task, so
the slot is free at once instead of after the function's end.

No pickle crosses the pipe. The worker sends the task's module and qualified name (the child
imports it, as the worker did) and the stored JSON payload of its arguments; the child
decodes them to the annotated types, calls the function and sends back the JSON-encoded
value, or the exception's type, message and traceback. So a process task is a plain function
at the top level of an importable module, with JSON arguments and a JSON value, and without
`ctx` (checked when it is declared, see _registry.py).

The child writes its protocol on a private copy of its stdout; what the task prints goes to
the worker's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import math
import os
import signal
import struct
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segue._codec import ArgsDecoder, encode
from segue._errors import Fail, Retry, SegueError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from segue._settings import Settings
    from segue._task import Task

log = logging.getLogger("segue.worker")

_PATH_ENV = "SEGUE_PROCESS_PATH"  # the worker's sys.path, so the child imports what it did
_REQUEST = struct.Struct("!III")  # lengths: header, arguments, input (0xFFFFFFFF: none)
_REPLY = struct.Struct("!BI")  # kind (0 value, 1 error), length
_NO_INPUT = 0xFFFFFFFF


class TaskProcessDied(SegueError):
    """The child process running a task ended without an answer (a crash, the OOM killer)."""


class ProcessTaskError(Exception):
    """An exception raised by a task in a child process, as the worker records it: the
    child's type name and message, and the child's traceback as the remote one."""

    def __init__(self, type_name: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = tb

    def __str__(self) -> str:
        return f"{self.type_name}: {self.args[0]}"


class _Child:
    """One child process of the pool, answering one request at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls) -> _Child:
        env = {**os.environ, _PATH_ENV: json.dumps(sys.path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from segue._procpool import main; main()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def call(self, header: bytes, payload: bytes, first: bytes | None) -> tuple[int, bytes]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        n_input = _NO_INPUT if first is None else len(first)
        self.proc.stdin.write(_REQUEST.pack(len(header), len(payload), n_input))
        self.proc.stdin.write(header + payload + (first or b""))
        try:
            await self.proc.stdin.drain()
            kind, size = _REPLY.unpack(await self.proc.stdout.readexactly(_REPLY.size))
            return kind, await self.proc.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            code = await self.proc.wait()
            raise TaskProcessDied(
                f"the task's process (pid {self.proc.pid}) ended with code {code} before "
                "it answered"
            ) from exc


class ProcessPool:
    """At most `size` child processes, started as tasks need them and kept for the next."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._reaping: set[asyncio.Task[int]] = set()
        self._modules: dict[str, str] = {}  # the module a child imports, by task name

    async def run(
        self, task: Task[Any, Any], payload: bytes, first: bytes | None, result_limit: int
    ) -> bytes:
        """Call the task's function with the decoded arguments in a child; its value,
        JSON-encoded; raises what the function raised (Fail and Retry as themselves,
        anything else as ProcessTaskError)."""
        module = self._modules.get(task.name) or self._modules.setdefault(
            task.name, importable_module(task)
        )
        header = json.dumps(
            {"module": module, "qualname": task.fn.__qualname__, "limit": result_limit}
        ).encode()
        async with self._free:
            child = self._idle.pop() if self._idle else await _Child.start()
            try:
                kind, body = await child.call(header, payload, first)
            except BaseException:
                # a timeout, a cancel or a worker shutdown: the function may run on for
                # long in the child, which is killed so its slot is free now
                self._kill(child)
                raise
            self._idle.append(child)
        if kind == 0:
            return body
        error = json.loads(body)
        if error["fail"] is not None:
            raise Fail(error["fail"])
        if error["retry"]:
            raise Retry(error["retry_delay"])
        raise ProcessTaskError(error["type"], error["message"], error["traceback"])

    def _kill(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        reap = asyncio.ensure_future(child.proc.wait())
        self._reaping.add(reap)
        reap.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        """Stop every child: idle ones are told to leave (end of input), the rest killed."""
        idle, self._idle = self._idle, []
        for child in idle:
            if child.proc.stdin is not None:
                child.proc.stdin.close()
        for child in idle:
            try:
                async with asyncio.timeout(2.0):
                    await child.proc.wait()
            except TimeoutError:
                self._kill(child)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)


def importable_module(task: Task[Any, Any]) -> str:
    """The module a child imports to find the task. A task declared in `__main__` (a
    script run as `python shop.py`, whose worker starts under `if __name__ == ...`) is
    found in a module that holds the same task under the same name, else in the script's
    file imported by its name."""
    module = task.fn.__module__
    if module != "__main__":
        return module
    for name, mod in list(sys.modules.items()):
        found: Any = mod
        try:  # a module's own __getattr__ may raise anything
            for part in task.fn.__qualname__.split("."):
                found = getattr(found, part, None)
            same = name != "__main__" and isinstance(getattr(found, "name", None), str)
            if same and found.name == task.name:
                return name
        except Exception:
            continue
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(path).stem if path else module


def process_pool(tasks: Iterable[Task[Any, Any]], settings: Settings) -> ProcessPool | None:
    """The pool a worker of these tasks needs: None unless one is a process task."""
    if not any(task.opts.executor == "process" for task in tasks):
        return None
    return ProcessPool(settings.process_pool_size or usable_cpus())


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), lowered to its cgroup's CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2, not 64)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, quota)
    return max(1, n)


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPU quota of this process's cgroup rounded up, None where none is set."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        if quota != "max":
            return math.ceil(int(quota) / int(period))
        return None
    with contextlib.suppress(OSError, ValueError):  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota_us > 0 and period_us > 0:
            return math.ceil(quota_us / period_us)
    return None


# --- the child's side --------------------------------------------------------------------


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SegueError(
            f"a process task must be a function at the top level of a module the worker's "
            f"processes can import; {module}.{qualname} is not: {exc}"
        ) from exc
    fn = getattr(obj, "fn", obj)  # the Task that @app.task put in the function's place
    assert callable(fn)
    return fn  # type: ignore[no-any-return]


def _error(exc: BaseException) -> bytes:
    return json.dumps(
        {
            "type": type(exc).__qualname__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "fail": exc.reason if isinstance(exc, Fail) else None,
            "retry": isinstance(exc, Retry),
            "retry_delay": exc.delay if isinstance(exc, Retry) else None,
        }
    ).encode()


def _serve(reader: Any, writer: Any) -> None:
    from segue._task import _hints

    decoders: dict[tuple[str, str], tuple[Callable[..., Any], ArgsDecoder]] = {}
    while True:
        head = reader.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return  # the worker closed the pipe: the pool is closing
        n_header, n_payload, n_input = _REQUEST.unpack(head)
        header = json.loads(reader.read(n_header))
        payload = reader.read(n_payload)
        first = None if n_input == _NO_INPUT else reader.read(n_input)
        key = (header["module"], header["qualname"])
        try:
            if key not in decoders:
                fn = _resolve(*key)
                decoders[key] = (fn, ArgsDecoder(fn, _hints(fn), False))
            fn, decoder = decoders[key]
            args, kwargs = decoder.decode(payload, first=first)
            value = fn(*args, **kwargs)
            body = encode(
                value,
                what=f"the result of {key[0]}.{key[1]}",
                limit=header["limit"],
                setting="max_result_bytes",
            )
            kind = 0
        except Exception as exc:
            body, kind = _error(exc), 1
        writer.write(_REPLY.pack(kind, len(body)) + body)
        writer.flush()


def main() -> None:
    """The child: answer requests on stdin until it closes."""
    # a Ctrl-C at the terminal is the worker's to handle (it requeues, then kills us)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":  # a SIGKILLed worker takes its task processes with it
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    sys.path[:] = json.loads(os.environ.get(_PATH_ENV, "[]")) or sys.path
    # the protocol keeps the real stdout; the task's prints go to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
