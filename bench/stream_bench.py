"""Output streams: chunks per second from one task to one reader (`ctx.stream` in a worker
process, `handle.stream()` here), the latency of a chunk from `ctx.stream` to the reader
(first chunk of a run, and chunks of a slow producer), beside the rate of single-entry
XADDs sent pipelined (1,000 per round trip) to the same server in the same run.

    python bench/stream_bench.py [--n 100000]

Chunks are short strings, as tokens of an LLM's output. Latencies compare `time.time()` in
the task with `time.time()` here: one machine, one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import time

import redis.asyncio
from _server import percentiles, server, worker

from segue import App, Context

app = App("bench", redis_url=os.environ.get("BENCH_URL"), queue="streams")


@app.task(name="bench.talk")
async def talk(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.stream(f"tok{i} ")
    return n


@app.task(name="bench.tick")
async def tick(ctx: Context, n: int, every: float) -> None:
    for _ in range(n):
        await ctx.stream(time.time())
        await asyncio.sleep(every)


async def _xadd_rate(url: str, n: int) -> float:
    client = redis.asyncio.Redis.from_url(url)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + 1000)):
                pipe.xadd("bench:xadd", {"c": f'"tok{i} "'})
            await pipe.execute()
        rate = n / (time.perf_counter() - t0)
        await client.delete("bench:xadd")
        return rate
    finally:
        await client.aclose()


async def main(n: int) -> None:
    with server() as url:
        os.environ["BENCH_URL"] = url
        mod = importlib.import_module("stream_bench")  # again, now that the URL is known
        with worker("stream_bench:app", url, concurrency=4):
            async with mod.app:
                await (await mod.talk.enqueue(100)).result(timeout=30)  # warm up
                xadd = await _xadd_rate(url, n)
                t0 = time.perf_counter()
                h = await mod.talk.enqueue(n)
                count = 0
                async for _ in h.stream():
                    count += 1
                took = time.perf_counter() - t0
                assert count == n, count
                print(f"pipelined XADD, one entry each: {xadd:,.0f} entries/s ({n:,})")
                print(
                    f"ctx.stream -> handle.stream, one task, one reader: {n / took:,.0f} "
                    f"chunks/s ({n:,} chunks in {took:.2f} s, from enqueue to the end)"
                )
                firsts: list[float] = []
                for _ in range(30):
                    h = await mod.tick.enqueue(1, 0.0)
                    firsts.extend([time.time() - sent async for sent in h.stream()])
                p50, p99 = percentiles(firsts)
                print(f"first chunk of a run, task to reader: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
                h = await mod.tick.enqueue(200, 0.005)
                lags = [time.time() - sent async for sent in h.stream()]
                p50, p99 = percentiles(lags)
                print(f"a chunk every 5 ms, task to reader: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().n))
