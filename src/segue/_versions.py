"""Server versions: which releases carry the fixes for the Lua-engine advisories segue's
scripts are exposed to (CVE-2025-49844, CVE-2025-46817, CVE-2024-46981).

segue runs Lua on every transition, so a server with a known Lua use-after-free is a risk
that `deny EVAL` cannot mitigate. The version is read with `HELLO`, which the least-privilege
ACL user may run (`INFO` is `@dangerous`). Distributions that backport fixes keep the old
version string, so this is a warning, never a refusal.
"""

from __future__ import annotations

import logging

log = logging.getLogger("segue.server")

# first patched release of each maintained branch (major, minor) -> patch level
_FIXED: dict[str, dict[tuple[int, int], int]] = {
    "redis": {(7, 2): 11, (7, 4): 6, (8, 0): 4, (8, 2): 2},
    "valkey": {(7, 2): 11, (8, 0): 6, (8, 1): 4},
}


def parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(p) if p.isdigit() else 0 for p in text.split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


def advisory(server: str, version: str) -> str | None:
    """A sentence when `server` at `version` lacks the Lua fixes, else None."""
    fixed = _FIXED.get(server)
    if fixed is None:
        return None
    major, minor, patch = parse_version(version)
    branch = (major, minor)
    oldest = min(fixed)
    newest = max(fixed)
    if branch > newest:
        return None
    if branch < oldest or branch not in fixed:
        first = min((b for b in fixed if b > branch), default=newest)
        need = f"{first[0]}.{first[1]}.{fixed[first]}"
        return (
            f"{server} {version} predates the fixes for CVE-2025-49844 and CVE-2025-46817 "
            f"(Lua engine); upgrade to {need} or later unless your distribution backported them"
        )
    if patch < fixed[branch]:
        need = f"{major}.{minor}.{fixed[branch]}"
        return (
            f"{server} {version} lacks the fixes for CVE-2025-49844 and CVE-2025-46817 "
            f"(Lua engine); upgrade to {need} or later unless your distribution backported them"
        )
    return None


_warned: set[str] = set()  # advisories already logged by this process


def warn_if_unpatched(server: str, version: str, where: str) -> str | None:
    """The advisory for this server, logged once per process (not at every connection)."""
    text = advisory(server, version)
    if text is not None and text not in _warned:
        _warned.add(text)
        log.warning("server at %s: %s", where, text)
    return text
