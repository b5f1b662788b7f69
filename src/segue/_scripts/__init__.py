"""The Lua scripts, loaded from package files and called by SHA.

Each script is `_lib.lua` followed by its own file; the SHA is of that text. A NOSCRIPT reply
(after a server restart or failover) reloads the script and resends only that command, also
for commands queued in a pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import ClusterError, NoScriptError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")
_KEYS_RE = re.compile(r"KEYS\[(\d+)(?:\.\.(\d+))?\]")

# While a slot migrates, a script whose keys are split between the two nodes gets TRYAGAIN,
# and redis-py's cluster client gives up after 16 tries (~0.4 s) with "TTL exhausted": the
# script never ran, so it is sent again, with a backoff, for up to this many seconds (a
# migration of a busy queue's slot keeps its keys split for as long as it takes).
MIGRATION_PATIENCE = 10.0


def _not_run(exc: ClusterError) -> bool:
    return "TTL exhausted" in str(exc)


async def while_migrating(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, sent again while a cluster's slot migration makes redis-py give it up."""
    deadline = time.monotonic() + MIGRATION_PATIENCE
    pause = 0.05
    while True:
        try:
            return await call()
        except ClusterError as exc:
            if not _not_run(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(0.5, pause * 2)


@dataclass(frozen=True, slots=True)
class Script:
    """One atomic server-side operation."""

    name: str
    source: str
    sha: str
    numkeys: int

    async def run(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        return await while_migrating(lambda: self._run_once(client, keys, args))

    async def _run_once(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def run_sync(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        deadline = time.monotonic() + MIGRATION_PATIENCE
        pause = 0.05
        while True:
            try:
                return self._run_once_sync(client, keys, args)
            except ClusterError as exc:
                if not _not_run(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(0.5, pause * 2)

    def _run_once_sync(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def header_keys(source: str) -> int:
    """The number of KEYS a script's header documents (its highest KEYS index)."""
    header = source.split("]]", 1)[0]
    top = 0
    for m in _KEYS_RE.finditer(header):
        top = max(top, int(m.group(2) or m.group(1)))
    return top


# Scripts that keep work moving run even when the server is at maxmemory (noeviction):
# without the flag, a write that may grow memory (ZADD, HSET) is refused as the first write
# of a script, so leases would not be renewed (running tasks taken over: run twice),
# workers would not register, and nothing could be cancelled or purged to make room. The
# other scripts (enqueue, graph, retry, cron) create work: a full server refuses them at
# their first write, before anything is stored.
ALLOW_OOM = frozenset(
    {
        "claim",
        "finish",
        "renew",
        "beat",
        "reconcile",
        "generation",
        "wait",
        "state",
        "event",
        "control",
        "workflow",
        "purge",
        "delete",
    }
)


@cache
def load(name: str) -> Script:
    pkg = resources.files(__package__)
    own = (pkg / f"{name}.lua").read_text(encoding="utf-8")
    source = (pkg / "_lib.lua").read_text(encoding="utf-8") + "\n" + own
    if name in ALLOW_OOM:
        source = "#!lua flags=allow-oom\n" + source
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    return Script(name, source, sha, header_keys(own))


NAMES = (
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
    "reconcile",
    "generation",
    "cron_put",
    "cron_take",
    "cron_advance",
    "cron_remove",
    "cron_skip",
    "delete",
    "wf_index",
)


async def run_pipeline(client: Any, calls: list[tuple[Script, list[str], list[Any]]]) -> list[Any]:
    """Send several script calls in one round trip; reload and resend any that got NOSCRIPT."""
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, res in enumerate(results):
        if isinstance(res, NoScriptError):
            script, keys, args = calls[i]
            results[i] = await script.run(client, keys, args)
        elif isinstance(res, Exception):
            raise res
    return results
