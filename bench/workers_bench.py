"""segue's worker with 1 and 2 processes, and on asyncio and uvloop, interleaved.

    python bench/workers_bench.py [--n 20000] [--rounds 3] [--server redis|valkey]

Each round runs every configuration once, in turn, against one server (so a load that comes
and goes on the machine touches them alike), and the table gives each one's median:
  drain, workers up   N queued no-op tasks drained by workers already registered (the queue
                      is paused until they are), from its resume to the last result
  enqueue one / batch the producer's enqueue rates (N/4 one by one, N batched) on that loop
"""

from __future__ import annotations

import argparse
import statistics

from run import System, start_server, stop, warm_drain

CONFIGS = [  # (label, processes, loop)
    ("asyncio, one process", None, "asyncio"),
    ("asyncio, --processes 1", 1, "asyncio"),
    ("asyncio, --processes 2", 2, "asyncio"),
    ("uvloop, one process", None, "uvloop"),
    ("uvloop, --processes 2", 2, "uvloop"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", choices=["redis", "valkey"], default="redis")
    ns = parser.parse_args()
    proc, url = start_server(ns.server)
    runs: dict[str, dict[str, list[float]]] = {c[0]: {} for c in CONFIGS}
    try:
        for r in range(ns.rounds):
            for label, processes, loop in CONFIGS:
                system = System("segue", url, processes, loop)
                row = runs[label]
                row.setdefault("drain", []).append(warm_drain(system, ns.n, 32))
                if processes is None:  # the producer does not depend on the worker's processes
                    system.client.flushall()
                    one = system.driver("enqueue-one", ns.n // 4)["rate"]
                    row.setdefault("one", []).append(one)
                    system.client.flushall()
                    batch = system.driver("enqueue-batch", ns.n)["rate"]
                    row.setdefault("batch", []).append(batch)
                print(f"round {r + 1}: {label}: {row['drain'][-1]:.0f}/s", flush=True)
    finally:
        stop(proc)
    print(f"\nserver: {ns.server}, N = {ns.n}, concurrency 32 per process, {ns.rounds} rounds")
    print(f"{'configuration':<26}{'drain/s':>12}{'enqueue one/s':>15}{'batched/s':>12}")
    for label, row in runs.items():
        cells = [statistics.median(row[k]) if k in row else None for k in ("drain", "one", "batch")]
        shown = [f"{c:.0f}" if c is not None else "-" for c in cells]
        print(f"{label:<26}{shown[0]:>12}{shown[1]:>15}{shown[2]:>12}")


if __name__ == "__main__":
    main()
