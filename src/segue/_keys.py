"""Every Redis key and channel name, built here and nowhere else.

Keys are `<prefix>:{<queue>}:<kind>[:<id>]`: the `{queue}` hash tag puts all keys of one
queue in one Cluster slot, so each script touches one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from segue._errors import ConfigurationError

PRIORITIES = ("high", "normal", "low")


def check_queue_name(queue: str) -> str:
    if not queue or any(c in queue for c in ":{} \t\n"):
        raise ConfigurationError(
            f"queue name {queue!r} must be non-empty and contain no ':', '{{', '}}' or spaces"
        )
    return queue


def queue_of(task_id: str) -> str:
    """The queue a task id belongs to: ids are `<queue>:<unique part>`."""
    queue, sep, rest = task_id.partition(":")
    if not sep or not rest or not queue:
        raise ConfigurationError(f"{task_id!r} is not a segue task id (expected '<queue>:<id>')")
    return queue


@dataclass(frozen=True)
class Keyspace:
    """Key names of one queue under one prefix."""

    prefix: str
    queue: str

    @cached_property
    def base(self) -> str:
        """The per-queue key prefix that scripts extend with per-task parts."""
        return f"{self.prefix}:{{{self.queue}}}:"

    def key(self, *parts: str) -> str:
        return self.base + ":".join(parts)

    def task(self, task_id: str) -> str:
        return self.base + "task:" + task_id

    def workflow(self, wf_id: str) -> str:
        return self.base + "wf:" + wf_id

    def state(self, task_id: str) -> str:
        return self.base + "state:" + task_id

    def blob(self, task_id: str, name: str) -> str:
        """An offloaded value's chunk hash (lib/blobs.lua, _offload.py)."""
        return self.base + "blob:" + task_id + ":" + name

    def output(self, task_id: str) -> str:
        """A task's output stream (ctx.stream; stream.lua, end_task's end marker)."""
        return self.base + "out:" + task_id

    def signals(self, task_id: str) -> str:
        """A task's buffered signals (lib/signals.lua)."""
        return self.base + "sig:" + task_id

    def signal_ids(self, task_id: str) -> str:
        """The ids of the signals a task accepted (a resend of one changes nothing)."""
        return self.base + "sgi:" + task_id

    def claim(self, token: str) -> str:
        """What a worker's claim leased, kept for a replay of that claim (claim.lua)."""
        return self.base + "claim:" + token

    @cached_property
    def pending(self) -> tuple[str, str, str]:
        """The queued lists, highest priority first."""
        return (self.key("q", "high"), self.key("q", "normal"), self.key("q", "low"))

    @cached_property
    def enqueue_keys(self) -> list[str]:
        """KEYS of enqueue.lua, built once."""
        return [*self.pending, self.scheduled, self.wake, self.events, self.waiting, self.paused]

    @cached_property
    def claim_keys(self) -> list[str]:
        """KEYS of claim.lua."""
        queue_keys = [self.scheduled, self.leases, self.wake, self.meta, self.dead]
        tail = [self.paused, *self.limits, self.waiting, self.events, self.signal_due]
        return [*self.pending, *queue_keys, *self.done, *tail]

    @cached_property
    def finish_keys(self) -> list[str]:
        """KEYS of finish.lua."""
        queue_keys = [self.scheduled, self.leases, self.wake, self.dead]
        return [*self.pending, *queue_keys, *self.done, self.paused, self.waiting, self.events]

    @cached_property
    def graph_keys(self) -> list[str]:
        """KEYS of graph.lua."""
        tail = [self.paused, self.waiting, self.events]
        return [*self.pending, self.scheduled, self.wake, *self.done, *tail]

    @cached_property
    def purge_keys(self) -> list[str]:
        """KEYS of purge.lua."""
        tail = [self.paused, self.waiting, self.events]
        return [*self.pending, self.scheduled, self.wake, *self.done, *tail]

    @cached_property
    def retry_keys(self) -> list[str]:
        """KEYS of retry.lua."""
        return [*self.pending, self.wake, *self.done, self.dead]

    @cached_property
    def limits(self) -> tuple[str, str]:
        """Rate limits and concurrency limits of task names in this queue (hashes)."""
        return (self.key("limits", "rate"), self.key("limits", "concurrency"))

    @cached_property
    def keyed_limits(self) -> str:
        """Keyed limits by limit name: "<concurrency> <tokens per ms> <burst> <weight>"."""
        return self.key("limits", "keyed")

    @cached_property
    def sent_lanes(self) -> str:
        """The lane of a task sent by name, by task name (LimitTables.lanes, enqueue.lua)."""
        return self.key("limits", "lanes")

    @cached_property
    def weights(self) -> str:
        """Per-key weights set at run time (Queue.set_weight): key -> weight."""
        return self.key("kweight")

    def lane_key(self, kind: str, lane: str) -> str:
        """A per-lane key of claim.lua (krun, kbucket, kpark; lib/lanes.lua)."""
        return f"{self.base}{kind}:{lane}"

    @cached_property
    def control_keys(self) -> list[str]:
        """KEYS of control.lua."""
        queue_keys = [self.scheduled, self.leases, self.wake, self.control_channel]
        return [*self.pending, *queue_keys, *self.done, self.paused, self.waiting, self.events]

    @cached_property
    def reconcile_keys(self) -> list[str]:
        """KEYS of reconcile.lua."""
        return [
            *self.pending,
            self.scheduled,
            self.leases,
            self.paused,
            self.waiting,
            self.wake,
            self.signal_due,
        ]

    @cached_property
    def signal_keys(self) -> list[str]:
        """KEYS of signal.lua."""
        return [*self.pending, self.wake, self.waiting, self.signal_due, self.events, self.paused]

    @cached_property
    def signal_wait_keys(self) -> list[str]:
        """KEYS of signal_wait.lua."""
        return [*self.control_keys, self.signal_due]

    @cached_property
    def generation(self) -> str:
        """The queue's generation marker: each worker's count of maintenance cycles (a hash
        that workers advance and remember, so a count going back reveals a rollback)."""
        return self.key("gen")

    @cached_property
    def scheduled(self) -> str:
        return self.key("sched")

    @cached_property
    def leases(self) -> str:
        return self.key("leases")

    @cached_property
    def wake(self) -> str:
        return self.key("wake")

    @cached_property
    def meta(self) -> str:
        return self.key("meta")

    @cached_property
    def paused(self) -> str:
        """Index of operator-paused tasks (held until resumed), scored by pause time."""
        return self.key("paused")

    @cached_property
    def waiting(self) -> str:
        """Index of tasks waiting for others (after=, workflow steps, sub-task waits)."""
        return self.key("waiting")

    @cached_property
    def signal_due(self) -> str:
        """Deadlines of the tasks waiting for a signal (ctx.wait_signal with a timeout)."""
        return self.key("sigdue")

    @cached_property
    def events(self) -> str:
        """The queue's capped stream of lifecycle, progress and custom events."""
        return self.key("events")

    @cached_property
    def outbox(self) -> str:
        """What this queue's task ends mean for tasks of other queues: JSON entries that
        workers move to those queues (_forward.py)."""
        return self.key("outbox")

    @cached_property
    def dead(self) -> str:
        return self.key("dead")

    @cached_property
    def stats(self) -> str:
        """Counters that outlive task records (a hash written by the scripts: runs started,
        runs retried, tasks ended by status; see _lib.lua count_stat)."""
        return self.key("stats")

    @cached_property
    def hist(self) -> str:
        """Tasks ended succeeded or failed per 5-minute step, a ring of 25 hours (a hash)."""
        return self.key("hist")

    @cached_property
    def workflows(self) -> str:
        """Index of the workflows whose record lives on this queue, scored by creation."""
        return self.key("workflows")

    @cached_property
    def done(self) -> tuple[str, str, str, str]:
        """Indexes of ended tasks by final status, scored by record expiry."""
        return (
            self.key("done", "succeeded"),
            self.key("done", "failed"),
            self.key("done", "cancelled"),
            self.key("done", "expired"),
        )

    @cached_property
    def control_channel(self) -> str:
        """Sharded pub/sub channel carrying pause and cancel requests to workers."""
        return self.key("control")

    @cached_property
    def done_channel(self) -> str:
        """Sharded pub/sub channel announcing ids of tasks that just ended (the channel the
        previous release's result() waits on; scripts publish on both)."""
        return self.key("ended")

    @cached_property
    def outcome_channel(self) -> str:
        """Sharded pub/sub channel announcing each task that just ended: its id, then for a
        success whose result is at most 4,096 bytes (OUTCOME_INLINE in lib/finalize.lua) a
        NUL and the result. Scripts name it `<done channel>:out` (lib/finalize.lua)."""
        return self.key("ended", "out")

    def reply_channel(self, client: str) -> str:
        """Sharded pub/sub channel carrying the answers to one client's queries."""
        return self.key("replies", client)


def queues_key(prefix: str) -> str:
    """The set of known queue names (its own slot: written once per process and queue)."""
    return f"{prefix}:queues"


def dashboard_sessions_key(prefix: str) -> str:
    """The dashboards' session generation (an integer a sign-out increments: every session
    cookie carries the generation it was issued in)."""
    return f"{prefix}:{{dashboard}}:sessions"


@dataclass(frozen=True)
class CronKeys:
    """Key names of the cron schedules under one prefix: `<prefix>:{cron}:<kind>`.

    All schedules share the `{cron}` hash tag (one Cluster slot), apart from every queue: a
    tick's enqueue into its queue is a separate, idempotent step (see _scheduler.py).
    """

    prefix: str

    @cached_property
    def base(self) -> str:
        return f"{self.prefix}:{{cron}}:"

    @cached_property
    def defs(self) -> str:
        """Hash: schedule id → definition (JSON)."""
        return self.base + "defs"

    @cached_property
    def due(self) -> str:
        """Zset: schedule id → its next tick (server ms)."""
        return self.base + "due"

    @cached_property
    def firing(self) -> str:
        """Zset: schedule id → expiry (ms) of the lease a worker holds while it fires a tick."""
        return self.base + "firing"

    @cached_property
    def fired(self) -> str:
        """Hash: schedule id → the last tick fired (ms)."""
        return self.base + "fired"

    @cached_property
    def all(self) -> list[str]:
        return [self.defs, self.due, self.firing, self.fired]

    @cached_property
    def paused(self) -> str:
        """Hash: schedule id -> when it was paused (ms); a paused schedule skips its ticks."""
        return self.base + "paused"

    @cached_property
    def skipped(self) -> str:
        """Hash: schedule id -> the last tick skipped while paused (ms)."""
        return self.base + "skipped"

    @cached_property
    def overlapped(self) -> str:
        """Hash: schedule id -> the last tick a unique schedule skipped because its previous
        run was still going (ms)."""
        return self.base + "overlapped"


@dataclass(frozen=True)
class WorkerKeys:
    """Keys of the worker registry (heartbeats), under their own `{workers}` hash tag: the
    whole registry is one Cluster slot, apart from every queue's, so beat.lua touches one."""

    prefix: str

    @cached_property
    def base(self) -> str:
        return f"{self.prefix}:{{workers}}:"

    @cached_property
    def index(self) -> str:
        """Worker ids scored by their last beat (server ms)."""
        return self.base + "index"

    @cached_property
    def record_prefix(self) -> str:
        """beat.lua builds the records of workers it prunes from this prefix."""
        return self.base + "w:"

    def record(self, worker_id: str) -> str:
        """One worker's record (a hash that expires a few beats after the last)."""
        return self.record_prefix + worker_id
