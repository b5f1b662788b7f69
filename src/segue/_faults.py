"""Fault points for the fault-injection suite; no-ops unless SEGUE_FAULTPOINT is set.

`SEGUE_FAULTPOINT=<name>:<action>[,<name>:<action>...]`, action `kill` (SIGKILL this
process), `stall:<seconds>` (block the thread) or `raise`. Names: after_claim,
after_start_mark, mid_checkpoint, after_effect_before_complete, after_complete_before_ack,
during_requeue, during_reap, after_pause_ack, during_cancel, cron_after_enqueue.
"""

from __future__ import annotations

import os
import signal
import time


class FaultInjected(RuntimeError):
    """Raised at a fault point whose action is `raise`."""


def _parse(spec: str | None) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in (spec or "").split(","):
        name, sep, action = item.strip().partition(":")
        if name and sep:
            points[name] = action
    return points


_POINTS = _parse(os.environ.get("SEGUE_FAULTPOINT"))


def faultpoint(name: str) -> None:
    """Act on the named fault point if the environment asked for it."""
    if not _POINTS:
        return
    action = _POINTS.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("stall:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "raise":
        raise FaultInjected(f"fault injected at {name}")
