"""Every script's documented KEYS match what its wrapper sends."""

from __future__ import annotations

import re

import pytest

from segue import Settings, _calls
from segue._broker import Broker, GraphRecord
from segue._keys import CronKeys, WorkerKeys
from segue._scripts import NAMES, _with_library, includes, load
from segue._wire import EnqueueSpec


def test_wrappers_send_as_many_keys_as_each_header_documents() -> None:
    broker = Broker(Settings(redis_url="redis://127.0.0.1:1/0"), "redis://127.0.0.1:1/0")
    ks = broker.keyspace("q")
    calls = {
        "enqueue": broker.enqueue_call(ks, []),
        "debounce": broker.debounce_call(
            ks, EnqueueSpec("q:1", "t", "[]", "normal", 0, 0, 1, 0, -1, "", 0, ""), "k", 1, 0, "x"
        ),
        "claim": broker.claim_call(ks, "w", 1),
        "finish": broker.finish_call(ks, []),
        "control": broker.control_call(ks, "q:1", "pause", "why"),
        "graph": broker.graph_call(ks, None, []),
        "forward": _calls.forward(ks, []),
        "watch": broker.watch_call(ks, []),
        "workflow": _calls.workflow(ks, "q:wf", "cancel", "why"),
        "retry": _calls.retry(ks, "q:1", "why"),
        "purge": _calls.purge(ks, 500, "why"),
        "renew": _calls.renew(ks, "w", 1000, ["q:1", "1"]),
        "state": _calls.state(ks, "q:1", "1", {}, []),
        "migrate": _calls.migrate(ks, "q:1", "1", (1, 2), {}, []),
        "wait": _calls.wait(ks, "q:1", "1", ["q:1.1"]),
        "event": _calls.event(ks, "q:1", "1", "emit", "x", "{}"),
        "journal": _calls.journal(ks, "q:1", "1", "~j:a", b"{}", "a|0|0|1|"),
        "stream": _calls.stream(ks, "q:1", "1", 1, 100, 1000, b"[1]", 1, False),
        "signal": _calls.signal(ks, "q:1", "go", b"1", "s1", 10),
        "signal_wait": _calls.signal_wait(ks, "q:1", "1", "go", "~j:signal:go#1", -1, 0),
    }
    counts = {name: len(keys) for name, (_, keys, _) in calls.items()}
    for name, (script, keys, _) in calls.items():
        assert script.numkeys == len(keys), name
    wk, ck = WorkerKeys("segue"), CronKeys("segue")
    more = {
        "reconcile": _calls.reconcile(ks, 1000, 10, "keys", "0"),
        "generation": _calls.generation(ks, "w", 0, 1000, "0"),
        "beat": _calls.beat(wk, "w", 1, 1, 0, {}),
        "cron_put": _calls.cron_put(ck, "s", b"{}", "x", ""),
        "cron_take": _calls.cron_take(ck, 1, 1),
        "cron_advance": _calls.cron_advance(ck, "s", 1, 1, ""),
        "cron_remove": _calls.cron_remove(ck, "s"),
        "cron_skipped": _calls.cron_skipped(ks, "q:cron-s-1", "t", "{}"),
        "delete": _calls.delete(ks, "q:1"),
        "wf_index": _calls.wf_index(ks, "q:wf-1", "null"),
        "shards": _calls.shards(ks, "create", 16),
        "cascade": _calls.cascade(ks, 10),
        "subtask": broker.subtask_call(
            ks, EnqueueSpec("q:1.1", "t", "[]", "normal", 0, 0, 1, 0, -1, "", 0, ""), "q:1", 1, "x"
        ),
        "query": _calls.query(ks, "q:1", "[]"),
    }
    counts |= {name: len(keys) for name, (_, keys, _) in more.items()}
    # the registry is the directory: a new script is checked here or this fails
    assert set(NAMES) == set(counts)
    for name in NAMES:
        assert load(name).numkeys == counts[name], name


def test_each_script_carries_the_library_parts_it_includes_once_before_its_own_text() -> None:
    for name in NAMES:
        source = load(name).source
        defined = re.findall(r"^local function (\w+)\(", source, re.MULTILINE)
        assert len(defined) == len(set(defined)), name  # no part comes twice
    claim = load("claim").source
    # a part comes after the parts it includes, and before the script's own text
    assert claim.index("local function emit(") < claim.index("local function transition(")
    assert claim.index("local function transition(") < claim.index("local function end_task(")
    assert claim.index("local function end_task(") < claim.index("--[[ claim:")
    assert includes(claim.split("--[[ claim:", 1)[1]) == ["clock", "finalize"]
    # a script carries only what it includes
    assert "local function" not in load("journal").source
    beat = load("beat").source
    assert "local function now_ms(" in beat and "transition" not in beat


def test_every_key_of_a_call_carries_the_queue_tag() -> None:
    broker = Broker(Settings(redis_url="redis://127.0.0.1:1/0"), "redis://127.0.0.1:1/0")
    ks = broker.keyspace("q")
    calls = (
        broker.claim_call(ks, "w", 1),
        broker.finish_call(ks, []),
        broker.control_call(ks, "q:1", "cancel", "why"),
        broker.graph_call(ks, GraphRecord("q:wf-1", -1, "q:wf-1.1", "q:wf-1.1", 1), []),
        broker.watch_call(ks, []),
    )
    for _, keys, args in calls:
        assert all("{q}" in k for k in keys)
        assert args[0] == "segue:{q}:"


def test_an_include_of_a_missing_part_is_named() -> None:
    with pytest.raises(ValueError, match="script 'x' includes 'nope'"):
        _with_library("x", "--[[ x ]]\n--#include clock nope\nreturn 1\n")


def test_the_server_gets_no_comment_lines_and_the_same_line_numbers() -> None:
    from segue._scripts import _without_comment_lines

    text = "--[[ x: header\n  -- kept in the block ]]\n--#include clock\n"
    text += "-- why\n  -- why\nreturn 1\n"
    assert _without_comment_lines(text).split("\n") == [
        "--[[ x: header",
        "  -- kept in the block ]]",
        "--#include clock",
        "",
        "",
        "return 1",
        "",
    ]
    for name in NAMES:
        source = load(name).source
        assert "\n-- " not in source, name


def test_a_script_carries_every_library_definition_its_text_names_and_no_other() -> None:
    # A library local the server's text names but does not define would be read as an
    # unset global: a script error, and only on the path that reaches it.
    from importlib import resources

    import segue._scripts as scripts

    lib = resources.files(scripts) / "lib"
    defined_in_lib: set[str] = set()
    for part in lib.iterdir():
        if part.name.endswith(".lua"):
            for m in re.finditer(r"^local (?:function )?([\w, ]+?)\s*[=(]", part.read_text(), re.M):
                defined_in_lib.update(n.strip() for n in m.group(1).split(","))
    for name in NAMES:
        source = load(name).source
        code = re.sub(r"--\[\[.*?\]\]", "", source, flags=re.DOTALL)
        defined = {
            n.strip()
            for m in re.finditer(r"^local (?:function )?([\w, ]+?)\s*[=(]", code, re.M)
            for n in m.group(1).split(",")
        }
        named = set(re.findall(r"[A-Za-z_]\w*", code)) & defined_in_lib
        assert named <= defined, (name, sorted(named - defined))
    claim = load("claim").source
    assert "local function finalize(" in claim and "local function end_task(" in claim
    # a definition of an included part that claim never reaches is not built on each call
    assert "local function resolve_cross(" not in claim
    assert "local function resolve_cross(" in load("forward").source
    # claim's ending functions (--#lazy) are built only by a call that uses one; finish ends
    # a task on each call and builds them up front
    lazy = claim.split("local function lazy_build()", 1)[1].split("  lazy_built = {", 1)[0]
    assert "local function finalize(" in lazy and "local function end_task(" in lazy
    assert "local function transition(" not in lazy  # every start calls it
    assert "local finalize = function(...) return lazy_build().finalize(...) end" in claim
    assert "lazy_build" not in load("finish").source
