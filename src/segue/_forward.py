"""The forwarder: carries task ends across queues, for workflows and after= that span them.

Each script touches one queue's slot (one Cluster slot), so a task cannot reach its
dependants on another queue. Instead the script that ends it (finish.lua, or any other that
ends tasks) appends one entry per such dependant to its own queue's outbox, in the same
atomic step: who waits, at which input index, how the dependency ended and its result
(_scripts/lib/outbox.lua, push_cross). Workers move the entries of their queues' outboxes to the
dependant's queue with forward.lua, and remove an entry only after that call returned: an
entry is delivered at least once, and a repeated delivery changes nothing, because a task
counts a dependency only while its `x:<dependency>` field is still '0'.

A workflow spread over several queues is created by one graph.lua call per queue, so an
entry can arrive before its task exists: forward.lua then parks it beside the task-to-be
(early:<id>) and graph.lua applies it when it creates the task. A part whose last step
ended tells the main workflow record the same way (an entry of kind 'p').

Cost: one more server step per crossing, and up to `poll_seconds` of delay when the entry
came from another process than a worker of the queue (a worker that finished the task
forwards at once; an operator's cancel is forwarded at the next poll).

Cascades. A pause, resume or cancel of a task reaches the sub-tasks it started with
ctx.enqueue, and a task that ends FAILED or CANCELLED cancels its unfinished ones (those
of policy `on_parent_end="cancel"`, the default). A tree can be large and a script must stay
short, so the script that applies the command to the parent only leaves a marker (the
field <parent id> of the queue's hash `cascade`: command, next sub-task, reason; lib/
cascade.lua). The walk is then driven from the server's side: cascade.lua moves markers on
by at most `CASCADE_BATCH` sub-tasks per call, each sub-task reached that has sub-tasks gets
its own marker, and the forwarder calls it on every pass, as the process that sent the
command does a few times at once (Broker.control). A client that dies half-way leaves the
marker, which a worker finishes; a sub-task started while a walk goes on is reached by it,
one started after is marked by subtask.lua itself. Sub-tasks share their parent's queue
(ids '<parent id>.<n>'), so a whole tree is in one slot and no outbox is needed. A pause
records in each sub-task who paused it ('pc', the parent), and a resume resumes only those;
a parent that ends SUCCEEDED with sub-tasks its pause still holds resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from segue._durability import need_for
from segue._errors import BrokerError, ConfigurationError, ScriptError
from segue._faults import faultpoint
from segue._keys import queue_of
from segue._services import Service

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from segue._broker import Broker
    from segue._keys import Keyspace
    from segue._settings import Settings

log = logging.getLogger("segue.forward")

BATCH = 200  # outbox entries one pass of a queue reads


def _target(raw: bytes) -> str | None:
    """The queue an outbox entry goes to (None for an entry that cannot be read)."""
    try:
        entry = json.loads(raw)
        return queue_of(entry["d"] if entry["k"] in ("d", "c") else entry["w"])
    except (ValueError, KeyError, TypeError, ConfigurationError):
        return None


async def forward_queue(broker: Broker, ks: Keyspace) -> int:
    """Deliver the oldest entries of one queue's outbox; how many it moved."""
    raw = await broker.reads.outbox(ks, BATCH)
    if not raw:
        return 0
    by_target: dict[str, list[bytes]] = {}
    for entry in raw:
        target = _target(entry)
        if target is None:
            log.warning("dropping an unreadable outbox entry of queue %s: %r", ks.queue, entry)
            await broker.outbox_done(ks, [entry])
            continue
        by_target.setdefault(target, []).append(entry)
    for target, entries in by_target.items():
        try:
            await broker.forward(broker.keyspace(target), entries)
        except ScriptError:
            # the server refused the batch: deliver one by one, so that one entry it cannot
            # apply is set aside (logged) instead of blocking the outbox for ever
            entries = [e for e in entries if await _deliver_one(broker, ks, target, e)]
        await broker.outbox_done(ks, entries)  # only once delivered: at least once
    return len(raw)


async def _deliver_one(broker: Broker, ks: Keyspace, target: str, entry: bytes) -> bool:
    try:
        await broker.forward(broker.keyspace(target), [entry])
    except ScriptError as exc:
        log.error(
            "outbox entry of queue %s dropped, the server refused it (%s): %r", ks.queue, exc, entry
        )
        await broker.outbox_done(ks, [entry])
        return False
    return True


async def watch(
    broker: Broker, settings: Settings, watches: dict[str, list[Any]], levels: Collection[str]
) -> None:
    """Make tasks wait for tasks of other queues that already exist (after=): one watch.lua
    call per queue of dependencies (`watches`: queue → [dependency, waiting task, input
    index, workflow id, ...]); a dependency that already ended is forwarded at once."""
    need = need_for(levels, settings)
    for queue, items in watches.items():
        ks = broker.keyspace(queue)
        call = broker.watch_call(ks, items)
        if need is None:
            pushed = (await broker.run_calls([call], retry=True))[0]
        else:
            ids = tuple(items[i + 1] for i in range(0, len(items), 4))  # the waiting tasks
            pushed = (await broker.run_durable([call], need, ids))[0]
        if pushed:
            # delivered now rather than at a worker's next poll; a worker may deliver the
            # same entries too, which changes nothing
            await forward_queue(broker, ks)


async def forward_now(broker: Broker, queues: Sequence[str]) -> None:
    """Move what these queues' outboxes hold now (after a client's command)."""
    for queue in queues:
        ks = broker.keyspace(queue)
        while await forward_queue(broker, ks) >= BATCH:
            pass


class Forwarder(Service):
    """Moves the outbox entries of one worker's queues: at once after this worker's finish
    left some (poke), else every `interval` seconds (entries left by other processes)."""

    name = "forwarder"
    stop_wait = 5.0  # a pass under way ends first

    def __init__(self, broker: Broker, keyspaces: Sequence[Keyspace], interval: float) -> None:
        self._broker = broker
        self._keyspaces = list(keyspaces)
        self._interval = interval
        self._poked = asyncio.Event()
        self._stopping = False

    def add(self, keyspaces: Sequence[Keyspace]) -> None:
        """Serve these queues too (the new shards of a reshard)."""
        self._keyspaces.extend(keyspaces)

    @property
    def poked(self) -> bool:
        return self._poked.is_set()

    def poke(self) -> None:
        self._poked.set()

    async def run_once(self) -> int:
        """One pass over the queues' outboxes and cascades; how many entries it moved and
        sub-tasks it reached."""
        self._poked.clear()
        moved = 0
        for ks in self._keyspaces:
            moved += await forward_queue(self._broker, ks)
            moved += (await self._broker.cascade(ks))[0]
        return moved

    async def stop(self) -> None:
        self._stopping = True
        self._poked.set()

    async def run(self) -> None:
        while not self._stopping:
            faultpoint("forwarder_pass")
            try:
                moved = await self.run_once()
            except BrokerError as exc:
                log.warning("forwarding outbox entries failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if moved or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._poked.wait()
