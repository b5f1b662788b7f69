"""What payloads by reference cost: enqueue and drain of tasks with a 1 MiB argument, stored
in the record (max_payload_bytes raised to hold it) and offloaded (offload_bytes 256 KiB, the
recommended value), on a throwaway valkey server on loopback; and the drain of small tasks
with offloading on and off (a payload under offload_bytes must cost nothing more).

    python bench/offload_bench.py [--n 200] [--plain 5000] [--rounds 3]

Prints JSON. The worker runs in this process (app.drain(), concurrency 16). Loopback has no
network latency: figures are this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from _server import server

from segue import App

MiB = 1024 * 1024


async def _big(url: str, n: int, offloaded: bool) -> dict[str, Any]:
    options: dict[str, Any] = (
        {"offload_bytes": 256 * 1024} if offloaded else {"max_payload_bytes": 2 * MiB}
    )
    queue = "off_ref" if offloaded else "off_inline"
    app = App("offload-bench", redis_url=url, queue=queue, **options)

    @app.task(name="bench.size", ttl=60)
    async def size(text: str) -> int:
        return len(text)

    text = "x" * MiB
    async with app:
        started = time.perf_counter()
        for _ in range(n):
            await size.enqueue(text)
        one = time.perf_counter() - started
        started = time.perf_counter()
        await app.drain()
        drained = time.perf_counter() - started
        started = time.perf_counter()
        await app.enqueue_many([size.call(text) for _ in range(n)])
        batch = time.perf_counter() - started
        await app.drain()
    return {
        "enqueue_per_s": round(n / one, 1),
        "enqueue_many_per_s": round(n / batch, 1),
        "drain_per_s": round(n / drained, 1),
    }


async def _plain(url: str, n: int, offloaded: bool, round_: int) -> dict[str, Any]:
    options: dict[str, Any] = {"offload_bytes": 256 * 1024} if offloaded else {}
    app = App("offload-bench", redis_url=url, queue=f"plain_{offloaded}_{round_}", **options)

    @app.task(name="bench.noop", ttl=60)
    async def noop(i: int) -> int:
        return i

    async with app:
        started = time.perf_counter()
        for start in range(0, n, 1000):
            await app.enqueue_many([noop.call(i) for i in range(start, min(n, start + 1000))])
        enqueued = time.perf_counter() - started
        started = time.perf_counter()
        await app.drain()
        drained = time.perf_counter() - started
    return {"enqueue_many_per_s": round(n / enqueued), "drain_per_s": round(n / drained)}


async def _all(url: str, n: int, plain: int, rounds: int) -> dict[str, Any]:
    return {
        "n": n,
        "argument_bytes": MiB,
        "inline": await _big(url, n, offloaded=False),
        "offloaded": await _big(url, n, offloaded=True),
        "plain_n": plain,
        **await _plain_rounds(url, plain, rounds),
    }


async def _plain_rounds(url: str, n: int, rounds: int) -> dict[str, Any]:
    """Small tasks with offloading off and on, alternated `rounds` times (a shared machine
    drifts): the median of each."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for r in range(rounds):
        for offloaded in (False, True) if r % 2 == 0 else (True, False):
            runs[offloaded].append(await _plain(url, n, offloaded, r))

    def median(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {k: sorted(row[k] for row in rows)[len(rows) // 2] for k in rows[0]}

    return {"plain_offload_off": median(runs[False]), "plain_offload_on": median(runs[True])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="tasks with a 1 MiB argument")
    parser.add_argument("--plain", type=int, default=5000, help="small tasks")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the small ones")
    ns = parser.parse_args()
    with server() as url:
        print(json.dumps(asyncio.run(_all(url, ns.n, ns.plain, ns.rounds)), indent=1))


if __name__ == "__main__":
    main()
