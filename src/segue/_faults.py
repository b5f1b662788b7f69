"""Fault points for the fault-injection suite; no-ops unless SEGUE_FAULTPOINT is set.

`SEGUE_FAULTPOINT=<name>:<action>[,<name>:<action>...]`, action `kill` (SIGKILL this
process), `stall:<seconds>` (block the calling thread) or `raise`. With
`SEGUE_FAULTPOINT_ONCE=1` each point acts on its first hit only (a stall per task would
otherwise add up); with `SEGUE_FAULTPOINT_LOG=<file>` every hit of a named point is
appended there as `<pid> <name> <action>` before it acts, so a test knows it was reached.

The points (`POINTS`): after_claim and after_start_mark (a claim returned tasks, none
started), mid_checkpoint (a `ctx.state` write was stored, the run has not gone on),
after_effect_before_complete (the task returned, its outcome is not sent), after_complete_
before_ack (outcomes were recorded, the worker has not read the reply), during_requeue (a
graceful stop is about to requeue unfinished runs), after_pause_ack (a run stopped for an
operator's pause and the pause was recorded), during_cancel (a cancel request reached the
worker, the run is not stopped yet), cron_after_enqueue (a cron tick was enqueued, the
schedule not advanced). Reaping expired leases has no point: it happens inside the claim
script, one atomic step, so a crash falls before or after it (after_claim).

`SERVICE_POINTS` fail a worker's service instead, for the tests of its failure policy
(_services.py): lease_thread (each turn of the lease renewal thread, outside its retries)
and forwarder_pass (each pass of the forwarder service). The points reached only by one
feature are listed below, each with the fault test that uses them: STEP_POINTS (durable
steps), VERSION_POINTS (state migrations), STREAM_POINTS (output streams), CASCADE_POINTS
(the walk of a cascade to sub-tasks, in any process that walks: a client or a worker).
"""

from __future__ import annotations

import os
import signal
import time

POINTS = (
    "after_claim",
    "after_start_mark",
    "mid_checkpoint",
    "after_effect_before_complete",
    "after_complete_before_ack",
    "during_requeue",
    "after_pause_ack",
    "during_cancel",
    "cron_after_enqueue",
)
SERVICE_POINTS = ("lease_thread", "forwarder_pass")
# reached only by durable functions (ctx.step), so tests/faults/test_journal_crashes.py has
# them, not the matrix of POINTS: after_step_effect (a step's function returned or raised,
# its journal entry is not written) and after_journal_write (the entry was stored)
STEP_POINTS = ("after_step_effect", "after_journal_write")
# reached only by a run that migrates a task's state to its code's version (_migrate.py), so
# tests/faults/test_version_crashes.py has them: before_migrate (the state is read and
# upgraded in memory, nothing written) and after_migrate (state and version were written
# together, the task's code has not started)
VERSION_POINTS = ("before_migrate", "after_migrate")
# reached only by a task that streams output (ctx.stream), so tests/faults/
# test_stream_crashes.py has it: after_stream_write (a batch of chunks was stored, the run
# has not gone on)
STREAM_POINTS = ("after_stream_write",)
# reached only by the walk of a cascade to sub-tasks (Broker.cascade, from the process that
# sent the command and from workers' forwarders), so tests/faults/test_cascade_crashes.py
# has it: mid_cascade (a batch of the walk was stored, markers are left, the next batch is
# not sent)
CASCADE_POINTS = ("mid_cascade",)
# reached by ctx.wait_signal (tests/faults/test_signal_crashes.py): after_signal_taken (a
# buffered signal was taken and journaled in one script call, the run has not gone on)
SIGNAL_POINTS = ("after_signal_taken",)
# reached only with offload_bytes set, so tests/faults/test_offload_crashes.py has them:
# after_offload_put (an offloaded value's chunks were written, the record or the outcome
# that refers to them is not)
OFFLOAD_POINTS = ("after_offload_put",)
# reached only by a reshard (Shards.reshard, in the process that asks for it), so
# tests/faults/test_reshard_crashes.py has them: after_reshard_hold (the new shards are held
# paused, the count is not written) and after_reshard_count (the count is written, the new
# shards are not released)
RESHARD_POINTS = ("after_reshard_hold", "after_reshard_count")


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
_ONCE = os.environ.get("SEGUE_FAULTPOINT_ONCE") == "1"
_LOG = os.environ.get("SEGUE_FAULTPOINT_LOG")


def faultpoint(name: str) -> None:
    """Act on the named fault point if the environment asked for it."""
    if not _POINTS:
        return
    action = _POINTS.pop(name, None) if _ONCE else _POINTS.get(name)
    if action is None:
        return
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {name} {action}\n")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("stall:"):
        time.sleep(float(action.split(":", 1)[1]))
    elif action == "raise":
        raise FaultInjected(f"fault injected at {name}")
