"""Process tasks (`executor="process"`) for tests/integration/test_process_tasks.py."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from segue import App, Fail

app = App("cpu")


@app.task(name="cpu.total", executor="process")
def total(numbers: list[int], scale: int = 1) -> dict[str, int]:
    """Its value and the pid of the process that computed it."""
    return {"sum": sum(numbers) * scale, "pid": os.getpid()}


@app.task(name="cpu.loop")
async def loop() -> str:
    """The module of the worker's event loop class (uvloop's or asyncio's)."""
    return type(asyncio.get_running_loop()).__module__


@app.task(name="cpu.refuse", executor="process", max_tries=1)
def refuse(reason: str) -> None:
    raise Fail(reason)


@app.task(name="cpu.spin", executor="process", max_tries=1)
def spin(pid_file: str, seconds: float) -> None:
    """Busy for `seconds` (no await, no checkpoint), after writing its pid to `pid_file`."""
    Path(pid_file).write_text(str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
