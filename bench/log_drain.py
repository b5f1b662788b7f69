"""Drain rate of the default worker by log level and format, stderr to a file or a terminal.

    python bench/log_drain.py [--n 20000] [--runs 3] [--server valkey|redis]

Each case queues N no-op tasks (results stored), starts `segue worker segue_bench:app` as a
user starts it (default concurrency, `--log-level L --log-format F`), its stderr going to a
file or to a pseudo-terminal of 120 columns that a thread reads, and counts tasks done per
second between 10 % and 90 % of N (start-up excluded), and the worker's CPU time per task
over the same span (read from /proc: on a loaded machine the rate follows the load, the
CPU per task much less). Cases are interleaved run by run so a change of the machine's load
hits all alike; the median of the runs is printed.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from run import HERE, System, start_server, stop

CASES = [
    (level, fmt, where)
    for where in ("file", "terminal")
    for level, fmt in (("warning", "text"), ("info", "text"), ("info", "json"))
]


def _reader(fd: int) -> None:
    """Drain the terminal as a person's terminal would (a full pty blocks the worker)."""
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_rate(
    system: System, n: int, level: str, fmt: str, where: str, log: Path
) -> tuple[float, float]:
    """Tasks per second, and the worker's CPU microseconds per task, from 10 % to 90 %."""
    system.client.flushall()
    system.driver("prepare", n)
    cmd = [system.py, "-m", "segue", "worker", "segue_bench:app"]
    cmd += ["--log-level", level, "--log-format", fmt]
    env = system.env(16)
    master = -1
    if where == "terminal":
        master, slave = pty.openpty()
        fcntl_size = struct.pack("HHHH", 40, 120, 0, 0)
        import fcntl

        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl_size)
        threading.Thread(target=_reader, args=(master,), daemon=True).start()
        stderr: int = slave
        env = {**env, "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
    else:
        stderr = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    os.close(stderr)
    try:
        marks: dict[str, tuple[float, int, float]] = {}
        deadline = time.monotonic() + 300
        while len(marks) < 2:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker did not finish ({level} {fmt} {where})")
            done = system.done()
            now = time.perf_counter()
            if "a" not in marks and done >= n // 10:
                marks["a"] = (now, done, cpu_seconds(proc.pid))
            if done >= n * 9 // 10:
                marks["b"] = (now, done, cpu_seconds(proc.pid))
            time.sleep(0.002)
        (t0, d0, c0), (t1, d1, c1) = marks["a"], marks["b"]
        return (d1 - d0) / (t1 - t0), 1e6 * (c1 - c0) / (d1 - d0)
    finally:
        stop(proc)
        if master >= 0:
            os.close(master)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", default="valkey")
    parser.add_argument("--cases", help="level:format:where,... (default: all six)", default=None)
    ns = parser.parse_args()
    cases = [tuple(c.split(":")) for c in ns.cases.split(",")] if ns.cases else CASES
    server, url = start_server(ns.server)
    system = System("segue", url)
    rates: dict[tuple[str, ...], list[float]] = {c: [] for c in cases}
    cpus: dict[tuple[str, ...], list[float]] = {c: [] for c in cases}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "worker.log"
            for run in range(ns.runs):
                for case in cases:
                    level, fmt, where = case
                    rate, cpu = drain_rate(system, ns.n, level, fmt, where, log)
                    rates[case].append(rate)
                    cpus[case].append(cpu)
                    print(
                        f"run {run + 1}: {' '.join(case):<22} {rate:>8,.0f} tasks/s"
                        f" {cpu:>6,.0f} µs CPU/task",
                        flush=True,
                    )
                    if case[2] == "file":
                        lines = log.read_text().count("\n")
                        print(f"        log file: {lines:,} lines", flush=True)
    finally:
        server.terminate()
        server.wait()
    print(
        "best run (least disturbed): "
        + ", ".join(f"{' '.join(c)} {max(rates[c]):,.0f}/s {min(cpus[c]):,.0f} µs" for c in cases)
    )
    print(f"\nmedian of {ns.runs} runs, {ns.n:,} tasks each (python {sys.version.split()[0]})")
    print(
        "| stderr | --log-level | --log-format | drain (tasks/s) | vs warning "
        "| worker CPU per task | rate the CPU allows, vs warning |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for where in ("file", "terminal"):
        if ("warning", "text", where) not in rates:
            continue
        base = statistics.median(rates[("warning", "text", where)])
        base_cpu = statistics.median(cpus[("warning", "text", where)])
        for level, fmt, w in cases:
            if w != where:
                continue
            med = statistics.median(rates[(level, fmt, where)])
            cpu = statistics.median(cpus[(level, fmt, where)])
            print(
                f"| {where} | {level} | {fmt} | {med:,.0f} | {100 * med / base:.0f} % "
                f"| {cpu:,.0f} µs | {100 * base_cpu / cpu:.0f} % |"
            )


if __name__ == "__main__":
    main()
