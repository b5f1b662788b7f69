"""Operator actions on many tasks or on schedules: delete an ended task, retry or delete
dead letters (all, or a selection), pause and resume a schedule, index a workflow.

Each acts through one script per task or schedule (the same atomic steps as one by one),
sent a batch per round trip; a bulk action walks its list a page at a time, so retrying a
dead-letter list of any length costs bounded memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segue import _calls
from segue._errors import DuplicateTask, InvalidTransition, ScriptError, TaskNotFound
from segue._offload import forget
from segue._wire import TaskField as F

if TYPE_CHECKING:
    from collections.abc import Iterable

    from segue._broker import Broker
    from segue._keys import CronKeys, Keyspace

_BATCH = 200


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def delete_task(broker: Broker, ks: Keyspace, task_id: str) -> str | None:
    """Delete an ended task's record; its final status, or None when it had none. Its
    values offloaded to a custom payload store are deleted from it too (the Redis chunk
    store's go with the record, in delete.lua)."""
    refs: list[bytes | None] = []
    if broker.settings.payload_store is not None:
        async with broker.errors():
            refs = await broker.client.hmget(ks.task(task_id), F.PAYLOAD, F.RESULT)
    call = _calls.delete(ks, task_id)
    try:
        reply = (await broker.run_calls([call], retry=True))[0]
    except ScriptError as exc:
        if exc.code == "SEGUE_INVALID_TRANSITION":
            status = str(exc).rsplit(" ", 2)[-2]
            raise InvalidTransition(
                f"cannot delete task {task_id}: it is {status} (only an ended task is "
                "deleted; cancel it first)",
                status,
                "delete",
            ) from None
        raise
    if reply != 0 and refs:
        await forget(broker, refs)
    return None if reply == 0 else _text(reply)


async def delete_dead(broker: Broker, ks: Keyspace, ids: Iterable[str] | None) -> int:
    """Delete dead letters: these ids (those among them that are dead letters), or all."""
    deleted = 0
    if ids is not None:
        wanted = [i for i in dict.fromkeys(ids) if i]
        for start in range(0, len(wanted), _BATCH):
            deleted += await _delete_batch(broker, ks, wanted[start : start + _BATCH])
        return deleted
    while True:
        page = await broker.reads.dead_ids(ks, 0, _BATCH)
        if not page:
            return deleted
        deleted += await _delete_batch(broker, ks, page)
        if await broker.reads.dead_ids(ks, 0, 1) == page[:1]:
            return deleted  # nothing of the page could go: stop rather than loop


async def _delete_batch(broker: Broker, ks: Keyspace, ids: list[str]) -> int:
    refs: list[list[bytes | None]] = []
    if broker.settings.payload_store is not None:
        # a custom store's values of these records: deleted from it once the records are
        async with broker.errors():
            pipe = broker.client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(ks.task(i), F.PAYLOAD, F.RESULT)
            refs = await pipe.execute()
    calls = [_calls.delete(ks, i) for i in ids]
    try:
        replies = await broker.run_calls(calls, retry=True)
        for row, reply in zip(refs, replies, strict=False):
            if reply != 0:
                await forget(broker, row)
    except ScriptError:
        # one of them has not ended (it was retried meanwhile): delete one by one
        replies = []
        for i in ids:
            try:
                replies.append(await delete_task(broker, ks, i))
            except InvalidTransition:
                replies.append(0)
    return sum(1 for r in replies if r not in (0, None))


async def retry_dead(
    broker: Broker, ks: Keyspace, ids: Iterable[str] | None, reason: str
) -> tuple[int, list[str]]:
    """Queue dead letters again: these ids, or all. (how many were queued, the errors of
    those that were refused: a unique task whose key is held, a dependency's failure)."""
    refused: list[str] = []
    queued = 0
    todo = [i for i in dict.fromkeys(ids) if i] if ids is not None else None
    skip: set[str] = set()
    while True:
        if todo is not None:
            page, todo = todo[:_BATCH], todo[_BATCH:]
        else:
            page = [
                i for i in await broker.reads.dead_ids(ks, 0, _BATCH + len(skip)) if i not in skip
            ]
        if not page:
            return queued, refused
        for task_id in page:
            try:
                await broker.retry(ks, task_id, reason)
            except (InvalidTransition, DuplicateTask, TaskNotFound) as exc:
                refused.append(str(exc))
                skip.add(task_id)
            else:
                queued += 1
        if todo is None and len(skip) >= _BATCH * 5:
            # a long list nothing of which can be retried: stop instead of walking it all
            return queued, refused


async def index_workflow(
    broker: Broker, ks: Keyspace, wf_id: str, shape: str, names: str = ""
) -> None:
    await broker.run_calls([_calls.wf_index(ks, wf_id, shape, names)], retry=True)


async def set_schedule_paused(broker: Broker, ck: CronKeys, sid: str, paused: bool) -> bool:
    """Pause or resume a schedule; False when there is no such schedule."""
    return await broker.set_schedule_paused(ck, sid, paused)


async def forget_schedule_pause(broker: Broker, ck: CronKeys, sid: str) -> None:
    """Drop a removed schedule's pause flag and last skipped tick."""
    await broker.forget_schedule_pause(ck, sid)
