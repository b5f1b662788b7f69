"""The wire layer's names, orders and encodings are the stored ones (segue._wire)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

import segue
from segue import TaskStatus, _calls, _scripts
from segue._fastconn import _pack
from segue._keys import Keyspace
from segue._outcome import (
    Cancelled,
    Failed,
    Finished,
    FinishResult,
    Outcome,
    Paused,
    PausedItself,
    Released,
    Requeued,
    Retrying,
    Succeeded,
    Suspended,
)
from segue._settings import Settings
from segue._wire import (
    ENQUEUE_WIDTH,
    GRAPH_WIDTH,
    HISTORY_CODES,
    ClaimReply,
    EnqueueSpec,
    EventField,
    GraphRecord,
    GraphStep,
    ScriptErrorCode,
    TaskField,
    WorkflowField,
    history_lines,
    workflow_steps,
)

# What the server stores: a code here changes only with a rolling-deploy plan (DESIGN §10).
TASK_CODES = {
    "NAME": "n",
    "PAYLOAD": "p",
    "STATUS": "s",
    "PRIORITY": "q",
    "TRIES": "t",
    "LOST_RUNS": "d",
    "GENERATION": "g",
    "MAX_TRIES": "mt",
    "TIMEOUT_MS": "to",
    "TTL_MS": "ttl",
    "ENQUEUED_AT": "ce",
    "HISTORY": "h",
    "HISTORY_COMPACT": "hc",
    "HISTORY_TOTAL": "hn",
    "DUE_AT": "due",
    "UNIQUE_KEY": "uq",
    "EXPIRES_AT": "exp",
    "HEADERS": "hd",
    "WORKER": "w",
    "STARTED_AT": "st",
    "ENDED_AT": "et",
    "RESULT": "r",
    "ERROR": "e",
    "CONTROL": "ctl",
    "CONTROL_REASON": "ctlr",
    "CONTROL_AT": "ctlt",
    "WAITING_FOR": "wait",
    "HOLD": "hold",
    "INPUT": "in",
    "INPUT_MODE": "im",
    "INPUT_COUNT": "nd",
    "INPUT_PREFIX": "i:",
    "ON_FAILURE": "of",
    "OPTIONAL": "opt",
    "WORKFLOW": "wf",
    "CROSS_DEPENDANTS": "xd",
    "CROSS_PREFIX": "x:",
    "COUNTED_RUNNING": "cn",
    "RELEASES": "rel",
    "FIRST_RELEASE_AT": "rel0",
    "PROGRESS": "pg",
    "PROGRESS_MESSAGE": "pgm",
    "STEP_PREFIX": "j:",
    "STEP_COUNT": "jn",
    "PROGRESS_GEN": "jp",
    "SLEEP_GEN": "slp",
    "PROGRESSED": "pw",
    "PAUSES": "np",
    "STREAM_GEN": "sg",
    "STREAM_COUNT": "sn",
    "STREAM_LINGER_MS": "sl",
    "STREAM_BATCH": "sb",
    "SUBTASKS": "nk",
    "PARENT_END": "ope",
    "PAUSED_BY": "pc",
    "CASCADED": "cz",
    "CASCADING": "cw",
    "COMPENSABLE": "cp",
    "COMPENSATES": "cof",
    "VERSION": "v",
    "STARTED_VERSION": "v0",
    "VERSION_RELEASES": "vrel",
    "SIGNAL_WAIT": "sgw",
    "SIGNAL_JOURNAL": "sgj",
    "SIGNAL_WAIT_AT": "sga",
    "SIGNAL_DEADLINE": "sgd",
    "SIGNALS_DROPPED": "sgx",
    "SIGNAL_WOKEN": "sgk",
    "OFFLOADED": "off",
    "LANE": "lk",
    "DEBOUNCE_START": "dbs",
    "DEBOUNCE_KEY": "dbk",
    "FROM_WORKER": "fw",
}
WORKFLOW_CODES = {
    "STATE": "st",
    "STEPS": "steps",
    "STEP_COUNT": "stn",
    "LAST": "last",
    "LEFT": "left",
    "TTL_MS": "ttl",
    "CREATED_AT": "ce",
    "ENDED_AT": "et",
    "QUEUES": "queues",
    "PART": "part",
    "STEP_NAMES": "sn",
    "COMPENSATED_STEPS": "cps",
    "COMPENSATION_PREFIX": "cp:",
    "SUCCEEDED_STEPS": "okn",
    "RESULT_PREFIX": "ok:",
    "FAILED_STEP": "bad",
    "SAGA_STATE": "cs",
    "SAGA_OUTCOME": "co",
    "SAGA_LEFT": "cl",
    "SAGA_WAITS_PREFIX": "cw:",
    "SAGA_NEXT_PREFIX": "cn:",
    "SAGA_ENDED_PREFIX": "ck:",
    "SAGA_LAUNCHED_PREFIX": "ca:",
}
EVENT_CODES = {
    "KIND": "e",
    "TASK_ID": "id",
    "TASK_NAME": "n",
    "DATA": "data",
    "DONE": "done",
    "TOTAL": "total",
    "MESSAGE": "msg",
}


def _codes(cls: type) -> dict[str, str]:
    return {k: v for k, v in vars(cls).items() if k.isupper()}


@pytest.mark.parametrize(
    ("cls", "expected"),
    [(TaskField, TASK_CODES), (WorkflowField, WORKFLOW_CODES), (EventField, EVENT_CODES)],
)
def test_every_record_field_is_named_once_with_its_stored_code(
    cls: type, expected: dict[str, str]
) -> None:
    codes = _codes(cls)
    assert codes == expected
    assert len(set(codes.values())) == len(codes)  # no code has two names
    assert all(getattr(cls, k).b == v.encode() for k, v in codes.items())


def test_st_has_two_names_by_record() -> None:
    assert TaskField.STARTED_AT == WorkflowField.STATE == "st"
    assert "STATE" not in _codes(TaskField) and "STARTED_AT" not in _codes(WorkflowField)


def test_script_error_codes_are_the_scripts_reply_prefixes() -> None:
    assert {c.value for c in ScriptErrorCode} == {
        "SEGUE_NOT_FOUND",
        "SEGUE_INVALID_TRANSITION",
        "SEGUE_INVALID_COMMAND",
        "SEGUE_DUPLICATE",
        "SEGUE_DEPENDENCY_ENDED",
        "SEGUE_QUEUE_FULL",
        "SEGUE_SIGNAL_BUFFER_FULL",
    }


SPEC = EnqueueSpec(
    id="q:1",
    name="shop.charge",
    payload=b"[[1],{}]",
    priority="high",
    delay_ms=5,
    at_ms=6,
    max_tries=7,
    timeout_ms=8,
    ttl_ms=9,
    unique="shop.charge:1",
    expire_ms=10,
    headers='{"h":1}',
    version=2,
    from_worker="send mt to",
)


def test_enqueue_spec_sends_its_fields_in_enqueue_lua_order() -> None:
    # the order of enqueue.lua's ARGV (see its header): a reordered spec fails here
    assert EnqueueSpec.__struct_fields__ == (
        "id",
        "name",
        "payload",
        "priority",
        "delay_ms",
        "at_ms",
        "max_tries",
        "timeout_ms",
        "ttl_ms",
        "unique",
        "expire_ms",
        "headers",
        "version",
        "from_worker",
        "lane",
    )
    assert SPEC.argv() == (
        "q:1",
        "shop.charge",
        b"[[1],{}]",
        "high",
        5,
        6,
        7,
        8,
        9,
        "shop.charge:1",
        10,
        '{"h":1}',
        2,
        "send mt to",
    )
    assert ENQUEUE_WIDTH == 14
    assert EnqueueSpec(*SPEC.argv()) == SPEC  # every field round-trips
    # a lane is sent apart, only by calls that have one (an unkeyed task costs nothing)
    keyed = msgspec.structs.replace(SPEC, lane="tenant-api|42")
    assert keyed.argv() == SPEC.argv()


def test_enqueue_call_counts_and_flattens_its_specs() -> None:
    ks = Keyspace("segue", "q")
    other = EnqueueSpec(*("q:2", *SPEC.argv()[1:]))
    script, keys, args = _calls.enqueue(ks, [SPEC, other], 100)
    assert script.name == "enqueue" and keys == ks.enqueue_keys
    assert args[:3] == [ks.base, 2, 100]
    assert args[3:] == [*SPEC.argv(), *other.argv()]
    keyed = msgspec.structs.replace(other, lane="t|7")
    _, _, args = _calls.enqueue(ks, [SPEC, keyed], 100)
    assert args[3:] == [*SPEC.argv(), *keyed.argv(), 1, 1, "t|7"]  # count, index, lane


def test_graph_step_sends_the_enqueue_fields_then_its_own_in_graph_lua_order() -> None:
    step = GraphStep(
        spec=SPEC,
        deps="q:0|0",
        input_mode="1",
        on_failure="cancel",
        optional="1",
        xdeps="r:0|-1",
        xdependants="r:9|0|-",
    )
    assert GraphStep.__struct_fields__[1:] == (
        "deps",
        "input_mode",
        "on_failure",
        "optional",
        "xdeps",
        "xdependants",
        "compensable",
    )
    assert step.argv() == (*SPEC.argv(), "q:0|0", "1", "cancel", "1", "r:0|-1", "r:9|0|-", "")
    assert GRAPH_WIDTH == 21 == len(step.argv())
    ks = Keyspace("segue", "q")
    record = GraphRecord("q:wf", 60_000, "q:1", "q:1", 1, "r", "")
    _, keys, args = _calls.graph(ks, record, [step], 0)
    assert keys == ks.graph_keys
    assert args[:12] == [
        ks.base,
        ks.done_channel,
        "q:wf",
        60_000,
        "q:1",
        "q:1",
        1,
        "r",
        "",
        1,
        0,
        0,
    ]
    assert args[12:] == list(step.argv())


def test_claim_call_and_reply() -> None:
    ks = Keyspace("segue", "q")
    settings = Settings(lease_seconds=2.5, max_deliveries=4, dead_letter_cap=50)
    _, keys, args = _calls.claim(ks, settings, "w1", 3, "tok", "old", holds_last=True)
    assert keys == ks.claim_keys
    assert args == [ks.base, "w1", 3, 2500, 4, ks.done_channel, 50, "tok", "old", "1"]
    raw: list[Any] = [
        1700,
        1600,
        2,
        [b"q:1", b"add", b"[[1],{}]", 2, 5, b"8", b"7", b"[1]", b'{"h":1}', 1],
        [b"q:2", b"add", b"[[],{}]", 1, 1, b"0", b"1", b"", b"", 0, b"", b"", b"send mt to"],
        [b"q:3", b"add", b"[[],{}]", 1, 2, b"0", b"1", b"", b"", 0, b"2", b"1", b"", b""],
        [b"q:4", b"add", b"[[],{}]", 1, 3, b"0", b"1", b"", b"", 0, b"", b"", b"", [b"~j:a", b"1"]],
    ]
    reply = _calls.parse_claim(raw)
    assert reply == ClaimReply(1700, 1600, 2, reply.runs)
    first, second, third, woken = reply.runs
    assert (first.id, first.name, first.payload, first.tries, first.gen) == (
        "q:1",
        "add",
        b"[[1],{}]",
        2,
        "5",
    )
    assert (first.timeout_ms, first.max_tries, first.input, first.headers, first.lost) == (
        8,
        7,
        b"[1]",
        b'{"h":1}',
        1,
    )
    assert (second.input, second.headers, second.lost, second.timeout_ms) == (None, None, 0, 0)
    # the 13th column (fw) is a script's of this release; a 10-column row reads as before
    assert (first.from_worker, second.from_worker) == ("", "send mt to")
    # the 14th, the journal of a task a signal woke: a list, '' (no journal) for the others
    assert (third.version, third.started_version, third.journal) == (2, 1, None)
    assert (woken.unreadable, woken.journal) == (None, [b"~j:a", b"1"])
    assert first.journal is None


@pytest.mark.parametrize(
    ("outcome", "fields"),
    [
        (Succeeded(b"42"), ("ok", b"42", "")),
        (Failed(b'{"type":"E"}', "error"), ("fail", b'{"type":"E"}', "error")),
        (Retrying(b"{}", 1500), ("retry", b"{}", 1500)),
        (Requeued(), ("requeue", "", "")),
        (Requeued("server unreachable"), ("requeue", "server unreachable", "")),
        (Suspended(-1), ("suspend", -1, "")),
        (PausedItself(-1, 100), ("pause", -1, 100, 0)),
        (
            PausedItself(250, -1, (("i", b"5"), ("k", b'"x"'))),
            ("pause", 250, -1, 2, "i", b"5", "k", b'"x"'),
        ),
        (Paused(), ("paused", "", "")),
        (Cancelled(), ("cancelled", "", "")),
        (Released(3, 300_000), ("release", 3, 300_000)),
    ],
)
def test_each_outcome_is_the_finish_lua_action_and_its_two_fields(
    outcome: Outcome, fields: tuple[Any, ...]
) -> None:
    assert Finished("q:1", "4", outcome).argv() == ("q:1", "4", *fields)


def test_finish_call_and_reply() -> None:
    ks = Keyspace("segue", "q")
    done = [Finished("q:1", "1", Succeeded(b"1")), Finished("q:2", "3", Paused())]
    _, keys, args = _calls.finish(ks, done, 10, claim_follows=True)
    assert keys == ks.finish_keys
    head = [ks.base, ks.done_channel, 10, 1, 2]
    assert args == [*head, "q:1", "1", "ok", b"1", "", "q:2", "3", "paused", "", ""]
    assert _calls.parse_finish([0, 1, 2, 3]) == [
        FinishResult.REJECTED,
        FinishResult.APPLIED,
        FinishResult.FORWARD,
        FinishResult.ALREADY,
    ]


def test_the_scripts_read_the_enqueue_fields_at_the_specs_offsets() -> None:
    # lib/create.lua names each field's offset; enqueue.lua and graph.lua read them by name
    source = (Path(_scripts.__file__).parent / "lib" / "create.lua").read_text()
    table = re.search(r"local SPEC = \{(.*?)\}", source, re.DOTALL)
    assert table is not None
    offsets = {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", table.group(1))}
    fields = list(EnqueueSpec.__struct_fields__)
    assert sorted(offsets, key=offsets.__getitem__) == fields[:-1]  # the lane goes apart
    assert sorted(offsets.values()) == list(range(ENQUEUE_WIDTH))
    width = re.search(r"local SPEC_WIDTH = (\d+)", source)
    assert width is not None and int(width.group(1)) == ENQUEUE_WIDTH


def test_the_compact_history_letters_are_the_scripts_and_name_every_status() -> None:
    """A compact history line starts with its status's letter (lib/states.lua writes them,
    _wire.history_lines reads them): both tables must agree, one letter per status."""
    lua = (Path(segue.__file__).parent / "_scripts" / "lib" / "states.lua").read_text()
    table = re.search(r"HISTORY_CODES = \{(.*?)\}", lua, re.S)
    assert table is not None
    assert dict(re.findall(r"(\w+) = '(\w)'", table.group(1))) == HISTORY_CODES
    assert set(HISTORY_CODES) == {s.value for s in TaskStatus}
    assert len(set(HISTORY_CODES.values())) == len(HISTORY_CODES)


def test_history_lines_merge_the_long_form_and_the_compact_one_by_time() -> None:
    """A record created by this release and moved on by a worker of the previous release
    has both; one of the previous release has only the long form."""
    lines, bad = history_lines(b"running|1500|old-worker\n", b"q0\nr300|new-worker\nk700\n", 1000)
    assert bad == 0
    assert lines == [
        ("queued", 1000, ""),
        ("running", 1300, "new-worker"),
        ("running", 1500, "old-worker"),
        ("succeeded", 1700, ""),
    ]
    assert history_lines(b"queued|5|\n", None, None) == ([("queued", 5, "")], 0)
    assert history_lines(None, b"z1\nq\n", 1000) == ([], 2)


def test_a_workflow_record_lists_its_steps_or_counts_the_usual_ones() -> None:
    """graph.lua counts the steps `<id>.1` .. `<id>.<n>` (a short record) and lists others
    (a part on another queue; a record of the previous release)."""
    assert workflow_steps("q:wf-1", {b"stn": b"3"}) == ["q:wf-1.1", "q:wf-1.2", "q:wf-1.3"]
    assert workflow_steps("q:wf-1", {b"steps": b"q:wf-1.2 q:wf-1.5"}) == ["q:wf-1.2", "q:wf-1.5"]
    assert workflow_steps("q:wf-1", {}) == []


def test_command_arguments_go_out_as_resp_bulk_strings() -> None:
    # exact bytes, str and int take the fast path of _pack; a str subclass (a field code)
    # and a float the general one: all arrive as the server reads them
    packed = _pack((b"\x00b", "é", TaskField.STATUS, 42, -7, 1 << 70, 1.5))
    big = str(1 << 70).encode()
    assert packed == (
        b"*7\r\n$2\r\n\x00b\r\n$2\r\n\xc3\xa9\r\n$1\r\ns\r\n$2\r\n42\r\n$2\r\n-7\r\n"
        b"$%d\r\n%s\r\n$3\r\n1.5\r\n" % (len(big), big)
    )
    with pytest.raises(TypeError, match="cannot send a NoneType"):
        _pack((None,))
