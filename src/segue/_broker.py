"""The Broker: every server operation of one App, by job in three modules.

The transport (_transport.py: clients, errors, the NOSCRIPT path), the read side
(_queries.py), and here the commands: enqueues, claims, finishes and operators' commands,
each sent as the call its script's wrapper (_calls.py) builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segue import _calls
from segue._errors import (
    DuplicateTask,
    InvalidTransition,
    ScriptError,
    SignalBufferFull,
    TaskNotFound,
)
from segue._faults import faultpoint
from segue._keys import dashboard_sessions_key, queues_key
from segue._queries import Queries
from segue._shardmap import ShardMap
from segue._shards import logical_queue, shard_count_of
from segue._transport import (
    Transport,
    _cluster_seeds,
    _safe,
    make_async_client,
    make_sync_client,
    map_errors,
    server_unreachable,
    while_migrating,
)
from segue._wire import GraphRecord
from segue._wire import ScriptErrorCode as Code
from segue._wire import text as _text

__all__ = [
    "Broker",
    "GraphRecord",
    "_cluster_seeds",
    "_safe",
    "make_async_client",
    "make_sync_client",
    "map_errors",
    "server_unreachable",
]

if TYPE_CHECKING:
    from collections.abc import Sequence

    from segue._calls import ScriptCall
    from segue._keys import CronKeys, Keyspace, WorkerKeys
    from segue._outcome import Finished
    from segue._settings import Settings
    from segue._wire import EnqueueSpec, GraphStep


CASCADE_BATCH = 200  # sub-tasks one cascade.lua call looks at: holds the server ~1 ms
CLIENT_CASCADE_STEPS = 10  # batches the process that sent a command walks itself


class Broker(Transport):
    """The connections of one App and every command it sends; `reads` is its read side.

    Broker is a Transport (the worker's claim and finish calls go straight to run_calls);
    the reads are a separate object over the same transport, handed alone to whoever only
    reads (CLI, dashboard, /metrics, handles)."""

    def __init__(
        self, settings: Settings, url: str, declared: dict[str, int] | None = None
    ) -> None:
        super().__init__(settings, url)
        self.reads = Queries(self)
        self.shards = ShardMap(self, {} if declared is None else declared)
        self._max_lens: dict[str, int] = {}

    def max_len_of(self, ks: Keyspace) -> int:
        """max_queue_length as one queue's scripts take it: a shard holds its share (the
        total divided by the count its name carries, rounded up)."""
        got = self._max_lens.get(ks.queue)
        if got is None:
            n = shard_count_of(ks.queue)
            got = self._max_lens[ks.queue] = -(-self.max_len // n) if self.max_len else 0
        return got

    def enqueue_call(self, ks: Keyspace, specs: Sequence[EnqueueSpec]) -> ScriptCall:
        """Create tasks (enqueue.lua); see _calls.parse_created for the reply."""
        return _calls.enqueue(ks, specs, self.max_len_of(ks))

    def debounce_call(
        self, ks: Keyspace, spec: EnqueueSpec, key: str, window_ms: int, max_wait_ms: int, edge: str
    ) -> ScriptCall:
        """One debounced enqueue (debounce.lua); see _calls.parse_debounced for the reply."""
        return _calls.debounce(ks, spec, self.max_len_of(ks), key, window_ms, max_wait_ms, edge)

    async def register_queue(self, queue: str) -> None:
        if queue in self._known_queues:
            return
        async with self.errors():
            # a shard is listed as its queue: the listing, the CLI and the dashboard show
            # queues, and find their shards from the queue's count (_shardmap.py)
            await self.client.sadd(queues_key(self.settings.prefix), logical_queue(queue))
        self._known_queues.add(queue)

    def forget_queue(self, queue: str) -> None:
        """Register `queue` again at its next register_queue (the set may have lost it)."""
        self._known_queues.discard(queue)

    def claim_call(
        self,
        ks: Keyspace,
        worker_id: str,
        want: int,
        token: str = "",
        answered: str = "",
        *,
        holds_last: bool = False,
    ) -> ScriptCall:
        """A claim of up to `want` tasks (see _calls.claim); _calls.parse_claim reads it."""
        return _calls.claim(
            ks, self.settings, worker_id, want, token, answered, holds_last=holds_last
        )

    def finish_call(
        self, ks: Keyspace, finished: Sequence[Finished], *, claim_follows: bool = False
    ) -> ScriptCall:
        """Record outcomes (see _calls.finish); _calls.parse_finish reads the reply."""
        cap = self.settings.dead_letter_cap
        return _calls.finish(ks, finished, cap, claim_follows=claim_follows)

    async def forget_claims(self, tokens: dict[Keyspace, str]) -> None:
        """Delete the replay records of claims (a stopping worker's last ones)."""
        async with self.errors():
            for ks, token in tokens.items():
                if token:
                    await self.client.delete(ks.claim(token))

    def control_call(self, ks: Keyspace, task_id: str, command: str, reason: str) -> ScriptCall:
        return _calls.control(ks, task_id, command, reason)

    async def control(self, ks: Keyspace, task_id: str, command: str, reason: str) -> str:
        """Apply pause|resume|cancel (control.lua); the status after it, as stored."""
        try:
            reply = await self.run_calls([_calls.control(ks, task_id, command, reason)])
        except ScriptError as exc:
            _raise_refusal(exc, "task", task_id, command)
            raise
        status, _, left_work = _calls.parse_control(reply[0])
        if left_work:
            # the command's cascade to sub-tasks is walked from here at once, a few batches;
            # what is left (a big tree), or all of it if this process stops, workers walk
            for _ in range(CLIENT_CASCADE_STEPS):
                _, markers = await self.cascade(ks)
                if not markers:
                    break
        return status

    def subtask_call(
        self, ks: Keyspace, spec: EnqueueSpec, parent: str, number: int, policy: str
    ) -> ScriptCall:
        """Create a sub-task of `parent` (subtask.lua); see _calls.parse_created for the reply."""
        return _calls.subtask(ks, spec, self.max_len_of(ks), parent, number, policy)

    async def cascade(self, ks: Keyspace, most: int = CASCADE_BATCH) -> tuple[int, int]:
        """Advance the queue's cascades to sub-tasks (cascade.lua): sub-tasks looked at,
        markers left. Safe to repeat, from any process."""
        reply = await self.run_calls([_calls.cascade(ks, most)], retry=True)
        seen, markers = _calls.parse_cascade(reply[0])
        if markers:
            # a batch is stored and the walk is not over: a process that dies here (a
            # client, a forwarder) leaves a marker that another process walks on from
            faultpoint("mid_cascade")
        return seen, markers

    async def send_query(
        self, ks: Keyspace, task_id: str, message: str
    ) -> tuple[str, int, str] | None:
        """Publish a query to the worker running the task, if one does (query.lua): the
        task's status, how many workers listen and the holder's id, or None when there is
        no record."""
        reply = await self.run_calls([_calls.query(ks, task_id, message)])
        return _calls.parse_query(reply[0])

    async def answer_query(self, channel: str, data: bytes) -> None:
        """Send a query's answer on the asker's reply channel."""
        async with self.errors():
            if self.fast is not None:
                await self.fast.execute("SPUBLISH", channel, data)
            else:
                await self.client.spublish(channel, data)

    def graph_call(
        self, ks: Keyspace, workflow: GraphRecord | None, steps: Sequence[GraphStep]
    ) -> ScriptCall:
        """Create tasks with dependencies, and a workflow's record on this queue when given
        (graph.lua)."""
        return _calls.graph(ks, workflow, steps, self.max_len_of(ks))

    def watch_call(self, ks: Keyspace, watches: Sequence[Any]) -> ScriptCall:
        """Tasks of other queues wait for tasks of this one (watch.lua, 4 fields each)."""
        return _calls.watch(ks, watches)

    async def forward(self, ks: Keyspace, entries: Sequence[bytes]) -> int:
        """Deliver outbox entries of other queues to this one (forward.lua); how many
        changed something. Safe to repeat."""
        return int((await self.run_calls([_calls.forward(ks, entries)], retry=True))[0])

    async def outbox_done(self, ks: Keyspace, entries: Sequence[bytes]) -> None:
        """Remove delivered entries from a queue's outbox (one copy of each)."""

        async def remove() -> None:
            pipe = self.client.pipeline(transaction=False)
            for entry in entries:
                pipe.lrem(ks.outbox, 1, entry)
            await pipe.execute()

        async with self.errors():
            await while_migrating(remove)

    async def wait_children(self, ks: Keyspace, parent: str, gen: str, children: list[str]) -> int:
        """-1: the run lost its task; 0: all ended; n: the parent now waits for n."""
        reply = await self.run_calls([_calls.wait(ks, parent, gen, children)])
        return int(reply[0])

    async def workflow_command(self, ks: Keyspace, wf_id: str, command: str, reason: str) -> str:
        try:
            reply = await self.run_calls([_calls.workflow(ks, wf_id, command, reason)])
        except ScriptError as exc:
            verb = "pause" if command == "pause_running" else command
            _raise_refusal(exc, "workflow", wf_id, verb)
            raise
        for _ in range(CLIENT_CASCADE_STEPS):  # its steps' sub-tasks, as for a task's command
            _, markers = await self.cascade(ks)
            if not markers:
                break
        return _text(reply[0])

    async def retry(self, ks: Keyspace, task_id: str, reason: str) -> str:
        """Queue a failed, cancelled or expired task again (retry.lua)."""
        try:
            reply = await self.run_calls([_calls.retry(ks, task_id, reason)])
        except ScriptError as exc:
            _raise_refusal(exc, "task", task_id, "retry")
            raise
        return _text(reply[0])

    async def task_event(
        self, ks: Keyspace, task_id: str, gen: str, kind: str, a: str, b: str, c: str = ""
    ) -> bool:
        call = _calls.event(ks, task_id, gen, kind, a, b, c)
        return bool((await self.run_calls([call]))[0])

    async def purge(self, ks: Keyspace, reason: str, include_sleeping: bool = False) -> int:
        """Cancel every task of the queue that waits to run; how many there were."""
        total = 0
        while True:
            call = _calls.purge(ks, 500, reason, include_sleeping)
            n = int((await self.run_calls([call]))[0])
            total += n
            if n < 500:
                return total

    async def trim_events(self, ks: Keyspace, older_than_ms: int) -> None:
        """Drop a queue's events older than the given server time (approximate trim)."""
        async with self.errors():
            await self.client.xtrim(ks.events, minid=older_than_ms, approximate=False)

    async def set_limits(
        self,
        ks: Keyspace,
        rates: dict[str, str],
        concurrency: dict[str, int],
        clear: tuple[list[str], list[str]],
        keyed: dict[str, str] | None = None,
        lanes: tuple[dict[str, str], list[str]] | None = None,
    ) -> None:
        """Publish the rate and concurrency limits of task names, and the keyed limits by
        limit name, for claim.lua to enforce; and the lanes of keyed task names, for
        enqueue.lua to place a task sent by name (with the names to forget)."""
        rate_key, conc_key = ks.limits
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            if keyed:
                pipe.hset(ks.keyed_limits, mapping=keyed)
            if lanes and lanes[0]:
                pipe.hset(ks.sent_lanes, mapping=lanes[0])
            if lanes and lanes[1]:
                pipe.hdel(ks.sent_lanes, *lanes[1])
            if rates:
                pipe.hset(rate_key, mapping=rates)
            if concurrency:
                pipe.hset(conc_key, mapping=concurrency)
            if clear[0]:
                pipe.hdel(rate_key, *clear[0])
            if clear[1]:
                pipe.hdel(conc_key, *clear[1])
            await pipe.execute()

    async def set_key_weight(self, ks: Keyspace, key: str, weight: int | None) -> None:
        async with self.errors():
            if weight is None:
                await self.client.hdel(ks.weights, key)
            else:
                await self.client.hset(ks.weights, key, str(weight))

    async def write_state(
        self, ks: Keyspace, task_id: str, gen: str, values: dict[str, bytes], deletes: list[str]
    ) -> bool:
        call = _calls.state(ks, task_id, gen, values, deletes)
        reply = await self.run_calls([call], retry=True)
        return bool(reply[0])

    async def migrate_state(
        self,
        ks: Keyspace,
        task_id: str,
        gen: str,
        versions: tuple[int, int],
        values: dict[str, bytes],
        deletes: list[str],
    ) -> bool:
        call = _calls.migrate(ks, task_id, gen, versions, values, deletes)
        reply = await self.run_calls([call], retry=True)
        return bool(reply[0])

    async def write_journal(
        self, ks: Keyspace, task_id: str, gen: str, field: str, entry: bytes, line: str
    ) -> bool:
        call = _calls.journal(ks, task_id, gen, field, entry, line)
        reply = await self.run_calls([call], retry=True)
        return bool(reply[0])

    async def signal(
        self, ks: Keyspace, task_id: str, name: str, data: bytes, signal_id: str
    ) -> tuple[str, str]:
        """Deliver a signal once per id (signal.lua): (delivered | buffered | duplicate,
        the task's status). Sent again after a dropped connection: the id makes it safe."""
        most = self.settings.max_pending_signals
        call = _calls.signal(ks, task_id, name, data, signal_id, most)
        try:
            reply = await self.run_calls([call], retry=True)
        except ScriptError as exc:
            if exc.code == Code.SIGNAL_BUFFER_FULL:
                raise SignalBufferFull(
                    f"cannot signal task {task_id} ({name!r}): it holds {most:,} signals not "
                    "yet taken by a wait (Settings.max_pending_signals)"
                ) from None
            _raise_refusal(exc, "task", task_id, "signal")
            raise
        return _calls.parse_signal(reply[0])

    async def wait_signal(
        self,
        ks: Keyspace,
        task_id: str,
        gen: str,
        name: str,
        field: str,
        deadline_ms: int,
        began_ms: int,
    ) -> tuple[int, bytes | None]:
        """A running task waits for a signal (signal_wait.lua): (-1 lost, 1 taken with its
        data, 2 timed out, 0 the run must stop)."""
        call = _calls.signal_wait(ks, task_id, gen, name, field, deadline_ms, began_ms)
        reply = (await self.run_calls([call], retry=True))[0]
        data = reply[1] if len(reply) > 1 else None
        if isinstance(data, str):
            data = data.encode()
        return int(reply[0]), data

    async def write_stream(
        self,
        ks: Keyspace,
        task_id: str,
        gen: str,
        tries: int,
        chunks: bytes,
        batch: int,
        resumed: bool,
    ) -> bool:
        """Append chunks (a JSON array) to a running task's output stream; False when the
        run no longer holds the task."""
        s = self.settings
        linger_ms = round(s.stream_linger_seconds * 1000)
        call = _calls.stream(
            ks, task_id, gen, tries, s.max_stream_entries, linger_ms, chunks, batch, resumed
        )
        reply = await self.run_calls([call], retry=True)
        return bool(reply[0])

    async def set_queue_paused(self, ks: Keyspace, paused: bool) -> None:
        async with self.errors():
            if paused:
                # `pr` first: a reshard's release (shards.lua) clears only a flag still
                # marked as its own, so this pause keeps the flag it sets
                await self.client.hdel(ks.meta, "pr")
                await self.client.hset(ks.meta, "paused", "1")
            else:
                await self.client.hdel(ks.meta, "paused", "pr")
                await self.client.lpush(ks.wake, 1)
                await self.client.ltrim(ks.wake, 0, 0)

    async def beat(
        self,
        wk: WorkerKeys,
        worker_id: str,
        ttl_ms: int,
        keep_ms: int,
        started_ms: int,
        fields: dict[str, str | int],
    ) -> tuple[int, int]:
        """Register or refresh a worker's record (beat.lua): (server now, started) in ms."""
        call = _calls.beat(wk, worker_id, ttl_ms, keep_ms, started_ms, fields)
        now, started = (await self.run_calls([call], retry=True))[0]
        return int(now), int(started)

    async def set_schedule_paused(self, ck: CronKeys, sid: str, paused: bool) -> bool:
        """Pause or resume a schedule; False when there is no such schedule."""
        async with self.errors():
            if not await self.client.hexists(ck.defs, sid):
                return False
            if paused:
                secs, _ = await self.client.time()
                await self.client.hsetnx(ck.paused, sid, int(secs) * 1000)
            else:
                await self.client.hdel(ck.paused, sid)
        return True

    async def forget_schedule_pause(self, ck: CronKeys, sid: str) -> None:
        """Drop a removed schedule's pause flag and last skipped tick."""
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(ck.paused, sid)
            pipe.hdel(ck.skipped, sid)
            pipe.hdel(ck.overlapped, sid)
            await pipe.execute()

    async def advance_session_generation(self) -> int:
        """End every dashboard session issued so far, in every dashboard of this server."""
        async with self.errors():
            return int(await self.client.incr(dashboard_sessions_key(self.settings.prefix)))

    async def unregister_worker(self, wk: WorkerKeys, worker_id: str) -> None:
        async with self.errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(wk.index, worker_id)
            pipe.delete(wk.record(worker_id))
            await pipe.execute()


def _not_found(kind: str, ident: str) -> TaskNotFound:
    return TaskNotFound(f"no {kind} {ident}: it never existed, or it ended and its record expired")


def _refused_in(exc: ScriptError) -> str:
    """The status named by a `SEGUE_INVALID_TRANSITION <status> <command>` reply."""
    return str(exc).rsplit(" ", 2)[-2]


def _raise_refusal(exc: ScriptError, kind: str, ident: str, verb: str) -> None:
    """Raise segue's error for a script's refusal of an operator's command on a task or
    workflow (the one place the script error codes become exceptions); return for any
    other error, which the caller raises as it is."""
    refusal = _refusal(exc, kind, ident, verb)
    if refusal is not None:
        raise refusal from None


def _refusal(exc: ScriptError, kind: str, ident: str, verb: str) -> Exception | None:
    if exc.code == Code.NOT_FOUND:
        return _not_found(kind, ident)
    if exc.code == Code.INVALID_TRANSITION:
        status = _refused_in(exc)
        if verb == "retry":
            return InvalidTransition(
                f"cannot retry task {ident}: it is {status} (only failed, cancelled or "
                "expired tasks are retried)",
                status,
                "retry",
            )
        return InvalidTransition(f"cannot {verb} {kind} {ident}: it is {status}", status, verb)
    if exc.code == Code.DUPLICATE:
        holder = str(exc).rsplit(" ", 1)[-1]
        return DuplicateTask(
            f"cannot retry task {ident}: it is unique and task {holder} is queued or running",
            holder,
        )
    if exc.code == Code.DEPENDENCY_ENDED:
        return InvalidTransition(
            f"cannot retry task {ident}: it ended because a task it depends on did, so it "
            "has no input to run with; retry that task, or its workflow's steps",
            "failed",
            "retry",
        )
    return None
