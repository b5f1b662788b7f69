"""The Lua scripts, loaded from package files and called by SHA.

Every `<name>.lua` here is a script; `lib/` holds the library parts they share. A script
declares the parts it uses on a line `--#include <part> ...` after its header, and a part may
include others the same way: at load, each part it needs comes once, before what uses it,
then the script's own text, less the parts' definitions that text never reaches
(_used_only); the SHA is of that text. A line `--#lazy <name> ...` after it names library
functions the script calls only on rare paths: they, and what only they reach, are built
when one of them is first called in a call, not on every call (claim.lua: finalize and
the ends it reaches, which a plain claim never runs). Scripts are sent by the transport
(_transport.py), the one place that reloads a script the server forgot (NOSCRIPT) and
resends only that command, also for commands queued in a pipeline.

A new script: `<name>.lua` here, its header documenting KEYS, ARGV and the reply, its
`--#include` line; its wrapper in _calls.py (keys, ARGV from typed values, the reply's
parsing); its name in ALLOW_OOM if it must run on a full server. tests/unit/test_scripts.py
checks every script of this directory against its wrapper, so it fails until both exist.
Any status it writes goes through transition() (lib/transition.lua), naming its event.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from redis.exceptions import NoScriptError

_KEYS_RE = re.compile(r"KEYS\[(\d+)(?:\.\.(\d+))?\]")
_INCLUDE_RE = re.compile(r"^--#include ([a-z_ ]+)$", re.MULTILINE)


def is_noscript(reply: object) -> bool:
    """Whether a reply (or the error raised for it) says the server does not have the
    script: after a restart, a failover or SCRIPT FLUSH. The one test of it, for redis-py's
    clients and the fast connection alike; the caller loads the script and resends only
    that call."""
    if isinstance(reply, NoScriptError):
        return True
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")


@dataclass(frozen=True, slots=True)
class Script:
    """One atomic server-side operation (sent by the transport, _transport.py)."""

    name: str
    source: str
    sha: str
    numkeys: int


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
        "migrate",
        "journal",
        "signal_wait",
        "event",
        "control",
        "cascade",
        "query",
        "workflow",
        "purge",
        "delete",
    }
)


def includes(source: str) -> list[str]:
    """The library parts a script or part names on its `--#include` lines."""
    return [part for line in _INCLUDE_RE.findall(source) for part in line.split()]


@cache
def _part(part: str, where: str) -> str:
    path = resources.files(__package__) / "lib" / f"{part}.lua"
    if not path.is_file():
        raise ValueError(f"{where} includes {part!r}, which _scripts/lib/ does not have")
    return path.read_text(encoding="utf-8")


def _with_library(name: str, source: str) -> str:
    """The parts `source` includes, each once and after the parts it includes itself."""
    seen: set[str] = set()
    parts: list[str] = []

    def add(text: str, where: str) -> None:
        for part in includes(text):
            if part in seen:
                continue
            seen.add(part)
            own = _part(part, where)
            add(own, f"library part {part!r}")
            parts.append(own)

    add(source, f"script {name!r}")
    return "\n".join([*_used_only([_without_comment_lines(p) for p in parts], source), source])


_LOCAL_RE = re.compile(r"local (?:function )?([A-Za-z_][\w, ]*?)\s*(?:[=(]|$)")
_NAME_RE = re.compile(r"[A-Za-z_]\w*")
_LAZY_RE = re.compile(r"^--#lazy ([a-z_ ]+)$", re.MULTILINE)
_COMMENT_RE = re.compile(r"--\[\[.*?\]\]", re.DOTALL)


def _used_only(parts: list[str], source: str) -> list[str]:
    """The library parts with each top-level definition that `source` does not reach
    (directly, or through the definitions it uses) made empty lines. A script runs its
    library's top level on every call: each `local function` there is a closure built
    anew, each table a table, and the open upvalues of its ~100 locals are searched one by
    one as each closure is built; claim.lua and finish.lua, which include nearly the whole
    library through finalize, spent more server instructions on that per call than on a
    task's own commands. A part's top level holds only `local` definitions (their bodies
    indented, closed by `end` or a bracket at column 0); any other top-level statement is
    kept, with what it names. A Lua local can be reached only by its name, so a definition
    no kept text names is never run by this script. Lines are emptied, not removed, so an
    error's line numbers stay those of the assembled text."""
    chunks: list[tuple[list[str], list[str]]] = []  # (names defined, lines)
    for part in parts:
        for line in part.split("\n"):
            m = _LOCAL_RE.match(line)
            if m:
                chunks.append(([n.strip() for n in m.group(1).split(",")], [line]))
            elif chunks and (line[:1] in ("", " ", "\t", "}", ")", "-") or line.startswith("end")):
                chunks[-1][1].append(line)
            else:
                chunks.append(([], [line]))
    defines: dict[str, list[int]] = {}
    for i, (names, _) in enumerate(chunks):
        for n in names:
            defines.setdefault(n, []).append(i)

    def reach(texts: list[str], stop: set[str]) -> set[int]:
        found: set[int] = set()
        while texts:
            for n in set(_NAME_RE.findall(texts.pop())) - stop:
                for i in defines.get(n, ()):
                    if i not in found:
                        found.add(i)
                        texts.append("\n".join(chunks[i][1]))
        return found

    # what a comment names is not a use: whole-line comments and the header block are not
    # read (a trailing comment is, which at worst keeps a definition)
    own = _COMMENT_RE.sub("", _without_comment_lines(source))
    lazy = {n for line in _LAZY_RE.findall(source) for n in line.split()}
    top = [i for i, (names, _) in enumerate(chunks) if not names]
    while True:
        hot = reach([own] + ["\n".join(chunks[i][1]) for i in top], lazy) | set(top)
        # a lazy name that other library code calls is built with it
        named = {n for i in hot for n in _NAME_RE.findall("\n".join(chunks[i][1]))}
        if not lazy & named:
            break
        lazy -= named
    cold = sorted(reach(list(lazy & set(_NAME_RE.findall(own))), set()) - hot)
    out = []
    for i, (_, lines) in enumerate(chunks):
        out.extend(lines if i in hot else [""] * len(lines))
    if cold:
        entries = sorted(n for n in lazy if any(n in chunks[i][0] for i in cold))
        out.append("local lazy_built = nil")
        out.append("local function lazy_build()")
        out.append("  if lazy_built then return lazy_built end")
        for i in cold:
            out.extend(chunks[i][1])
        out.append("  lazy_built = { " + ", ".join(f"{n} = {n}" for n in entries) + " }")
        out.append("  return lazy_built")
        out.append("end")
        out.extend(f"local {n} = function(...) return lazy_build().{n}(...) end" for n in entries)
    return ["\n".join(out)]


def _without_comment_lines(source: str) -> str:
    """The text the server gets: each line that is only a `--` comment made empty. The
    server compiles a script once per load, at a cost that follows its length (a third of
    the hot scripts' text is such comments: about 2 % of a drain of 2,000 tasks' server
    instructions); emptied, not removed, so the line numbers of an error stay those of the
    files. Block comments (`--[[ ... ]]`, the headers) and `--#include` lines stay."""
    out: list[str] = []
    in_block = False
    for line in source.split("\n"):
        text = line.lstrip()
        if in_block:
            in_block = "]]" not in line
        elif text.startswith("--[["):
            in_block = "]]" not in text[4:]
        elif text.startswith("--") and not text.startswith("--#"):
            line = ""
        out.append(line)
    return "\n".join(out)


@cache
def load(name: str) -> Script:
    own = (resources.files(__package__) / f"{name}.lua").read_text(encoding="utf-8")
    source = _without_comment_lines(_with_library(name, own))
    if name in ALLOW_OOM:
        source = "#!lua flags=allow-oom\n" + source
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    return Script(name, source, sha, header_keys(own))


def _names() -> tuple[str, ...]:
    here = resources.files(__package__)
    found = (p.name.removesuffix(".lua") for p in here.iterdir() if p.name.endswith(".lua"))
    return tuple(sorted(n for n in found if not n.startswith("_")))


NAMES = _names()  # every script of this directory
