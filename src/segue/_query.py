"""Queries: asking a running task a question, answered by the worker that runs it.

The asker (`ask`, behind `handle.query` and `segue query`) sends the query through
query.lua, which publishes it on the queue's control channel only while the task is
RUNNING, naming the worker that holds it; that worker answers on the asker's reply channel
of the queue (_pubsub.QueryReplies), the others ignore it. Nothing is stored on the way: a
query changes nothing, so an answer lost to a reconnect is a QueryTimeout and the query can
simply be sent again.

The worker's side (`Answerer`) calls the handler that the run registered with
`ctx.on_query`, on the worker's event loop (also for sync tasks: the handler then runs
beside the task's thread, so it must be thread-safe), bounded by the asker's timeout. The
claim that made the task RUNNING and the query travel on different connections, so a query
may reach the holder before its claim's reply: the holder then waits for the run to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from typing import TYPE_CHECKING, Any

from segue._codec import decode_plain, encode
from segue._errors import (
    QueryFailed,
    QueryTimeout,
    TaskNotFound,
    TaskNotRunning,
    UnknownQuery,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from segue._broker import Broker
    from segue._keys import Keyspace

    # a run's query handlers, if this worker holds the task (by id), else None
    HandlersOf = Callable[[str], Mapping[str, Callable[..., Any]] | None]

log = logging.getLogger("segue.worker")
# how long the holder waits for a run whose claim's reply has not reached it yet; past it,
# the run has ended (or was never started here) and the asker is told at once
_START_WAIT = 1.0
_START_POLL = 0.005


def _not_running(task_id: str, status: str, name: str) -> TaskNotRunning:
    return TaskNotRunning(
        f"task {task_id} is {status}: no run holds it to answer query {name!r} "
        "(handle.state() reads what it stored)",
        status,
    )


async def ask(
    broker: Broker, ks: Keyspace, task_id: str, name: str, args: tuple[Any, ...], timeout: float
) -> Any:
    """The answer of the run holding `task_id` to query `name`; raises TaskNotRunning,
    QueryTimeout, UnknownQuery, QueryFailed or TaskNotFound."""
    replies = broker.query_replies()
    query_id = secrets.token_hex(8)
    body = [query_id, ks.reply_channel(replies.token), name, int(timeout * 1000), list(args)]
    message = encode(
        body, what=f"the arguments of query {name!r}", limit=broker.settings.max_payload_bytes
    )
    fut = await replies.expect(ks, query_id)
    try:
        sent = await broker.send_query(ks, task_id, message.decode())
        if sent is None:
            raise TaskNotFound(f"no task {task_id}: it never existed, or its record expired")
        status, listening, worker = sent
        if status != "running":
            raise _not_running(task_id, status, name)
        if listening == 0:
            raise QueryTimeout(
                f"task {task_id} is running on worker {worker}, but no worker listens on queue "
                f"{ks.queue!r}: the task goes back to its queue when its lease runs out"
            )
        try:
            async with asyncio.timeout(timeout):
                answer = decode_plain(await fut)
        except TimeoutError:
            answer = {"gone": True, "timeout": True}
        if "gone" in answer:
            raw = await broker.reads.task_status(ks, task_id)
            if raw is not None and raw != b"running":
                # the run ended while the query was on its way
                raise _not_running(task_id, raw.decode(), name)
            if "timeout" in answer:
                raise QueryTimeout(
                    f"worker {worker}, holding task {task_id}, did not answer query {name!r} "
                    f"within {timeout:g} s: it died (its lease has not run out yet), is "
                    "stopped, or its event loop is blocked"
                )
            raise QueryTimeout(f"worker {worker} no longer runs task {task_id}: ask again")
    finally:
        replies.forget(query_id)
    if "v" in answer:
        return answer["v"]
    if "unknown" in answer:
        names: list[str] = answer["unknown"]
        have = ", ".join(repr(n) for n in names) if names else "none yet"
        raise UnknownQuery(
            f"task {task_id} has no query handler {name!r} (registered: {have})", names
        )
    exc_type, exc_message = answer["error"]
    raise QueryFailed(name, exc_type, exc_message)


class Answerer:
    """A worker's answers to the queries for the runs it holds (`handlers_of`)."""

    def __init__(self, broker: Broker, worker_id: str, handlers_of: HandlersOf) -> None:
        self._broker = broker
        self._worker_id = worker_id
        self._handlers_of = handlers_of
        self._answering: set[asyncio.Task[None]] = set()

    def on_message(self, rest: str) -> None:
        """A query heard on a control channel: `<task id> <holder's id> <JSON body>`."""
        task_id, _, rest = rest.partition(" ")
        holder, _, body = rest.partition(" ")
        if holder != self._worker_id:
            return  # another worker's run
        try:
            query_id, channel, name, timeout_ms, args = decode_plain(body.encode())
        except (ValueError, TypeError) as exc:
            log.warning("unreadable query for task %s dropped: %s", task_id, exc)
            return
        answering = asyncio.create_task(
            self._answer(task_id, query_id, channel, name, timeout_ms / 1000, args),
            name=f"segue-query-{task_id}",
        )
        self._answering.add(answering)
        answering.add_done_callback(self._answering.discard)

    async def _answer(
        self, task_id: str, query_id: str, channel: str, name: str, timeout: float, args: list[Any]
    ) -> None:
        what = f"the answer to query {name!r}"
        limit = self._broker.settings.max_payload_bytes
        loop = asyncio.get_running_loop()
        started = loop.time()
        handlers = self._handlers_of(task_id)
        while handlers is None and loop.time() - started < min(timeout, _START_WAIT):
            await asyncio.sleep(_START_POLL)  # the claim's reply is on its way
            handlers = self._handlers_of(task_id)
        fn = None if handlers is None else handlers.get(name)
        if handlers is None:
            data = encode({"gone": True}, what=what, limit=limit)
        elif fn is None:
            data = encode({"unknown": sorted(handlers)}, what=what, limit=limit)
        else:
            try:
                # the asker gives up at its timeout: a handler stuck past it helps no one
                async with asyncio.timeout(max(timeout - (loop.time() - started), 0.001)):
                    value = fn(*args)
                    if inspect.isawaitable(value):
                        value = await value
                data = encode({"v": value}, what=what, limit=limit)
            except TimeoutError:
                return
            except Exception as exc:
                error = [type(exc).__name__, str(exc)[:2000]]
                data = encode({"error": error}, what=what, limit=limit)
        try:
            await self._broker.answer_query(channel, query_id.encode() + b" " + data)
        except Exception as exc:
            log.warning("answer to query %r of task %s not sent: %s", name, task_id, exc)

    async def close(self) -> None:
        for answering in list(self._answering):
            answering.cancel()
        for answering in list(self._answering):
            with contextlib.suppress(BaseException):
                await answering
