"""The one clock seam: local durations are monotonic; leases and due times are server time.

Server time is read inside the Lua scripts (`TIME`), so no worker's wall clock decides a
lease or a due time. `SEGUE_TEST_CLOCK_OFFSET_S` shifts this process's wall clock, for
clock-skew tests only.
"""

from __future__ import annotations

import os
import time

_OFFSET = float(os.environ.get("SEGUE_TEST_CLOCK_OFFSET_S", "0") or 0)


def monotonic() -> float:
    return time.monotonic()


def wall() -> float:
    """Seconds since the epoch on this machine's clock (plus the test offset)."""
    return time.time() + _OFFSET
