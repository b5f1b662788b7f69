"""An App whose task checkpoints with `Pause(state=...)`, for worker subprocesses.

Each step is appended to the ledger of tests/apps/durable.py (LEDGER_URL, LEDGER_KEY), so a
test counts the executions of every step. The fault point `before_pause` falls at a step
boundary where the run has done its steps and sent nothing of its checkpoint yet.
"""

from __future__ import annotations

from typing import Any

from segue import App, Context, Pause
from segue._faults import faultpoint
from tests.apps.durable import record


def register(app: App) -> Any:
    """Register the task on `app`: the workers' App below, or a test's own client App."""

    @app.task(name="pauses.paged", max_pauses=0)  # each Pause carries state: progress
    async def paged(ctx: Context, n: int, every: int) -> int:
        """`n` steps, `every` of them per run: the checkpoint rides on the Pause."""
        i: int = await ctx.state.get("next", 0)
        while i < n:
            record(ctx, str(i))
            i += 1
            if i % every == 0 and i < n:
                faultpoint("before_pause")
                raise Pause(state={"next": i})
        return i

    return paged


app = App("pauses")
paged = register(app)
