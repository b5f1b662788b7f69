"""An App of saga steps for worker subprocesses (tests/integration/test_saga_processes.py).

Each step and compensation records its runs in the ledger of tests/apps/workflows.py, and
applies its effect idempotently: the effect's name goes to the list `<LEDGER_KEY>:effects`
only the first time (a marker key says it was done), in one atomic step, as the docs ask a
compensation to. A run killed after its effect and run again leaves the effect once.
"""

from __future__ import annotations

import os

from segue import App, Context
from tests.apps.workflows import _async_client, record, wait_gate

app = App("sagas")

# KEYS[1] the effect's marker, KEYS[2] the list of effects; ARGV[1] the effect
_ONCE = """
if redis.call('SET', KEYS[1], 1, 'NX') then redis.call('RPUSH', KEYS[2], ARGV[1]) end
"""


async def effect(name: str) -> None:
    key = os.environ["LEDGER_KEY"]
    await _async_client().eval(_ONCE, 2, f"{key}:done:{name}", f"{key}:effects", name)


@app.task(name="saga.reserve")
async def reserve(ctx: Context, order: str) -> str:
    record(ctx, "reserve")
    await effect("reserve")
    return f"hold-{order}"


@app.task(name="saga.charge")
async def charge(ctx: Context, hold: str, amount: int) -> str:
    record(ctx, "charge")
    await effect("charge")
    return f"payment-{amount}"


@app.task(name="saga.ship", max_tries=1)
async def ship(ctx: Context, payment: str) -> str:
    record(ctx, "ship")
    raise RuntimeError("no courier today")


@app.task(name="saga.notify")
async def notify(ctx: Context, parcel: str) -> None:
    record(ctx, "notify")


@app.task(name="saga.release")
async def release(ctx: Context, hold: str) -> None:
    record(ctx, "release")
    await effect(f"release {hold}")


@app.task(name="saga.refund", max_tries=5)
async def refund(ctx: Context, payment: str, gate: str = "") -> None:
    """Refunds, then waits for `gate` (if given): a worker killed there has done the effect
    but not ended the task, which then runs again."""
    record(ctx, "refund")
    await effect(f"refund {payment}")
    if gate:
        await wait_gate(gate)
