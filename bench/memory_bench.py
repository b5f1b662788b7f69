"""Server memory per task at rest, segue against BullMQ, in one run on one kind of server.

    python bench/memory_bench.py [--n 100000] [--kinds waiting,finished,...]
                                 [--src PATH ...] [--no-bullmq] [--json out.json]

For each kind of record and each library, a fresh redis-server 7.0 (/usr/bin/redis-server,
its compiled-in defaults: hash-max-listpack-value 64, hash-max-listpack-entries 128; no
persistence) is filled with N tasks of that kind, and the figure is the growth of
`used_memory` divided by N (the script cache, `used_memory_scripts`, left out: it is paid
once per server, not per task). Everything a library keeps per task counts: the record, its
index entries, its lifetime (TTL) entry, and a capped event stream's share.

  waiting   N no-op tasks enqueued, no worker
  finished  N no-op tasks run by a worker, results kept (segue: the default ttl of 1 h;
            BullMQ: completed jobs kept, its default)
  delayed   N tasks enqueued with a delay of one hour
  paused    N tasks that wrote their state and stopped until later (segue:
            `ctx.state.set` then `raise Pause(delay=3600)`; BullMQ: its step-job pattern,
            `job.updateData` then `job.moveToDelayed` and `DelayedError`)
  workflow  N/2 two-step chains at rest (segue: `a.call(i) | b.call()`; BullMQ: a parent
            with one child through FlowProducer), per step

segue runs from each `--src` tree (default: this checkout's), as a subprocess with that tree
first on PYTHONPATH, so a before/after comparison is one run on one server build. BullMQ
runs from bench/node (`npm install` there on first use; node must be on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
NODE = HERE / "node"
SERVER = "/usr/bin/redis-server"
KINDS = ("waiting", "finished", "delayed", "paused", "workflow")
QUEUE = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, ok: Any, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"]) - int(info.get("used_memory_scripts", 0))


def measure(fill: Any, n: int) -> float:
    """Bytes per task: `fill(url)` leaves n tasks at rest on a fresh server."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            _wait("the server", lambda: _ping(client), 10)
            before = _memory(client)
            fill(url)
            after = _memory(client)
            return (after - before) / n
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=10)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# --- segue's side: `python memory_bench.py _segue <url> <kind> <n>`, run with a --src tree
# first on PYTHONPATH; its worker is `segue worker memory_bench:app` from the same tree.


def _segue_app() -> Any:
    from segue import App, Context, Pause

    app = App("memory", redis_url=os.environ.get("BENCH_URL"), queue=QUEUE)

    @app.task(name="bench.noop")
    async def noop(i: int) -> int:
        return i

    @app.task(name="bench.hold")
    async def hold(ctx: Context, i: int) -> int:
        await ctx.state.set(x=i)
        raise Pause(delay=3600)

    @app.task(name="bench.last")
    async def last(x: int) -> int:
        return x

    return app, noop, hold, last


if __name__ != "__main__" and os.environ.get("BENCH_URL"):
    app, _noop, _hold, _last = _segue_app()


def _worker(src: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url,
           "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "segue", "worker", "memory_bench:app",
         "--concurrency", "64", "--log-level", "warning"],
        cwd=HERE, env=env,
    )  # fmt: skip


async def _segue_fill(url: str, kind: str, n: int) -> None:
    app, noop, hold, last = _segue_app()
    async with app:
        if kind == "workflow":
            for i in range(0, n // 2, 50):
                chains = [(noop.call(j) | last.call()) for j in range(i, min(n // 2, i + 50))]
                await asyncio.gather(*(c.enqueue() for c in chains))
            return
        task = hold if kind == "paused" else noop
        for i in range(0, n, 1000):
            calls = range(i, min(n, i + 1000))
            if kind == "delayed":
                await app.enqueue_many([noop.options(delay=3600).call(j) for j in calls])
            else:
                await app.enqueue_many([task.call(j) for j in calls])


def segue_fill(src: Path, kind: str, n: int) -> Any:
    def fill(url: str) -> None:
        env = {**os.environ, "BENCH_URL": url, "PYTHONPATH": str(src)}
        subprocess.run([sys.executable, __file__, "_segue", url, kind, str(n)], env=env,
                       check=True)  # fmt: skip
        if kind not in ("finished", "paused"):
            return
        client = redis.Redis.from_url(url)
        key = f"segue:{{{QUEUE}}}:" + ("done:succeeded" if kind == "finished" else "sched")
        worker = _worker(src, url)
        try:
            _wait(f"{n} tasks {kind}", lambda: client.zcard(key) >= n)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            client.close()

    return fill


def bullmq_fill(kind: str, n: int) -> Any:
    def fill(url: str) -> None:
        subprocess.run(["node", str(NODE / "bullmq_memory.mjs"), url, QUEUE, kind, str(n)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip

    return fill


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_segue":
        _, _, url, kind, n = sys.argv
        asyncio.run(_segue_fill(url, kind, int(n)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--src", type=Path, action="append", default=[])
    parser.add_argument("--no-bullmq", action="store_true")
    parser.add_argument("--json", type=Path)
    ns = parser.parse_args()
    srcs = [p.resolve() for p in ns.src] or [HERE.parent / "src"]
    kinds = ns.kinds.split(",")
    if not ns.no_bullmq and not (NODE / "node_modules" / "bullmq").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE, check=True)
    columns = [f"segue {src}" for src in srcs] + ([] if ns.no_bullmq else ["BullMQ"])
    table: dict[str, dict[str, float]] = {}
    for kind in kinds:
        row = table.setdefault(kind, {})
        for src, col in zip(srcs, columns, strict=False):
            row[col] = measure(segue_fill(src, kind, ns.n), ns.n)
        if not ns.no_bullmq:
            row["BullMQ"] = measure(bullmq_fill(kind, ns.n), ns.n)
        print(kind, "  ".join(f"{c}: {v:,.0f} B" for c, v in row.items()), flush=True)
    print(f"\nbytes per task at rest, n = {ns.n:,}, {SERVER} defaults")
    print("| kind | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for kind, row in table.items():
        print(f"| {kind} | " + " | ".join(f"{row[c]:,.0f}" for c in columns) + " |")
    if ns.json:
        ns.json.write_text(json.dumps({"n": ns.n, "table": table}, indent=1))


if __name__ == "__main__":
    main()
