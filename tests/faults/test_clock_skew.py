"""Clock skew (RELIABILITY S4): three worker subprocesses whose wall clocks are off by +120 s,
−120 s and 0 (libfaketime, monotonic clock untouched) serve one queue and its cron schedule.

segue decides due times, leases and cron ticks by the server's clock (`TIME` inside the
scripts), so a skewed worker must not start a delayed task early or late, fire a tick twice or
at a skewed instant, or take a task whose lease another worker keeps renewing."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests._support import Engine
from tests._workers import Fleet
from tests.apps import skew
from tests.faults.conftest import Report, Scale
from tests.integration.conftest import eventually

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
SKEWS = ("+120s", "-120s", None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LIBFAKETIME.exists(),
        reason="libfaketime is not installed (Debian package faketime; scripts/test installs it)",
    ),
]


def faked(skew_by: str | None) -> dict[str, str]:
    """The environment of a worker whose wall clock is off by `skew_by` (None: not off)."""
    if skew_by is None:
        return {}
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": skew_by, "DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture
def skewed(segue_valkey: Engine, queue_name: str) -> Iterator[Fleet]:
    env = {
        "LEDGER_URL": segue_valkey.admin_url,
        "LEDGER_KEY": f"ledger:{{{queue_name}}}",
        "CRON_NAME": queue_name,
    }
    app = "tests.apps.skew:app"
    # 16 slots each: the App's default concurrency
    with Fleet(
        app, segue_valkey.url, queue_name, concurrency=16, lease=1.0, poll=0.1, env=env
    ) as f:
        yield f


def _server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_skewed_workers_keep_due_times_ticks_and_leases_by_the_server_clock(
    skewed: Fleet,
    segue_valkey: Engine,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    admin = redis.Redis.from_url(segue_valkey.admin_url)
    key = skewed.env["LEDGER_KEY"]
    app = skew.app
    app.settings = app.settings.replace(redis_url=segue_valkey.url, queue=queue_name)
    n_due = fault_scale.pick(200, 1_000)
    try:
        for s in SKEWS:
            skewed.start(env=faked(s))
        async with app:
            due_at: dict[str, int] = {}
            for _ in range(n_due):
                delay = fault_rng.uniform(0.5, fault_scale.seconds(3.0, 60.0))
                before = _server_ms(admin)
                h = await skew.due.options(delay=delay).enqueue(before + int(delay * 1000))
                due_at[h.id] = before + int(delay * 1000)
            longs = [await skew.long.enqueue(3.0) for _ in range(6)]
            for h in longs:
                await h.result(timeout=30)

            async def all_ran() -> bool:
                rows: list[bytes] = admin.lrange(key, 0, -1)  # type: ignore[assignment]
                return sum(1 for r in rows if r.startswith(b"due ")) >= n_due

            await eventually(all_ran, timeout=90, interval=0.2)
        raw: list[bytes] = admin.lrange(key, 0, -1)  # type: ignore[assignment]
        rows = [r.decode().split() for r in raw]
    finally:
        admin.close()
        skewed.stop_all()
        # schedules are server-wide under the prefix: leave none behind for other tests
        async with app:
            for schedule in await app.schedules():
                if schedule.queue == queue_name:
                    await app.unschedule(schedule.id)
    dues = [r for r in rows if r[0] == "due"]
    # started at or after the due time by the server clock (1 s of slack for rounding), and
    # not held back by a worker whose clock says it is not yet time (+5 s on a loaded box)
    early = [r for r in dues if int(r[3]) < int(r[4]) - 1_000]
    late = [r for r in dues if int(r[3]) > int(r[4]) + 5_000]
    assert Counter(r[1] for r in dues) == Counter(set(due_at))  # each ran once
    assert early == [] and late == []
    by_worker = Counter(r[2].rsplit("-", 2)[1] for r in dues)
    assert len(by_worker) == len(SKEWS)  # every skewed worker took part
    ticks = [r for r in rows if r[0] == "tick"]
    tick_ids = Counter(r[1] for r in ticks)
    assert ticks and max(tick_ids.values()) == 1  # no tick fired twice
    for r in ticks:
        instant = int(r[1].rsplit("-", 1)[1])
        assert abs(int(r[3]) - instant) < 5_000  # fired near its instant by the server clock
    long_runs = Counter(r[1] for r in rows if r[0] == "long")
    assert set(long_runs.values()) == {1}  # leases renewed across skew: no false reclaim
    lateness = sorted(int(r[3]) - int(r[4]) for r in dues)
    fault_report.add(
        delayed=len(dues),
        early_starts=len(early),
        late_starts=len(late),
        start_after_due_ms_p50=lateness[len(lateness) // 2],
        start_after_due_ms_max=lateness[-1],
        ticks=len(ticks),
        duplicate_ticks=sum(v - 1 for v in tick_ids.values()),
        false_reclaims=sum(v - 1 for v in long_runs.values()),
        skews=[s or "0" for s in SKEWS],
    )
