"""Cron schedules: stored, listed and removed; each tick fired once among many workers,
across worker restarts and an outage of every worker; kept across a server restart."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from segue import App, ConfigurationError, Context
from segue._calls import cron_advance, cron_put, cron_take
from segue._keys import CronKeys
from tests._support import Server, admin_client, ledger
from tests._workers import Fleet
from tests.integration.conftest import eventually, serving

KEYS = CronKeys("segue")


async def stored(engine: Any, sid: str) -> list[Any]:
    """What each cron key holds for one schedule (all None once it is removed)."""
    client = admin_client(engine)
    try:
        return [
            await client.hget(KEYS.defs, sid),
            await client.zscore(KEYS.due, sid),
            await client.zscore(KEYS.firing, sid),
            await client.hget(KEYS.fired, sid),
        ]
    finally:
        await client.aclose()


def tick_of(task_id: str) -> int:
    return int(task_id.rsplit("-", 1)[1])


def gaps(ticks: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(ticks)]


# --- contract tests: a single server and the cluster ----------------------------------------


async def test_schedules_are_listed_updated_and_removed_without_a_trace(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app()

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    async with app:
        before = datetime.now(UTC)
        sid = await app.schedule(double.call(2), cron="*/5 * * * *", tz="Europe/Lisbon")
        named = await app.schedule(
            double.call(3), cron="0 9 * * mon-fri", id=f"{queue_name}-weekdays", catch_up=True
        )
        try:
            infos = {i.id: i for i in await app.schedules()}
            five = infos[sid]
            assert (five.task, five.queue, five.cron, five.tz) == (
                "double",
                queue_name,
                "*/5 * * * *",
                "Europe/Lisbon",
            )
            assert not five.catch_up and five.last_tick is None
            assert five.next_run is not None and five.next_run.tzinfo == ZoneInfo("Europe/Lisbon")
            assert before < five.next_run <= before + timedelta(minutes=5)
            assert five.next_run.minute % 5 == 0 and five.next_run.second == 0
            weekdays = infos[named]
            assert weekdays.catch_up and weekdays.tz is None
            assert weekdays.next_run is not None and weekdays.next_run.weekday() < 5
            assert (weekdays.next_run.hour, weekdays.next_run.minute) == (9, 0)

            # the same expression again keeps the next tick; another one re-times it
            assert await app.schedule(double.call(4), cron="*/5 * * * *", tz="Europe/Lisbon",
                                      id=sid) == sid  # fmt: skip
            again = {i.id: i for i in await app.schedules()}[sid]
            assert again.next_run == five.next_run
            await app.schedule(double.call(4), cron="0 0 1 1 *", tz="Europe/Lisbon", id=sid)
            yearly = {i.id: i for i in await app.schedules()}[sid]
            assert yearly.cron == "0 0 1 1 *" and yearly.next_run is not None
            assert (yearly.next_run.month, yearly.next_run.day) == (1, 1)

            with pytest.raises(ConfigurationError, match="'61 \\* \\* \\* \\*' is invalid"):
                await app.schedule(double.call(2), cron="61 * * * *")
        finally:
            assert await app.unschedule(sid) is True
            assert await app.unschedule(named) is True
        assert await app.unschedule(sid) is False
        assert await stored(segue_engine, sid) == [None, None, None, None]
        assert await stored(segue_engine, named) == [None, None, None, None]
        assert {sid, named}.isdisjoint(i.id for i in await app.schedules())


async def test_a_due_tick_is_leased_to_one_worker_and_only_its_taker_advances_it(
    make_app: Callable[..., App], segue_engine: Any, queue_name: str
) -> None:
    app = make_app()
    sid = f"{queue_name}-fence"
    definition = b'{"spec":"x"}'
    async with app:
        broker = await app._client.broker()
        put = cron_put(KEYS, sid, definition, "x", 1_000)  # due since 1970
        assert (await broker.run_calls([put]))[0][0] == 2
        try:
            first = (await broker.run_calls([cron_take(KEYS, 60_000, 10)]))[0]
            assert [(r[0].decode(), int(r[1]), r[2]) for r in first[2:]] == [
                (sid, 1_000, definition)
            ]
            # leased: another worker's take leaves it alone
            second = (await broker.run_calls([cron_take(KEYS, 60_000, 10)]))[0]
            assert sid not in [r[0].decode() for r in second[2:]]
            assert int(second[1]) <= int(second[0]) + 60_000  # look again by the lease's end
            # only the tick taken moves the schedule, once
            stale = cron_advance(KEYS, sid, 999, 999, 5_000)
            advance = cron_advance(KEYS, sid, 1_000, 1_000, 2_000)
            assert await broker.run_calls([stale, advance, advance]) == [0, 1, 0]
            assert await stored(segue_engine, sid) == [definition, 2_000.0, None, b"1000"]
            # the same spec keeps the next tick; a lease that runs out frees the tick
            assert (await broker.run_calls([cron_put(KEYS, sid, definition, "x", "")]))[0][0] == 1
            await broker.run_calls([cron_take(KEYS, 1, 10)])

            async def free_again() -> bool:
                reply = (await broker.run_calls([cron_take(KEYS, 60_000, 10)]))[0]
                return sid in [r[0].decode() for r in reply[2:]]

            await eventually(free_again, timeout=5)
        finally:
            await app.unschedule(sid)


async def test_a_dynamic_schedule_fires_each_tick_once_until_it_is_removed(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()
    runs: list[tuple[str, float]] = []

    @app.task(name="beat")
    def beat(ctx: Context, label: str) -> None:
        runs.append((ctx.task_id, time.time()))

    def fired(label: str) -> list[int]:
        return sorted(tick_of(i) for i, _ in runs if f"cron-{label}-" in i)

    async with app, serving(app), serving(app):  # two workers, two schedulers
        sid = await app.schedule(beat.call("a"), cron="*/1 * * * * *", id=f"{queue_name}-a")
        probe = f"{queue_name}-probe"
        try:

            async def two_fired() -> bool:
                return len(fired(sid)) >= 2

            await eventually(two_fired, timeout=10)
            assert await app.unschedule(sid)
            removed_at = time.time() * 1000
            # proof that the schedulers went on: a probe fires twice after the removal
            await app.schedule(beat.call("probe"), cron="*/1 * * * * *", id=probe)

            async def probe_fired_twice() -> bool:
                return len(fired(probe)) >= 2

            await eventually(probe_fired_twice, timeout=10)
        finally:
            await app.unschedule(sid)
            await app.unschedule(probe)
        ticks = fired(sid)
        assert gaps(ticks) == [1000] * (len(ticks) - 1)
        assert all(t <= removed_at for t in ticks)  # nothing after the removal
        assert max(Counter(i for i, _ in runs).values()) == 1
        for task_id, ran in runs:
            assert 0 <= ran * 1000 - tick_of(task_id) < 1000


async def test_a_worker_registers_the_declared_schedules(
    make_app: Callable[..., App], queue_name: str
) -> None:
    app = make_app()

    @app.cron("0 3 * * *", name=f"{queue_name}.nightly", tz="America/New_York")
    async def nightly() -> None:
        pass

    async with app:
        try:
            async with serving(app):

                async def registered() -> bool:
                    return f"{queue_name}.nightly" in {i.id for i in await app.schedules()}

                await eventually(registered, timeout=5)
            # a task without parameters may be scheduled as it is
            early = await app.schedule(nightly, cron="0 4 * * *", id=f"{queue_name}.early")
            infos = {i.id: i for i in await app.schedules()}
            info = infos[f"{queue_name}.nightly"]
            assert info.task == f"{queue_name}.nightly" and info.queue == queue_name
            assert info.next_run is not None and info.next_run.hour == 3
            assert infos[early].task == info.task and infos[early].tz is None
        finally:
            await app.unschedule(f"{queue_name}.nightly")
            await app.unschedule(f"{queue_name}.early")


# --- worker processes and restarts (a single server) -------------------------------------------


@pytest.fixture
def cron_workers(segue_valkey: Any, queue_name: str) -> Iterator[Fleet]:
    """`segue worker tests.apps.cron_procs:app` subprocesses; stops only its own."""
    env = {"LEDGER_URL": segue_valkey.admin_url, "CRON_NAME": queue_name}
    app = "tests.apps.cron_procs:app"
    with Fleet(app, segue_valkey.url, queue_name, lease=1.5, env=env) as workers:
        yield workers

    async def unschedule() -> None:
        async with App("cleanup", redis_url=segue_valkey.url) as app:
            for kind in ("coalesce", "catchup"):
                await app.unschedule(f"{queue_name}.{kind}")

    asyncio.run(unschedule())


async def fires(engine: Any, queue: str, kind: str) -> list[tuple[int, str, int]]:
    """(tick, worker, started at ms) of each run of one of the schedules, by tick."""
    rows = await ledger(engine.admin_url, queue)
    return sorted((tick_of(r[0]), r[1], int(r[2])) for r in rows if f".{kind}-" in r[0])


@pytest.mark.slow
@pytest.mark.serial
async def test_three_worker_processes_fire_each_second_once_through_a_restart(
    cron_workers: Fleet, segue_valkey: Any, queue_name: str
) -> None:
    for _ in range(3):
        cron_workers.start()
    await cron_workers.ready()  # each, before any is stopped: SIGTERM is handled from there

    async def fired(n: int) -> bool:
        return len(await fires(segue_valkey, queue_name, "coalesce")) >= n

    await eventually(lambda: fired(3), timeout=20)
    # a worker stopped and started again registers the declared schedules again
    restarted = cron_workers.slots[0]
    cron_workers.terminate(restarted)
    assert cron_workers.wait_exit(restarted, timeout=10) == 0
    await cron_workers.ready(cron_workers.start())
    await eventually(lambda: fired(8), timeout=15)
    assert set(cron_workers.terminate_all(timeout=10).values()) <= {0}
    rows = await ledger(segue_valkey.admin_url, queue_name)
    assert max(Counter(r[0] for r in rows).values()) == 1  # no tick ran twice
    for kind in ("coalesce", "catchup"):
        runs = await fires(segue_valkey, queue_name, kind)
        ticks = [t for t, _, _ in runs]
        assert len(ticks) >= 7
        assert gaps(ticks) == [1000] * (len(ticks) - 1)
        late = [started - tick for tick, _, started in runs]
        assert all(0 <= d < 1000 for d in late), late


@pytest.mark.slow
async def test_ticks_missed_while_every_worker_was_down_fire_once_or_each_with_catch_up(
    cron_workers: Fleet, segue_valkey: Any, queue_name: str
) -> None:
    cron_workers.start()
    cron_workers.start()
    await cron_workers.ready()

    async def fired(kind: str, n: int, after: float = 0) -> bool:
        runs = await fires(segue_valkey, queue_name, kind)
        return len([t for t, _, _ in runs if t > after]) >= n

    await eventually(lambda: fired("coalesce", 2), timeout=20)
    assert set(cron_workers.terminate_all(timeout=10).values()) <= {0}
    async with App("client", redis_url=segue_valkey.url) as client:
        infos = {i.id: i for i in await client.schedules()}
    missed = {}
    for kind in ("coalesce", "catchup"):
        nxt = infos[f"{queue_name}.{kind}"].next_run
        assert nxt is not None
        missed[kind] = int(nxt.timestamp() * 1000)  # the first tick nobody fires
    await asyncio.sleep(5)  # the outage itself: every worker down for five ticks or more
    up_at = time.time() * 1000
    await cron_workers.ready(cron_workers.start())
    await eventually(lambda: fired("coalesce", 2, after=up_at), timeout=20)
    await eventually(lambda: fired("catchup", 2, after=up_at), timeout=20)
    assert set(cron_workers.terminate_all(timeout=10).values()) <= {0}

    coalesce = [t for t, _, _ in await fires(segue_valkey, queue_name, "coalesce")]
    outage = [t for t in coalesce if missed["coalesce"] <= t <= up_at]
    assert outage == [missed["coalesce"]]  # one fire stands for every missed tick
    after = [t for t in coalesce if t > missed["coalesce"]]
    assert after[0] > up_at  # then on from the present
    assert gaps(after) == [1000] * (len(after) - 1)

    catchup = [t for t, _, _ in await fires(segue_valkey, queue_name, "catchup")]
    since = [t for t in catchup if t >= missed["catchup"]]
    assert since[0] == missed["catchup"] and since[-1] > up_at
    assert gaps(since) == [1000] * (len(since) - 1)
    assert len([t for t in since if t <= up_at]) >= 5  # every missed tick fired
    rows = await ledger(segue_valkey.admin_url, queue_name)
    assert max(Counter(r[0] for r in rows).values()) == 1


@pytest.mark.slow
async def test_a_tick_fired_again_after_its_worker_died_mid_fire_runs_once(
    cron_workers: Fleet, segue_valkey: Any, queue_name: str
) -> None:
    # the first worker dies between the enqueue of its first ticks and their advance
    first = cron_workers.start(env={"SEGUE_FAULTPOINT": "cron_after_enqueue:kill"})
    assert cron_workers.wait_exit(first, timeout=20) == -signal.SIGKILL
    sids = {kind: f"{queue_name}.{kind}" for kind in ("coalesce", "catchup")}
    async with App("client", redis_url=segue_valkey.url) as client:
        stuck = {
            kind: int(info.next_run.timestamp() * 1000)
            for info in await client.schedules()
            for kind, sid in sids.items()
            if info.id == sid and info.next_run is not None
        }
        assert stuck.keys() == sids.keys()
        for kind, tick in stuck.items():  # enqueued, and not advanced
            handle = await client.task_handle(f"{queue_name}:cron-{sids[kind]}-{tick}")
            assert (await handle.info()).history[0].status.value == "queued"
        # fires the same ticks again once the dead one's lease ends
        await cron_workers.ready(cron_workers.start())

        async def went_on() -> bool:
            runs = await fires(segue_valkey, queue_name, "coalesce")
            return any(t > stuck["coalesce"] for t, _, _ in runs)

        await eventually(went_on, timeout=20)
    assert set(cron_workers.terminate_all(timeout=10).values()) <= {0}
    rows = await ledger(segue_valkey.admin_url, queue_name)
    assert max(Counter(r[0] for r in rows).values()) == 1  # each tick's task ran once
    for kind, tick in stuck.items():
        ticks = [t for t, _, _ in await fires(segue_valkey, queue_name, kind)]
        assert ticks[0] == tick


@pytest.mark.slow
async def test_schedules_survive_a_server_restart(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.start()
    try:
        app = App("restart", redis_url=f"redis://127.0.0.1:{server.port}/0")

        @app.task(name="double")
        def double(x: int) -> int:
            return 2 * x

        async with app:
            sid = await app.schedule(double.call(2), cron="@daily", tz="Europe/Lisbon")
            before = await app.schedules()
        assert server.proc is not None
        server.proc.terminate()  # a clean stop: the AOF is written out
        server.proc.wait(timeout=10)
        server.start()
        async with app:
            assert await app.schedules() == before
            assert await app.unschedule(sid)
    finally:
        server.kill()
