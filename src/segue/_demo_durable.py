"""The demo's durable function: an order in five journaled steps, run by a worker process
that is SIGKILLed mid-way; a worker in the demo's own process takes it over once the lease
lapses and finishes it from the step journal, without running a recorded step again and
without spending a try. Then a refund that waits for a person's approval (a signal):
WAITING without a worker slot until the demo approves it.

`app` is module level so that `python -m segue worker segue._demo_durable:app` runs it; that
process attaches to the demo's embedded server (the same project directory).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from segue._app import App
from segue._context import Context  # noqa: TC001 (the task's ctx parameter, read at runtime)
from segue._state import TaskStatus

if TYPE_CHECKING:
    from rich.console import Console

QUEUE = "demo-durable"
STEPS = ("reserve", "charge", "pack", "ship", "notify")
STEP_SECONDS = 0.4
LEASE_SECONDS = 2.0

app = App("demo-durable", queue=QUEUE, lease_seconds=LEASE_SECONDS, poll_seconds=0.2)


def _effect(step: str, order_id: str) -> str:
    time.sleep(STEP_SECONDS)  # the call to the payment service, the carrier, ...
    return f"{step} {order_id} at {time.strftime('%H:%M:%S')} by pid {os.getpid()}"


@app.task(name="demo.order")
async def order(ctx: Context, order_id: str) -> list[str]:
    return [await ctx.step(step, _effect, step, order_id) for step in STEPS]


@app.task(name="demo.refund")
async def refund(ctx: Context, order_id: str) -> str:
    decision = await ctx.wait_signal("approval", timeout=3600, default={"by": None})
    who = decision.get("by")
    return f"refund of {order_id} approved by {who}" if who else f"refund of {order_id} expired"


async def show_signal(console: Console) -> None:
    """A refund waits for approval without holding a slot; the demo sends the signal."""
    async with app:
        worker = app.worker(concurrency=1)
        running = asyncio.create_task(worker.run())
        try:
            h = await refund.enqueue("o-1")
            await h.wait_for(TaskStatus.WAITING, timeout=30)
            info = await h.info()
            console.print(
                f"signal: demo.refund is {info.status} for {info.waiting_for}, holding no "
                f'worker slot; sending it (segue signal {h.id} approval \'{{"by": "ana"}}\')'
            )
            await h.signal("approval", {"by": "ana"})
            console.print(f"  {await h.result(timeout=30)}")
        finally:
            worker.stop()
            await running


async def show(console: Console, kill_after: int = 2) -> None:
    """Run one order: a worker process does the first steps and is SIGKILLed, a worker
    here finishes it."""
    env = {**os.environ, "SEGUE_QUEUE": QUEUE, "SEGUE_LEASE_SECONDS": str(LEASE_SECONDS)}
    command = [sys.executable, "-m", "segue", "worker", "segue._demo_durable:app"]
    command += ["--concurrency", "1", "--log-level", "warning"]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        async with app:
            h = await order.enqueue("o-1")
            async with asyncio.timeout(60):
                while len((await h.info()).steps) < kill_after:
                    await asyncio.sleep(0.05)
            proc.kill()
            await proc.wait()
            console.print(
                f"durable function: demo.order's worker process (pid {proc.pid}) was "
                f"[red]SIGKILLed[/red] after {kill_after} of its {len(STEPS)} steps"
            )
            worker = app.worker(concurrency=1)
            running = asyncio.create_task(worker.run())
            try:
                done = await h.result(timeout=60)
            finally:
                worker.stop()
                await running
            info = await h.info()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for line in done:
        console.print(f"  {line}")
    names = ", ".join(s.name for s in info.steps)
    console.print(
        f"demo.order finished by this process after the lease lapsed: each step ran once "
        f"(journal: {names}), tries: {info.tries}"
    )
    await show_signal(console)
