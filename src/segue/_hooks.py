"""Hooks: typed extension points around enqueue and around each run of a task.

Subclass `Hook`, override the methods you need (each is a no-op by default) and add it with
`app.add_hook(hook)`. Hooks run in the order they were added; the `after_*`/`on_*` ones in
that same order too, so a hook that sets something up in `before_run` sees its own
`after_run` after the hooks added before it. An exception raised by a hook is logged on the
`segue.hooks` logger and never changes what happens to the task: a metrics or alerting hook
that breaks must not fail work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from segue._context import Context
    from segue._handle import TaskHandle
    from segue._task import Signature

log = logging.getLogger("segue.hooks")

RunEnd = Literal[
    "succeeded", "failed", "retrying", "suspended", "paused", "cancelled", "waiting", "stopped"
]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one run ended, as `after_run` sees it.

    `end`: succeeded, failed (for good), retrying, suspended (raised Pause), paused or
    cancelled (by an operator), waiting (for sub-tasks), stopped (the worker stopped it:
    shutdown, lost lease). `value` when it succeeded; `error` when it raised; `retry_in`
    seconds when a retry follows. It is the worker's view, before the server applies it: a
    Pause past `max_pauses`, which the server ends FAILED `pause_limit`, is `suspended` here.
    """

    end: RunEnd
    value: Any = None
    error: BaseException | None = None
    retry_in: float | None = None


class Hook:
    """Base class of hooks; every method is a no-op until overridden."""

    async def before_enqueue(self, signature: Signature[Any]) -> None:
        """Before a task is enqueued (also for each of `enqueue_many`)."""

    async def after_enqueue(self, signature: Signature[Any], handle: TaskHandle[Any]) -> None:
        """After the server accepted it."""

    async def before_run(self, ctx: Context) -> None:
        """In the worker, just before the task's function is called, in the same asyncio
        task (context variables set here are seen by the function, sync ones included)."""

    async def after_run(self, ctx: Context, result: RunResult) -> None:
        """After every run, however it ended."""

    async def on_failure(self, ctx: Context, error: BaseException, will_retry: bool) -> None:
        """A run raised (any exception but Pause); `will_retry` says if another try follows."""

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        """A failed run will be tried again after `delay` seconds."""

    async def on_final_failure(self, ctx: Context, error: BaseException) -> None:
        """The task failed for good: no try is left, or it raised Fail."""

    async def on_repair(self, queue: str, kind: str, task_id: str) -> None:
        """A worker's reconciler repaired a disagreement between a task's record and the
        queue's structures (`kind`, e.g. `running_without_lease`; see the Production page)."""

    async def on_rollback(self, queue: str) -> None:
        """A worker found the queue's generation marker gone back: the server's data went
        back in time (a restore from an older copy, or lost writes)."""


async def call_hooks(hooks: Sequence[Hook], method: str, *args: Any) -> None:
    for hook in hooks:
        try:
            await getattr(hook, method)(*args)
        except Exception:
            log.exception("hook %r failed in %s (ignored)", hook, method)


async def after_run(hooks: Sequence[Hook], ctx: Context, result: RunResult) -> None:
    """The failure hooks that apply, then after_run."""
    if result.error is not None and result.end in ("failed", "retrying"):
        await call_hooks(hooks, "on_failure", ctx, result.error, result.end == "retrying")
        if result.end == "retrying":
            await call_hooks(hooks, "on_retry", ctx, result.error, result.retry_in or 0.0)
        else:
            await call_hooks(hooks, "on_final_failure", ctx, result.error)
    await call_hooks(hooks, "after_run", ctx, result)
