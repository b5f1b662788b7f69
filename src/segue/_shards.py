"""Shard names of a sharded queue, and which shard a task goes to (no I/O).

A queue of N > 1 shards is N queues of its own, each in its own hash tag: shard names are
`<queue>#<N>.<j>`, so every key of a shard is `<prefix>:{<queue>#<N>.<j>}:...` and every
script still touches one slot. A task id starts with its shard's name (`<shard>:<ulid>`),
so `queue_of(id)` names the shard and any process finds the task from its id alone.

The `j` of each shard is computed, not random: the slot space is cut into N equal windows
and shard i is the first `j` (counting from 0) whose name hashes into window i, so the
shards of a queue spread evenly over the slots, hence over the primaries of a cluster. The
names are a pure function of (queue, N): every process and version computes the same ones,
and the server stores only N. Names for different N differ (N is part of them), so the
shards of a reshard's old and new counts never share a name.

The queue's own name (its "base", `{<queue>}`) stays a queue too: it is where an unsharded
queue lives, where a release without sharding enqueues, and where a task lands whose
process has not read the shard count yet; workers of a sharded queue serve it as well.
"""

from __future__ import annotations

import binascii
import itertools
import random
import re
import zlib
from dataclasses import dataclass
from functools import cache

from segue._errors import ConfigurationError

SLOTS = 16384
MAX_SHARDS = 1024
_SHARD = re.compile(r"^(.+)#(\d+)\.(\d+)$")


def slot(tag: str) -> int:
    """The Cluster slot of a hash tag (CRC16-XMODEM, as the server computes it)."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


def check_shards(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise ConfigurationError(f"shards must be an int from 1 to {MAX_SHARDS}, not {n!r}")
    return n


@cache
def shard_names(queue: str, n: int) -> tuple[str, ...]:
    """The shards of `queue` at count `n` (n == 1: the queue itself)."""
    if n == 1:
        return (queue,)
    found: list[str | None] = [None] * n
    missing = n
    for j in itertools.count():
        name = f"{queue}#{n}.{j}"
        window = slot(name) * n // SLOTS
        if found[window] is None:
            found[window] = name
            missing -= 1
            if not missing:
                break
    return tuple(name for name in found if name is not None)


def logical_queue(queue: str) -> str:
    """The queue a shard belongs to (a name that is no shard's: itself)."""
    m = _SHARD.match(queue)
    return m.group(1) if m else queue


def shard_count_of(queue: str) -> int:
    """The count a shard's name carries (1 for a name that is no shard's)."""
    m = _SHARD.match(queue)
    return int(m.group(2)) if m else 1


@dataclass(frozen=True)
class ShardCount:
    """What the server holds for a queue: its count, and during a reshard's drain the count
    before (`old`, 0 when none), which keyed enqueues keep using until its shards drained."""

    count: int = 1
    old: int = 0

    def serving(self, queue: str) -> tuple[str, ...]:
        """Every shard a worker of `queue` serves: the base, the current and the old ones."""
        names = [queue, *shard_names(queue, self.count)]
        if self.old:
            names += shard_names(queue, self.old)
        return tuple(dict.fromkeys(names))


def routing_key(lane: str, key: str | None, unique: str, debounce: object) -> str | None:
    """The key a task is routed by (None: round-robin). A limit key first: it is the
    coarsest (tasks of one unique or idempotency key share their limit key), so routing by
    it keeps all of them exact; then the idempotency key, the unique key, the debounce key."""
    if lane:
        return "l:" + lane
    if key is not None:
        return "k:" + key
    if unique:
        return "u:" + unique
    if debounce is not None:
        return f"d:{debounce}"
    return None


class Router:
    """Picks a task's shard: by its routing key when it has one (the same key, the same
    shard, for as long as the count a keyed enqueue uses stays), else round-robin from a
    random start, so that many producers do not all begin with shard 0."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = random.randrange(MAX_SHARDS)

    def pick(self, queue: str, sc: ShardCount, key: str | None) -> str:
        if key is not None:
            n = sc.old or sc.count
            if n == 1:
                return queue
            return shard_names(queue, n)[zlib.crc32(key.encode()) % n]
        if sc.count == 1:
            return queue
        self._next += 1
        names = shard_names(queue, sc.count)
        return names[self._next % len(names)]
