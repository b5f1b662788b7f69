"""An App for `segue check` tests: configured from SEGUE_* variables by the test."""

from __future__ import annotations

import os
import time

from segue import App

app = App("health")


@app.task(name="health.wedge")
async def wedge(release_file: str) -> str:
    """Blocks the worker's event loop (a sync wait inside async code, the bug a liveness
    probe must catch) until the test creates `release_file`."""
    while not os.path.exists(release_file):  # noqa: ASYNC240 - blocking on purpose
        time.sleep(0.01)  # noqa: ASYNC251
    return "released"
