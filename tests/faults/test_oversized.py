"""P3 (RELIABILITY §8 D): oversized arguments (1 MiB + 1 byte encoded, 16 MiB, 100 MiB) are
refused in the client with PayloadError before a byte reaches the server: the server's
command count and input bytes do not move, and no key is written. A batch or a workflow
with one oversized call is refused whole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App, PayloadError
from tests._support import Engine, start_server, stop

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

LIMIT = 1024 * 1024
OVERHEAD = len(b'[[""],{}]')  # the JSON around one string argument


@pytest.fixture
def quiet_server(tmp_path: Path) -> Iterator[Engine]:
    """A server no other test talks to, so its counters move only for this one."""
    engine, proc = start_server("valkey", tmp_path)
    yield engine
    stop(proc)


async def _counters(admin: Any) -> tuple[int, int]:
    stats = await admin.info("stats")
    return int(stats["total_commands_processed"]), int(stats["total_net_input_bytes"])


async def test_oversized_arguments_are_refused_before_any_write(
    quiet_server: Engine, queue_name: str, fault_seed: int, fault_report: Any
) -> None:
    app = App("p3", redis_url=quiet_server.url, queue=queue_name)

    @app.task(name="p3.take")
    async def take(data: str) -> int:
        return len(data)

    admin: Any = redis.asyncio.Redis.from_url(quiet_server.admin_url)
    reject_ms: dict[str, float] = {}
    sizes = {"1MiB+1": LIMIT + 1, "16MiB": 16 * LIMIT, "100MiB": 100 * LIMIT}
    async with app:
        # a first enqueue makes the connection and reads the queue's shard count (cached,
        # a read, no write): what is measured below is a refusal alone
        with pytest.raises(PayloadError):
            await take.enqueue("x" * (2 << 20))
        for label, encoded in sizes.items():
            data = "x" * (encoded - OVERHEAD)
            before = await _counters(admin)
            began = time.perf_counter()
            with pytest.raises(PayloadError) as caught:
                await take.enqueue(data)
            reject_ms[label] = round((time.perf_counter() - began) * 1000, 2)
            after = await _counters(admin)
            # the only command between the two reads is the first INFO itself
            assert after[0] - before[0] == 1, label
            assert after[1] - before[1] < 100, label
            assert str(caught.value) == (
                f"arguments of task p3.take is {encoded:,} bytes encoded, over the limit of "
                "1,048,576 bytes (Settings.max_payload_bytes); pass a reference (a path, a "
                "URL, an id) instead"
            )
            del data

        big = "x" * (LIMIT + 1 - OVERHEAD)
        before = await _counters(admin)
        with pytest.raises(PayloadError):
            await app.enqueue_many([take.call("a"), take.call(big), take.call("b")])
        with pytest.raises(PayloadError):
            await app.group([take.call("a"), take.call(big)]).enqueue()
        after = await _counters(admin)
        assert after[0] - before[0] == 1
        keys = [k async for k in admin.scan_iter(f"segue:{{{queue_name}}}:*")]
        assert keys == []
        # the limit itself is allowed
        h = await take.enqueue("x" * (LIMIT - OVERHEAD))
        assert await h.status() == "queued"
    await admin.aclose()
    fault_report.add(seed=fault_seed, reject_ms=reject_ms, keys_written=len(keys))
