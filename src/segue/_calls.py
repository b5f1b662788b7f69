"""One thin wrapper per hot script: the KEYS it takes, its ARGV from typed values, and the
parsing of its reply (the layouts are documented in each script's header).

A wrapper builds a call, `(script, keys, args)`, that the Broker sends alone or pipelined
with others in one round trip; what comes back is read by the wrapper's `parse_*`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segue import _scripts
from segue._wire import (
    ClaimReply,
    EnqueueSpec,
    Finished,
    FinishResult,
    GraphRecord,
    GraphStep,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from segue._keys import Keyspace
    from segue._settings import Settings

ScriptCall = tuple[_scripts.Script, list[str], list[Any]]

ENQUEUE = _scripts.load("enqueue")
GRAPH = _scripts.load("graph")
CLAIM = _scripts.load("claim")
FINISH = _scripts.load("finish")


def enqueue(ks: Keyspace, specs: Sequence[EnqueueSpec], max_len: int) -> ScriptCall:
    """Create tasks, each idempotent by id (enqueue.lua). `max_len`: 0 for no limit."""
    args: list[Any] = [ks.base, len(specs), max_len]
    for spec in specs:
        args.extend(spec.argv())
    return (ENQUEUE, ks.enqueue_keys, args)


def parse_created(reply: list[Any]) -> list[int | str]:
    """enqueue.lua's and graph.lua's reply: per task 1 created, 0 already existed, or the
    id of the live task that holds its unique key."""
    return [r if r.__class__ is int else _text(r) for r in reply]


def graph(
    ks: Keyspace, record: GraphRecord | None, steps: Sequence[GraphStep], max_len: int
) -> ScriptCall:
    """Create tasks with dependencies, and a workflow's record on this queue when given
    (graph.lua)."""
    w = record or GraphRecord("", -1, "", "", 0)
    args: list[Any] = [ks.base, ks.done_channel, w.id, w.ttl_ms, w.steps, w.last, w.left]
    args.extend((w.queues, w.part, len(steps), max_len))
    for step in steps:
        args.extend(step.argv())
    return (GRAPH, ks.graph_keys, args)


def claim(
    ks: Keyspace,
    settings: Settings,
    worker_id: str,
    want: int,
    token: str = "",
    answered: str = "",
    *,
    holds_last: bool = False,
) -> ScriptCall:
    """A claim of up to `want` tasks (claim.lua); sent again with the same `token` after a
    lost reply, it returns the tasks the first call leased. `answered`: the token of the
    previous claim, whose reply came, so its record can go. `holds_last`: the worker runs a
    task on its last delivery, so it gets no other."""
    args = [
        ks.base,
        worker_id,
        want,
        int(settings.lease_seconds * 1000),
        settings.max_deliveries,
        ks.done_channel,
        settings.dead_letter_cap,
        token,
        answered,
        "1" if holds_last else "0",
    ]
    return (CLAIM, ks.claim_keys, args)


def parse_claim(reply: list[Any]) -> ClaimReply:
    return ClaimReply.parse(reply)


def finish(
    ks: Keyspace, finished: Sequence[Finished], dead_letter_cap: int, *, claim_follows: bool
) -> ScriptCall:
    """Record the outcomes of runs, fenced by lease generation (finish.lua)."""
    args: list[Any] = [ks.base, ks.done_channel, dead_letter_cap, 1 if claim_follows else 0]
    args.append(len(finished))
    for f in finished:
        args.extend(f.argv())
    return (FINISH, ks.finish_keys, args)


def parse_finish(reply: list[Any]) -> list[FinishResult]:
    return [FinishResult(int(r)) for r in reply]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
