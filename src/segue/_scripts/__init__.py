"""The Lua scripts, loaded from package files and called by SHA.

Each script is `_lib.lua` followed by its own file; the SHA is of that text. A NOSCRIPT reply
(after a server restart or failover) reloads the script and resends only that command, also
for commands queued in a pipeline.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

_KEYS_RE = re.compile(r"KEYS\[(\d+)(?:\.\.(\d+))?\]")


@dataclass(frozen=True, slots=True)
class Script:
    """One atomic server-side operation."""

    name: str
    source: str
    sha: str
    numkeys: int

    async def run(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def run_sync(self, client: Any, keys: list[str], args: list[Any]) -> Any:
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


@cache
def load(name: str) -> Script:
    pkg = resources.files(__package__)
    own = (pkg / f"{name}.lua").read_text(encoding="utf-8")
    source = (pkg / "_lib.lua").read_text(encoding="utf-8") + "\n" + own
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
