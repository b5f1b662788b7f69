"""Every script's documented KEYS match what its wrapper sends."""

from __future__ import annotations

from segue import Settings
from segue._broker import Broker, GraphRecord
from segue._scripts import NAMES, load


def test_wrappers_send_as_many_keys_as_each_header_documents() -> None:
    broker = Broker(Settings(redis_url="redis://127.0.0.1:1/0"), "redis://127.0.0.1:1/0")
    ks = broker.keyspace("q")
    calls = {
        "enqueue": broker.enqueue_call(ks, []),
        "claim": broker.claim_call(ks, "w", 1),
        "finish": broker.finish_call(ks, []),
        "control": broker.control_call(ks, "q:1", "pause", "why"),
        "graph": broker.graph_call(ks, None, []),
        "forward": (broker.forward_script, ks.graph_keys, []),
        "watch": broker.watch_call(ks, []),
        "workflow": (broker.workflow_script, ks.control_keys, []),
        "retry": (broker.retry_script, ks.retry_keys, []),
        "purge": (broker.purge_script, ks.purge_keys, []),
    }
    for name, (script, keys, _) in calls.items():
        assert script.numkeys == len(keys), name
    assert load("renew").numkeys == 2
    assert load("state").numkeys == 1
    assert load("wait").numkeys == 2
    assert load("event").numkeys == 1
    assert load("reconcile").numkeys == len(ks.reconcile_keys)
    assert load("generation").numkeys == 2
    assert load("delete").numkeys == len([*ks.done, ks.dead])
    assert load("wf_index").numkeys == 1
    assert load("cron_skip").numkeys == 3
    assert set(NAMES) == {
        "enqueue",
        "claim",
        "finish",
        "renew",
        "control",
        "state",
        "graph",
        "forward",
        "watch",
        "wait",
        "workflow",
        "retry",
        "event",
        "purge",
        "cron_put",
        "cron_take",
        "cron_advance",
        "cron_remove",
        "cron_skip",
        "delete",
        "wf_index",
        "reconcile",
        "generation",
    }


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
