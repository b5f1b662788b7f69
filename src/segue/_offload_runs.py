"""A run's payloads by reference (issue 21): its offloaded arguments (and a workflow step's
offloaded input) read before it starts, and its result put in the payload store when over
Settings.offload_bytes, before the outcome names it (_offload.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segue._blobs import REF_HEAD, is_ref
from segue._errors import BrokerError
from segue._offload import offloads, put, resolve
from segue._outcome import Failed, Outcome, Requeued, Succeeded
from segue._runner import _message, attempt

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from segue._hooks import Hook
    from segue._procpool import ProcessPool
    from segue._runner import Job
    from segue._settings import Settings
    from segue._task import Task
    from segue._transport import Transport


_HEAD = len(REF_HEAD)


def by_reference(payload: bytes, given: bytes | None) -> bool:
    """Whether a run's arguments or its workflow input name offloaded values."""
    # hot (once per run): the test of is_ref inline, for bytes, calls nothing
    return payload[:_HEAD] == REF_HEAD or (given is not None and REF_HEAD in given)


async def attempt_by_reference(
    transport: Transport,
    job: Job,
    task: Task[Any, Any] | None,
    settings: Settings,
    worker_id: str,
    executor: Executor,
    hooks: Sequence[Hook] = (),
    processes: ProcessPool | None = None,
) -> Outcome:
    """runner.attempt, with the run's offloaded values read and its big result put."""
    if job.unreadable is None and task is not None:
        try:
            if is_ref(job.payload):
                job.payload = await resolve(transport, job.payload)
            if job.input is not None and REF_HEAD in job.input:
                job.input = await resolve(transport, job.input)
        except KeyError:
            text = (
                f"the offloaded arguments of task {job.id} ({job.name}) are gone from the "
                "payload store (expired, or deleted)"
            )
            return Failed(_message("undecodable", text), "undecodable")
        except BrokerError:
            return Requeued("server unreachable")
    outcome = await attempt(job, task, settings, worker_id, executor, hooks, processes)
    if isinstance(outcome, Succeeded) and offloads(transport, len(outcome.result)):
        try:
            # named by the run's generation: a run that lost its lease writes elsewhere
            ref = await put(transport, job.id, f"result.{job.gen}", outcome.result)
        except BrokerError:
            return Requeued("server unreachable")
        outcome = Succeeded(ref)
    return outcome
