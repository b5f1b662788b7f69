"""Redis Sentinel: segue over a `redis+sentinel://` URL, and a primary SIGKILLed mid-drain.

The servers come from tests/faults/sentinel.py (valkey primary + replica + 3 sentinels).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from segue import App, BrokerError, ConfigurationError, Settings, TaskNotFound, TaskStatus
from segue._fastconn import ConnectionLost, FastConnection
from segue._sentinel import fast_url
from tests._workers import Fleet
from tests.apps import sentinel as tasks
from tests.faults.conftest import Report, Scale
from tests.faults.sentinel import (
    SERVICE,
    SentinelSet,
    sentinel_set,
    shared_sentinel_set,
    tls_sentinel_set,
)
from tests.integration.conftest import eventually, serving

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

__all__ = ["sentinel_set", "shared_sentinel_set", "tls_sentinel_set"]  # fixtures, used by name
ROOT = Path(__file__).resolve().parents[2]


def _queue() -> str:
    return f"s_{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def _app(url: str, queue: str) -> AsyncIterator[App]:
    # the worker subprocesses load this module's App: same task names and types
    tasks.app.settings = tasks.app.settings.replace(
        redis_url=url, queue=queue, poll_seconds=0.2, lease_seconds=3.0, pause_grace_seconds=2.0
    )
    async with tasks.app:
        yield tasks.app


@contextlib.contextmanager
def _workers(url: str, queue: str) -> Iterator[Fleet]:
    """`python -m segue worker` processes on the Sentinel URL, stopped by SIGTERM after the
    block (SIGKILLed if one does not stop within 10 s)."""
    app, env = "tests.apps.sentinel:app", {"SEGUE_PAUSE_GRACE_SECONDS": "2"}
    with Fleet(app, url, queue, lease=3.0, grace=1.0, env=env, log_level="error") as fleet:
        try:
            yield fleet
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                fleet.terminate_all(timeout=10)


async def _succeeded(app: App, queue: str) -> int:
    counts = await app.queue(queue).counts()
    return int(counts.get("succeeded", 0))


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names no service"),
        ("redis+sentinel://127.0.0.1:26379/", "names no service"),
        ("redis+sentinel:///mymaster", "names no sentinel host"),
        ("redis+sentinel://h1:26379,:26380/mymaster", "without a host"),
        ("redis+sentinel://h1:port/mymaster", "invalid sentinel port"),
        ("redis+sentinel://h1:70000/mymaster", "invalid sentinel port"),
        ("redis+sentinel://h1/mymaster/zero", "not a number"),
        ("redis+sentinel://h1/mymaster/0/extra", "more than a service name"),
        ("redis+sentinel://h1/mymaster?db=1", "put it in the path"),
        ("redis+sentinel://h1/mymaster?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
        ("redis+sentinel://h1/mymaster?ssl_ca_certs=/ca.pem", "need the TLS scheme"),
        ("redis+sentinel://h1/mymaster?socket_timeout=soon", "invalid option"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_when_the_app_is_built(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        App("bad", redis_url=url)
    assert "redis+sentinel://[user:password@]host:26379" in str(caught.value)
    with pytest.raises(ConfigurationError, match=problem):
        Settings.from_env({"SEGUE_REDIS_URL": url})


def test_a_refused_sentinel_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        App("bad", redis_url="redis+sentinel://segue:hunter2@h1/mymaster/x")
    assert "hunter2" not in str(caught.value)
    assert "segue:***@h1" in str(caught.value)


def test_a_well_formed_sentinel_url_is_a_sentinel_setting() -> None:
    s = Settings.from_url("rediss+sentinel://u:p@h1,h2:26380/mymaster/3?ssl_cert_reqs=required")
    assert s.sentinel
    assert not s.cluster
    assert not Settings.from_url("redis://h1:6379/0").sentinel


# --- over a running Sentinel set -------------------------------------------------------------


async def test_tasks_run_pause_and_resume_over_a_sentinel_url(
    shared_sentinel_set: SentinelSet,
) -> None:
    queue = _queue()
    async with _app(shared_sentinel_set.url, queue) as app:
        handles = [await tasks.work.enqueue(i, 5) for i in range(20)]
        long = await tasks.steps.enqueue(30)
        tasks.starts.clear()
        async with serving(app, concurrency=4):
            assert [await h.result(timeout=20) for h in handles] == list(range(20))
            await long.wait_for(TaskStatus.RUNNING, timeout=10)
            await eventually(lambda: _has_started(tasks.starts), timeout=10)
            await long.pause()
            assert await long.wait_for(TaskStatus.PAUSED, timeout=10) is TaskStatus.PAUSED
            assert await long.resume() is TaskStatus.QUEUED
            assert await long.result(timeout=20) == 30
        # the resumed run went on from its saved state instead of starting over
        assert len(tasks.starts) == 2
        assert tasks.starts[0] == 0 < tasks.starts[1] < 30


async def _has_started(starts: list[int]) -> bool:
    return bool(starts)


def test_segue_status_reads_a_queue_over_a_sentinel_url(shared_sentinel_set: SentinelSet) -> None:
    queue = _queue()

    async def run_some() -> None:
        async with _app(shared_sentinel_set.url, queue) as app:
            handles = [await tasks.work.enqueue(i, 1) for i in range(3)]
            async with serving(app, concurrency=2):
                for h in handles:
                    await h.result(timeout=10)

    asyncio.run(run_some())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    done = subprocess.run(
        [sys.executable, "-m", "segue", "status", "--url", shared_sentinel_set.url, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["queue"]: row for row in json.loads(done.stdout)["queues"]}
    assert int(rows[queue]["succeeded"]) == 3


async def test_an_unknown_service_name_is_a_clear_broker_error(
    shared_sentinel_set: SentinelSet,
) -> None:
    url = shared_sentinel_set.url.replace(f"/{SERVICE}/", "/no-such-service/")
    app = App("wrong", redis_url=url)
    with pytest.raises(
        BrokerError, match="named a primary that is up for service 'no-such-service'"
    ):
        await app.connect()
    await app.close()


async def test_a_connection_to_a_demoted_primary_asks_the_sentinels_again(
    shared_sentinel_set: SentinelSet,
) -> None:
    # a node that was the primary when segue connected and is a replica now answers writes
    # with READONLY: segue's hot-path connection must drop it and find the primary again
    primary = shared_sentinel_set.primary_as_seen()
    assert primary is not None
    replica = next(p for p in shared_sentinel_set.nodes if p != primary)
    answers = [("127.0.0.1", replica), ("127.0.0.1", primary)]

    async def resolve() -> tuple[str, int]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    fast = FastConnection(fast_url(shared_sentinel_set.url), resolve=resolve)
    try:
        with pytest.raises(ConnectionLost, match="replica"):
            await fast.execute("SET", "segue:readonly-probe", "1")
        assert await fast.execute("SET", "segue:readonly-probe", "1") == b"OK"
    finally:
        await fast.close()


async def test_tls_sentinels_and_nodes_are_verified_against_the_ca_in_the_url(
    tls_sentinel_set: SentinelSet,
) -> None:
    url = tls_sentinel_set.url
    queue = _queue()
    async with _app(url, queue) as app:
        handles = [await tasks.work.enqueue(i, 1) for i in range(5)]
        async with serving(app, concurrency=2):
            assert [await h.result(timeout=20) for h in handles] == list(range(5))
    # without the test CA the servers' certificates cannot be verified: refused, not ignored
    untrusted = App("untrusted", redis_url=url.split("&ssl_ca_certs=", 1)[0])
    with pytest.raises(BrokerError, match="certificate did not verify"):
        await untrusted.connect()
    await untrusted.close()


# --- failover --------------------------------------------------------------------------------


async def test_a_primary_killed_mid_drain_fails_over_with_no_acked_task_lost(
    sentinel_set: SentinelSet,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    queue = _queue()
    before = fault_scale.pick(300, 3000)
    after = fault_scale.pick(100, 1000)
    # kill when a seeded share of the first batch is done, so tasks are queued, running and
    # finished at the moment of the kill
    kill_share = fault_rng.uniform(0.2, 0.6)
    durations = [fault_rng.randint(2, 20) for _ in range(before + after)]
    first_primary = sentinel_set.primary_port
    async with _app(sentinel_set.url, queue) as app:
        # runs across the failover, longer than its 3 s lease: its lease survives if the
        # renewal thread reaches the new primary in time, else the worker runs it once more
        sleeper = await tasks.long_first.enqueue(6000)
        acked: list[Any] = []
        for start in range(0, before, 50):
            batch = [tasks.work.call(i, durations[i]) for i in range(start, start + 50)]
            acked.extend(await app.enqueue_many(batch[: before - start]))
        with _workers(sentinel_set.url, queue) as workers:
            worker = workers.start(concurrency=8)
            threshold = int(before * kill_share)

            async def far_enough() -> bool:
                return await _succeeded(app, queue) >= threshold

            await eventually(far_enough, timeout=30)
            done_at_kill = await _succeeded(app, queue)
            killed_at = time.monotonic()
            sentinel_set.kill_primary()

            # one producer keeps trying; every try that fails is a fresh task, never counted
            failed_tries = 0
            late: list[Any] = []
            deadline = killed_at + 30
            while True:
                try:
                    late.append(await tasks.work.enqueue(before, durations[before]))
                    break
                except BrokerError:
                    failed_tries += 1
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            unavailable = time.monotonic() - killed_at
            late.extend(
                [
                    await tasks.work.enqueue(i, durations[i])
                    for i in range(before + 1, before + after)
                ]
            )

            async def drained() -> bool:
                return await _succeeded(app, queue) >= before + after

            with contextlib.suppress(AssertionError):
                await eventually(drained, timeout=fault_scale.seconds(30, 120), interval=0.2)
            drained_after = time.monotonic() - killed_at
            lost, stuck = [], []
            for h in [*acked, *late]:
                try:
                    status = await h.status()
                except TaskNotFound:
                    lost.append(h.id)
                    continue
                if status is not TaskStatus.SUCCEEDED:
                    stuck.append((h.id, str(status)))
            new_primary = sentinel_set.primary_as_seen()
            sleeper_tries = await sleeper.result(timeout=20)
            # control requests reach the worker on the new primary: pause a running task
            long = await tasks.steps.enqueue(20)
            await long.wait_for(TaskStatus.RUNNING, timeout=10)
            await long.pause()
            paused = await long.wait_for(TaskStatus.PAUSED, timeout=10)
            await long.resume()
            resumed_result = await long.result(timeout=20)
            worker_alive = worker.alive()

    fault_report.add(
        tasks_before_kill=before,
        tasks_after_kill=after,
        succeeded_at_kill=done_at_kill,
        unavailability_seconds=round(unavailable, 3),
        failed_enqueue_tries=failed_tries,
        lost_acked_before_kill=sum(1 for h in acked if h.id in lost),
        lost_acked_after_kill=sum(1 for h in late if h.id in lost),
        stuck=len(stuck),
        drained_seconds_after_kill=round(drained_after, 3),
        first_primary=first_primary,
        new_primary=new_primary,
        long_task_tries=sleeper_tries,
    )
    assert lost == []
    assert stuck == []
    assert new_primary is not None
    assert new_primary != first_primary
    assert worker_alive
    assert sleeper_tries <= 2
    assert paused is TaskStatus.PAUSED
    assert resumed_result == 20
    # raw Sentinel promotes within about down-after + 2 s here; segue should add little
    assert unavailable < 15


async def test_a_planned_switchover_loses_no_acked_task(
    shared_sentinel_set: SentinelSet, fault_report: Report
) -> None:
    # last in the module: it leaves the shared set with the other node as primary
    s = shared_sentinel_set
    queue = _queue()
    first = s.primary_as_seen()
    async with _app(s.url, queue) as app:
        acked: list[Any] = []
        failed_tries = 0
        gaps: list[float] = []
        last_ok = time.monotonic()
        switched_at: float | None = None
        # longer than its 3 s lease: one try only if the renewals followed the new primary
        sleeper = await tasks.work.enqueue(-1, 4000)
        async with serving(app, concurrency=4):
            await sleeper.wait_for(TaskStatus.RUNNING, timeout=10)
            deadline = time.monotonic() + 30
            while switched_at is None or time.monotonic() < switched_at + 1.0:
                if time.monotonic() > deadline:
                    raise AssertionError("the sentinels did not switch the primary in 30 s")
                try:
                    # Sentinel promotes the replica before it demotes the old primary, and
                    # writes the old primary takes in between are lost with its data: only
                    # an enqueue a replica confirmed (durability="replicated") is kept
                    # whatever the moment (a `memory` one failed this test now and then)
                    acked.append(
                        await tasks.work.options(durability="replicated").enqueue(len(acked), 1)
                    )
                    now = time.monotonic()
                    gaps.append(now - last_ok)
                    last_ok = now
                except BrokerError:
                    failed_tries += 1
                    await asyncio.sleep(0.02)
                if len(acked) == 50 and switched_at is None and failed_tries == 0:
                    with s.sentinel(next(iter(s.sentinels))) as sentinel:
                        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
                if switched_at is None and len(acked) % 10 == 0:
                    seen = s.primary_as_seen()
                    if seen is not None and seen != first:
                        switched_at = time.monotonic()

            async def all_done() -> bool:
                return await _succeeded(app, queue) >= len(acked)

            await eventually(all_done, timeout=20, interval=0.1)
            assert await sleeper.result(timeout=20) == -1
        sleeper_tries = (await sleeper.info()).tries
        missing = 0
        for h in acked:
            try:
                await h.status()
            except TaskNotFound:
                missing += 1
    fault_report.add(
        acked=len(acked),
        lost=missing,
        failed_enqueue_tries=failed_tries,
        longest_enqueue_gap_seconds=round(max(gaps), 3),
        first_primary=first,
        new_primary=s.primary_as_seen(),
        long_task_tries=sleeper_tries,
    )
    assert missing == 0
    # its renewals follow the new primary; one written to the old primary in the moment
    # between the promotion and the demotion is lost with that primary's last writes, and
    # then the lease can lapse once: at most one extra run, never a lost task
    assert sleeper_tries <= 2
    assert s.primary_as_seen() not in (None, first)
