"""The wire contract: every record field and every value that crosses to the scripts, named once.

What is stored on the server is a contract between versions (old and new workers run side by
side during a rolling deploy, each calling its own scripts by content hash): the codes below
are the stored ones and never change; only the Python names are free. A new field takes a
new code, and says how a worker that does not know it treats a record that has it.

The order of the fields of `EnqueueSpec` and `ClaimedRun` is the order of the scripts' ARGV
and reply (enqueue.lua, graph.lua, claim.lua): changing one enqueue field touches the spec
and the scripts, nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping


def text(value: Any) -> str:
    """A reply value as text: redis-py and the fast connection give bytes, or an int."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Code(str):
    """A stored field code; `.b` is its bytes, for reading records as redis-py returns them."""

    b: bytes

    def __new__(cls, code: str) -> Code:
        self = super().__new__(cls, code)
        self.b = code.encode()
        return self


class TaskField:
    """The fields of a task record, the hash `<prefix>:{<queue>}:task:<id>`."""

    NAME: Final = Code("n")
    PAYLOAD: Final = Code("p")  # the arguments, JSON [args, kwargs]
    STATUS: Final = Code("s")
    PRIORITY: Final = Code("q")  # high | normal | low
    TRIES: Final = Code("t")
    LOST_RUNS: Final = Code("d")  # consecutive leases that lapsed with no outcome
    GENERATION: Final = Code("g")  # lease generation: fences a stale run's writes
    MAX_TRIES: Final = Code("mt")
    TIMEOUT_MS: Final = Code("to")
    TTL_MS: Final = Code("ttl")  # how long the record outlives the task's end (-1 forever)
    ENQUEUED_AT: Final = Code("ce")
    # the last HISTORY_KEEP transitions, "<status>|<at ms>|<reason>\n" each: written by the
    # previous release, and still by its workers, beside HISTORY_COMPACT on a newer record
    HISTORY: Final = Code("h")
    # the same, compact (lib/transition.lua): "<letter><ms after ENQUEUED_AT>[|<reason>]\n"
    # each, the letters HISTORY_CODES': short enough for the server to keep the record in
    # its compact encoding. A reader merges both by time (history_lines)
    HISTORY_COMPACT: Final = Code("hc")
    HISTORY_TOTAL: Final = Code("hn")  # transitions ever recorded (absent: count the lines)
    DUE_AT: Final = Code("due")
    UNIQUE_KEY: Final = Code("uq")
    EXPIRES_AT: Final = Code("exp")
    HEADERS: Final = Code("hd")
    WORKER: Final = Code("w")
    STARTED_AT: Final = Code("st")  # the workflow record's "st" is its state: WorkflowField
    ENDED_AT: Final = Code("et")
    RESULT: Final = Code("r")
    ERROR: Final = Code("e")  # JSON {type, message, traceback, reason}
    CONTROL: Final = Code("ctl")  # an operator's pending pause | cancel of a running task
    CONTROL_REASON: Final = Code("ctlr")
    CONTROL_AT: Final = Code("ctlt")  # when the pending request was made
    WAITING_FOR: Final = Code("wait")  # how many dependencies are not done yet
    HOLD: Final = Code("hold")  # paused while waiting: PAUSED, not queued, when ready
    INPUT: Final = Code("in")  # a workflow step's value from the steps before it
    INPUT_MODE: Final = Code("im")  # '1' one previous result, 'l' the list of them
    INPUT_COUNT: Final = Code("nd")
    INPUT_PREFIX: Final = Code("i:")  # i:<n>: the n-th input, until assembled
    ON_FAILURE: Final = Code("of")  # fail | cancel, when a dependency does not pass
    OPTIONAL: Final = Code("opt")  # '1': its failure does not fail its dependants
    WORKFLOW: Final = Code("wf")
    CROSS_DEPENDANTS: Final = Code("xd")  # "<id>|<index>|<workflow or ->" on other queues
    CROSS_PREFIX: Final = Code("x:")  # x:<dependency id>: '0' pending, '1' resolved
    # counted in a concurrency set while it runs: '1' its name's (the previous release's
    # only value), '0<lane>' its key's, '1<lane>' both (lib/leases.lua)
    COUNTED_RUNNING: Final = Code("cn")
    RELEASES: Final = Code("rel")  # releases by workers that did not know its name
    FIRST_RELEASE_AT: Final = Code("rel0")
    PROGRESS: Final = Code("pg")  # "<done> <total>"
    PROGRESS_MESSAGE: Final = Code("pgm")
    # j:<n>: "<name>|<start ms>|<duration ms>|<1 ok, 0 error>|<error type>", the n-th
    # journaled step (journal.lua); a worker that does not know them leaves them alone
    STEP_PREFIX: Final = Code("j:")
    STEP_COUNT: Final = Code("jn")
    # the lease generation of the last run that wrote a journal entry: a lost run of that
    # generation made progress (claim.lua spends no try for it); old claim scripts ignore it
    PROGRESS_GEN: Final = Code("jp")
    # the generation of the run that ended in a durable sleep: SUSPENDED with it, the task
    # sleeps (purge.lua spares it); an old purge script does not read it and cancels it
    SLEEP_GEN: Final = Code("slp")
    # '1': the task recorded progress (a ctx.state write; a journal entry) since its last
    # Pause; that Pause clears it. Any script that records progress sets it.
    PROGRESSED: Final = Code("pw")
    PAUSES: Final = Code("np")  # Pauses in a row raised by runs that recorded no progress
    # "send mt to v": an enqueue by name (app.send), and the options it left to the worker's
    # definition of the task; the record's own mt/to/v hold defaults meanwhile. A worker that
    # does not know the field runs the task with those defaults (3 tries, no timeout, v1)
    FROM_WORKER: Final = Code("fw")
    # the output stream (stream.lua): the generation of the run that last wrote to it (a
    # later run writes a restart marker first), the entries it holds, its linger in ms after
    # the end. A task that never streamed has none; end_task reads them for its end marker
    STREAM_GEN: Final = Code("sg")
    STREAM_COUNT: Final = Code("sn")
    STREAM_LINGER_MS: Final = Code("sl")
    STREAM_BATCH: Final = Code("sb")  # the last batch number of run 'sg' (resends)
    # Cascades to sub-tasks (_forward.py, "Cascades"); old scripts neither write nor read them,
    # so a tree started by an old worker has no cascade, as before
    SUBTASKS: Final = Code("nk")  # the highest n of its sub-tasks '<id>.<n>'
    PARENT_END: Final = Code("ope")  # 'a': on_parent_end="abandon" (absent: cancel)
    PAUSED_BY: Final = Code("pc")  # the parent whose cascade paused it (resumed with it)
    CASCADED: Final = Code("cz")  # the last command sent down to its sub-tasks
    CASCADING: Final = Code("cw")  # '1' while that command's walk is under way
    # '1': a workflow step with a compensation: its end notes its result (if it succeeded)
    # in its queue's workflow record; a worker that does not know it notes nothing
    COMPENSABLE: Final = Code("cp")
    # a compensation task: "<workflow id>|<step number>"; its end is told to the workflow
    # (an outbox entry of kind 'k'); a worker that does not know it ends it as any task
    COMPENSATES: Final = Code("cof")
    # the task's code version (`@app.task(version=...)`): the enqueuer's at first, moved up
    # by migrate.lua together with the state it upgrades. Absent: version 1 (records from
    # before versions, and every version-1 task: create.lua writes it only when above 1).
    # A worker from before versions does not read it and runs the task as it is.
    VERSION: Final = Code("v")
    # the version the task started under, kept when migrate.lua moves VERSION (absent: the
    # record's VERSION is still it): ctx.version, so replays take the same branches
    STARTED_VERSION: Final = Code("v0")
    # releases by workers whose code of the task is older than its VERSION: never counted
    # toward the unknown-task bound (RELEASES), only their backoff grows with them
    VERSION_RELEASES: Final = Code("vrel")
    # A task WAITING for a signal (ctx.wait_signal, lib/signals.lua): the signal's name, the
    # journal field its outcome goes to, when the wait began and its deadline (ms; absent:
    # none; its entry is in the queue's `sigdue` zset, which only this release's claim
    # reads: while only old workers serve a queue, deadlines wait for a new one). An old
    # release's pause holds such a task ('hold') instead of pausing it: the signal that
    # wakes it then makes it PAUSED. An old worker never runs such a task's code.
    SIGNAL_WAIT: Final = Code("sgw")
    SIGNAL_JOURNAL: Final = Code("sgj")
    SIGNAL_WAIT_AT: Final = Code("sga")
    SIGNAL_DEADLINE: Final = Code("sgd")
    SIGNALS_DROPPED: Final = Code("sgx")  # signals still buffered when the task ended
    # woken by a signal or a deadline: the claim that runs it next hands the run its step
    # journal (and clears this); an old claim ignores it, and the run reads the journal
    SIGNAL_WOKEN: Final = Code("sgk")
    # the names of the task's blobs in the Redis chunk store (space-separated), whose
    # lifetime follows the record's (lib/blobs.lua); p, r or a state value then holds a
    # reference (_blobs.py). Scripts of a release before it leave the blobs kept when the
    # record ends or goes: the reconciler gives them the record's lifetime, or the pending TTL.
    OFFLOADED: Final = Code("off")
    # Flow control by key (lib/lanes.lua, docs/fairness.md): the lane the task waits in,
    # "<limit name>|<key>", or "|<task name>" for its name's own lane (a task its name's
    # limit held back). Scripts of the previous release do not read it.
    LANE: Final = Code("lk")
    # Debounce (debounce.lua): when the window of its debounce key opened, and that key
    DEBOUNCE_START: Final = Code("dbs")
    DEBOUNCE_KEY: Final = Code("dbk")


# After the name of a record that refers to an offloaded value (lib/states.lua NAME_MARK): a
# worker of an earlier release knows no task by that name and releases the task.
NAME_MARK: Final = "\x00offloaded"


def plain_name(name: str) -> str:
    """A record's task name without the mark of an offloaded value."""
    return name.partition(NAME_MARK)[0]


HISTORY_KEEP: Final = 200  # the transitions a record keeps (lib/transition.lua's HISTORY_KEEP)

# The letter of each status in a compact history (lib/states.lua's HISTORY_CODES)
HISTORY_CODES: Final = {
    "queued": "q",
    "scheduled": "d",
    "running": "r",
    "succeeded": "k",
    "failed": "f",
    "cancelled": "c",
    "waiting": "w",
    "suspended": "u",
    "paused": "p",
    "retrying": "y",
    "expired": "x",
    "compensating": "m",
}
_HISTORY_STATUS: Final = {code: status for status, code in HISTORY_CODES.items()}


def history_lines(
    long: bytes | None, compact: bytes | None, created_ms: int | None
) -> tuple[list[tuple[str, int, str]], int]:
    """A record's kept transitions as (status, at ms, reason), oldest first, and how many
    lines did not read: the long form `h` merged by time with the compact `hc`, whose times
    count from `created_ms` (ENQUEUED_AT). Both are there only on a record that a worker of
    the previous release moved after this release created it."""
    out: list[tuple[str, int, str]] = []
    bad = 0
    for line in (long or b"").decode(errors="replace").splitlines():
        status, _, rest = line.partition("|")
        at, _, reason = rest.partition("|")
        try:
            out.append((status, int(at), reason))
        except ValueError:
            bad += 1
    if compact:
        merge = bool(out)
        for line in compact.decode(errors="replace").splitlines():
            head, _, reason = line.partition("|")
            code = _HISTORY_STATUS.get(head[:1])
            try:
                if code is None or created_ms is None:
                    raise ValueError(line)
                out.append((code, created_ms + int(head[1:]), reason))
            except ValueError:
                bad += 1
        if merge:
            out.sort(key=lambda line: line[1])
    return out, bad


class WorkflowField:
    """The fields of a workflow record, the hash `<prefix>:{<queue>}:wf:<id>` (the main
    record on the queue of the workflow id; a part record on each other queue)."""

    STATE: Final = Code("st")  # running | paused | cancelled (the task record's st: STARTED_AT)
    STEPS: Final = Code("steps")  # the step ids, space-separated, in layout order
    # instead of STEPS when the steps are `<workflow id>.1` .. `<workflow id>.<n>` (graph.lua):
    # their count n. Listed, two ids pass hash-max-listpack-value (64 bytes) and the server
    # keeps the whole record as a hashtable. A client of the previous release reads no steps
    # on such a record (docs/architecture.md, "Rolling deploys")
    STEP_COUNT: Final = Code("stn")
    LAST: Final = Code("last")
    LEFT: Final = Code("left")
    TTL_MS: Final = Code("ttl")
    CREATED_AT: Final = Code("ce")
    ENDED_AT: Final = Code("et")
    QUEUES: Final = Code("queues")
    PART: Final = Code("part")
    # the steps' name= labels, JSON {label: step id} (wf_index.lua; old workflows have none)
    STEP_NAMES: Final = Code("sn")
    # sagas (lib/saga.lua): the plan, written with the main record, and its progress
    COMPENSATED_STEPS: Final = Code("cps")  # main: step numbers with a compensation
    COMPENSATION_PREFIX: Final = Code("cp:")  # cp:<n>: JSON {id, a: [spec], w: [numbers]}
    SUCCEEDED_STEPS: Final = Code("okn")  # step numbers with a compensation that succeeded
    RESULT_PREFIX: Final = Code("ok:")  # ok:<n>: that step's result (JSON)
    FAILED_STEP: Final = Code("bad")  # '1': a step did not pass (the workflow fails)
    SAGA_STATE: Final = Code("cs")  # compensating | compensated (absent: no compensation ran)
    SAGA_OUTCOME: Final = Code("co")  # failed | cancelled: how the workflow ends
    SAGA_LEFT: Final = Code("cl")  # compensations not ended yet
    SAGA_WAITS_PREFIX: Final = Code("cw:")  # cw:<n>: compensations to end before n's
    SAGA_NEXT_PREFIX: Final = Code("cn:")  # cn:<n>: the numbers waiting for n's
    SAGA_ENDED_PREFIX: Final = Code("ck:")  # ck:<n>: how n's compensation ended
    SAGA_LAUNCHED_PREFIX: Final = Code("ca:")  # ca:<n>: when n's compensation was asked for


def workflow_steps(workflow_id: str, rec: Mapping[bytes, bytes]) -> list[str]:
    """A workflow record's step ids, in layout order: listed (STEPS), or counted (STEP_COUNT)."""
    count = rec.get(WorkflowField.STEP_COUNT.b)
    if count is None:
        return rec.get(WorkflowField.STEPS.b, b"").decode(errors="replace").split()
    try:
        n = int(count)
    except ValueError:
        n = 0
    return [f"{workflow_id}.{i}" for i in range(1, n + 1)]


class EventField:
    """The fields of an entry of a queue's event stream `<prefix>:{<queue>}:events`."""

    KIND: Final = Code("e")  # task.enqueued, task.started, ... or a task's own kind
    TASK_ID: Final = Code("id")
    TASK_NAME: Final = Code("n")
    DATA: Final = Code("data")  # JSON, a task's own events (ctx.emit)
    DONE: Final = Code("done")  # task.progress
    TOTAL: Final = Code("total")  # task.progress ('' none)
    MESSAGE: Final = Code("msg")  # task.progress


class ScriptErrorCode(enum.StrEnum):
    """The codes a script's error reply starts with (ScriptError.code)."""

    NOT_FOUND = "SEGUE_NOT_FOUND"
    INVALID_TRANSITION = "SEGUE_INVALID_TRANSITION"  # <status> <command>
    INVALID_COMMAND = "SEGUE_INVALID_COMMAND"
    DUPLICATE = "SEGUE_DUPLICATE"  # <holder id>
    DEPENDENCY_ENDED = "SEGUE_DEPENDENCY_ENDED"  # <id>
    QUEUE_FULL = "SEGUE_QUEUE_FULL"  # <prefix> <length> <limit> <adding>
    SIGNAL_BUFFER_FULL = "SEGUE_SIGNAL_BUFFER_FULL"  # <signals buffered>


class EnqueueSpec(msgspec.Struct, gc=False):
    """One task as enqueue.lua creates it: its 14 ARGV fields, in this order, and its lane
    (sent apart, only when it has one: an unkeyed task costs no argument more)."""

    id: str
    name: str
    payload: bytes | str
    priority: str
    delay_ms: int
    at_ms: int  # absolute, 0: none
    max_tries: int
    timeout_ms: int  # 0: none
    ttl_ms: int  # -1: forever
    unique: str  # '' none, else "<name>:<key>"
    expire_ms: int  # 0 none, else EXPIRED if not started that long after the enqueue (< 0: over)
    headers: str  # JSON object, '' none
    version: int = 1  # the enqueuing code's version of the task (VERSION)
    from_worker: str = ""  # "send mt to v": what the claiming worker's definition supplies
    lane: str = ""  # '' none, else "<limit name>|<key>": it waits in that lane (claim.lua); last

    def argv(self) -> tuple[Any, ...]:
        return msgspec.structs.astuple(self)[:-1]


ENQUEUE_WIDTH: Final = len(EnqueueSpec.__struct_fields__) - 1  # the lane goes apart


class GraphStep(msgspec.Struct, gc=False):
    """One task as graph.lua creates it: the enqueue fields, then what it waits for."""

    spec: EnqueueSpec
    deps: str  # "<id>|<input index>" ... of its own queue ('' none)
    input_mode: str  # '' none, '1' the previous result, 'l' the list of them
    on_failure: str  # fail | cancel
    optional: str  # '1': its failure does not fail its dependants
    xdeps: str  # dependencies on other queues, as deps
    xdependants: str  # "<id>|<input index>|<workflow or ->" ... of other queues
    compensable: str = ""  # '1': a workflow step with a compensation (TaskField.COMPENSABLE)

    def argv(self) -> tuple[Any, ...]:
        return (*self.spec.argv(), *msgspec.structs.astuple(self)[1:])


GRAPH_WIDTH: Final = ENQUEUE_WIDTH + len(GraphStep.__struct_fields__) - 1


@dataclass(frozen=True, slots=True)
class GraphRecord:
    """A workflow's record on one queue, created by graph.lua with that queue's steps. The
    main record lives on the queue of the workflow id; a workflow with steps on other
    queues has a part record on each, which counts that queue's steps."""

    id: str
    ttl_ms: int
    steps: str  # main: every step id in layout order; a part: its queue's steps
    last: str  # main: the last steps' ids; a part: ''
    left: int  # ends counted before this record's share of the workflow has ended
    queues: str = ""  # main: the workflow's other queues
    part: str = ""  # a part: its queue
    # main: the saga plan, "<n> <JSON {id, a: [spec], w: [numbers]}>" flattened
    compensations: tuple[str, ...] = ()


class ClaimedRun(msgspec.Struct, gc=False):
    """One task leased by claim.lua, as its reply gives it (in this order).

    A row segue cannot read in full (a record written by another client: a name that is not
    UTF-8, headers that are not a JSON object, a number that is not one) still parses, with
    `unreadable` saying why: the worker ends that task FAILED (undecodable) instead of
    running it, and goes on with the rest of the batch."""

    id: str
    name: str
    payload: bytes
    tries: int
    gen: str  # the lease generation, as the fencing scripts compare it
    timeout_ms: int
    max_tries: int
    input: bytes | None  # a workflow step's value from the steps before it (JSON)
    headers: bytes | None  # the enqueuer's headers (JSON)
    lost: int  # how many workers stopped under the task before this claim
    version: int = 1  # the record's VERSION
    started_version: int = 1  # the version it started under (STARTED_VERSION, else VERSION)
    unreadable: str | None = None  # why this row could not be read in full
    from_worker: str = ""  # "send mt to v": take these from this worker's definition (app.send)
    # a task woken by a signal: its step journal, [field, value, ...] (the run reads it
    # from here instead of from the server)
    journal: list[bytes] | None = None

    @classmethod
    def parse(cls, raw: list[Any]) -> ClaimedRun:
        # hot (once per task run): the common row (12 fields, no headers) takes no call
        # beyond the conversions; each optional part is looked at only when it is there
        try:
            n = len(raw)
            # 12: v, v0 (task versions); 13: and fw (enqueue by name); 14: and the journal
            if n != 12 and n not in (10, 13, 14):
                raise ValueError(f"a claimed row has {n} fields")
            task_id, name, payload, tries, gen, timeout_ms, max_tries, given, headers, lost = raw[
                :10
            ]
            version = started = 1
            if n > 10:
                version = int(raw[10] or 1)
                started = int(raw[11] or version)
                if version < 1 or started < 1:
                    raise ValueError(f"version v={version}, v0={started} is below 1")
            run = cls(
                task_id.decode(),
                name.decode(),
                payload,
                int(tries),
                str(int(gen)),
                int(timeout_ms or 0),
                int(max_tries or 1),
                given or None,
                headers or None,
                int(lost or 0),
                version,
                started,
            )
            if n > 12:
                if raw[12]:
                    run.from_worker = text(raw[12])
                if n > 13 and isinstance(raw[13], list):
                    run.journal = raw[13]
            if headers and not isinstance(_JSON.decode(headers), dict):
                raise ValueError("the headers are not a JSON object")
        except (ValueError, TypeError, AttributeError) as exc:  # UnicodeDecodeError, DecodeError
            return cls._unreadable(raw, exc)
        return run

    def last_delivery(self, max_deliveries: int) -> bool:
        """Whether losing this run ends the task, as claim.lua decides it: a run was lost
        before, and this one spends the last delivery or the last try."""
        return self.lost > 0 and (self.lost >= max_deliveries - 1 or self.tries >= self.max_tries)

    @property
    def id_readable(self) -> bool:
        """Whether the id can name the task back to the server (it was UTF-8). Only a row
        that did not read (`unreadable`) can have an id that is not."""
        try:
            self.id.encode()
        except UnicodeEncodeError:
            return False
        return True

    @classmethod
    def _unreadable(cls, raw: list[Any], exc: Exception) -> ClaimedRun:
        """What can be read of a bad row: enough to name the task and end its lease."""
        row = [*raw, *([None] * 12)]
        # an id that is not UTF-8 keeps its bytes as surrogates: the worker sees that it
        # cannot send it back (see Worker._start_claimed)
        task_id = _text(row[0], "surrogateescape")
        return cls(
            task_id,
            _text(row[1], "replace"),
            row[2] if isinstance(row[2], bytes) else b"",
            _number(row[3], 0),
            str(_number(row[4], 0)),
            0,
            1,
            None,
            None,
            _number(row[9], 0),
            _number(row[10], 1),
            _number(row[11], 1),
            unreadable=f"{type(exc).__name__}: {exc}",
        )


_JSON = msgspec.json.Decoder()


def _text(value: Any, errors: str) -> str:
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value or "")


def _number(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


class ClaimReply(msgspec.Struct, gc=False):
    """claim.lua's reply: when the next scheduled task is due (-1 none), the server's time,
    how many tasks are left queued or running, and the runs it leased."""

    next_due_ms: int
    now_ms: int
    backlog: int
    runs: list[ClaimedRun]

    @classmethod
    def parse(cls, raw: list[Any]) -> ClaimReply:
        return cls(int(raw[0]), int(raw[1]), int(raw[2]), [ClaimedRun.parse(r) for r in raw[3:]])
