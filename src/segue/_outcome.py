"""What a run ends with, as the worker sends it to finish.lua: one struct per case (the
finish verb and its two fields), and what finish.lua answers for each."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import msgspec

# --- outcomes: what a run ends with, sent to finish.lua as (action, a, b) ----------------


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What a run of a task ended with. The subclasses are the cases; `action` is the
    finish.lua verb, and `argv()` its two fields."""

    action: ClassVar[str]

    def argv(self) -> tuple[Any, ...]:
        return ("", "")


class Succeeded(Outcome, frozen=True, gc=False):
    result: bytes
    action: ClassVar[str] = "ok"

    def argv(self) -> tuple[Any, Any]:
        return (self.result, "")


class Failed(Outcome, frozen=True, gc=False):
    error: bytes  # JSON {type, message, traceback, reason}
    reason: str
    action: ClassVar[str] = "fail"

    def argv(self) -> tuple[Any, Any]:
        return (self.error, self.reason)


class Retrying(Outcome, frozen=True, gc=False):
    error: bytes
    delay_ms: int
    action: ClassVar[str] = "retry"

    def argv(self) -> tuple[Any, Any]:
        return (self.error, self.delay_ms)


class Requeued(Outcome, frozen=True, gc=False):
    """The run stopped without ending, and no try is spent: back to the head of its list.
    `reason` says why ('' for a graceful shutdown)."""

    reason: str = ""
    action: ClassVar[str] = "requeue"

    def argv(self) -> tuple[Any, Any]:
        return (self.reason, "")


class Suspended(Outcome, frozen=True, gc=False):
    """The task raised Pause: no try spent; queued again after `delay_ms` (-1: at once)."""

    delay_ms: int
    action: ClassVar[str] = "suspend"

    def argv(self) -> tuple[Any, Any]:
        return (self.delay_ms, "")


class Slept(Outcome, frozen=True, gc=False):
    """A durable sleep (ctx.sleep) ended the run: SUSPENDED, no try spent, due again after
    `delay_ms`. A finish script that does not know the verb is never sent it: only a worker
    that has ctx.sleep sends it, with its own scripts."""

    delay_ms: int
    action: ClassVar[str] = "sleep"

    def argv(self) -> tuple[Any, Any]:
        return (self.delay_ms, "")


class PausedItself(Outcome, frozen=True, gc=False):
    """The task raised Pause: `state` (key, JSON value) merged into its ctx.state and the
    task suspended, in one step; no try spent. Counted toward `max_pauses` (-1: no limit)
    when the task recorded no progress since its last Pause, and then backed off."""

    delay_ms: int  # -1: queued again at once (unless backed off)
    max_pauses: int
    state: tuple[tuple[str, bytes], ...] = ()
    action: ClassVar[str] = "pause"

    def argv(self) -> tuple[Any, ...]:
        return (
            self.delay_ms,
            self.max_pauses,
            len(self.state),
            *(x for kv in self.state for x in kv),
        )


class Limited(Outcome, frozen=True, gc=False):
    """The task raised RateLimited: queued again without spending a try, and the budget of
    `lane` ('' for its own limit key, else its task name) held closed for `hold_ms`.
    Counted toward `max_pauses` (-1: no limit) as a Pause without progress is."""

    hold_ms: int
    max_pauses: int
    lane: str = ""
    action: ClassVar[str] = "limited"

    def argv(self) -> tuple[Any, ...]:
        return (self.hold_ms, self.max_pauses, self.lane)


class Paused(Outcome, frozen=True, gc=False):
    """An operator's pause was carried out: held until resumed, no try spent."""

    action: ClassVar[str] = "paused"


class Cancelled(Outcome, frozen=True, gc=False):
    """An operator's cancel was carried out."""

    action: ClassVar[str] = "cancelled"


class Released(Outcome, frozen=True, gc=False):
    """No worker here knows the task's name: back to the queue, no try spent, until it was
    released `max_releases` times or for `window_ms`."""

    max_releases: int
    window_ms: int
    action: ClassVar[str] = "release"

    def argv(self) -> tuple[Any, Any]:
        return (self.max_releases, self.window_ms)


class NewerVersion(Outcome, frozen=True, gc=False):
    """The task's record is of a newer version than this worker's code of it: back to the
    queue after a backoff (`base_ms` doubling to `max_ms`), no try spent, and never counted
    toward the unknown-task bound, however long the deploy takes. Only a worker that knows
    versions sends it, with its own finish script."""

    base_ms: int
    max_ms: int
    action: ClassVar[str] = "newer"

    def argv(self) -> tuple[Any, Any]:
        return (self.base_ms, self.max_ms)


class Waiting(Outcome, frozen=True, gc=False):
    """The task waits for its sub-tasks: wait.lua already made it WAITING and released its
    lease, so nothing is sent."""

    action: ClassVar[str] = "waiting"


class Finished(msgspec.Struct, frozen=True, gc=False):
    """One outcome to record: the run (task id, lease generation) and how it ended."""

    id: str
    gen: str
    outcome: Outcome

    def argv(self) -> tuple[Any, ...]:
        return (self.id, self.gen, self.outcome.action, *self.outcome.argv())


class FinishResult(enum.IntEnum):
    """finish.lua's reply for one outcome."""

    REJECTED = 0  # the lease was lost: another worker holds the task, or it ended
    APPLIED = 1
    FORWARD = 2  # applied, and it left outbox entries for other queues
    ALREADY = 3  # a success sent again after its first reply was lost: applied before
