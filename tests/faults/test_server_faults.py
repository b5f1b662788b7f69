"""Server faults (RELIABILITY §8 B): the Valkey server under the workers is killed and
restarted from its AOF (★R1), or frozen by `DEBUG SLEEP` for longer than a lease (R4),
while two worker subprocesses drain a queue into the suite's ledger (a server of its own
that these faults never touch).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from segue import App
from tests._support import ACL_PASSWORD, ACL_RULES, ACL_USER, free_port, server_binary
from tests._support import start_process as start_server_process
from tests._workers import Fleet
from tests.apps import faults
from tests.faults.checker import Verdict, check
from tests.faults.conftest import Report, Scale
from tests.faults.ledger import Effects, History, Ledger, LedgerServer
from tests.faults.test_worker_faults import APP, assert_sound, drained
from tests.integration.conftest import eventually

pytestmark = pytest.mark.slow


class AofServer:
    """A valkey-server with AOF on, killed with SIGKILL and started again on its port and
    directory. Its users come from an ACL file, so the least-privilege user exists from
    the moment the server accepts connections, after every restart."""

    def __init__(self, directory: Path, fsync: str = "everysec") -> None:
        binary = server_binary("valkey")
        assert binary is not None
        self.binary = binary
        self.dir = directory
        self.fsync = fsync
        self.port = free_port()
        self.acl = directory / "users.acl"
        self.acl.write_text(
            "user default on nopass ~* &* +@all\n"
            f"user {ACL_USER} {' '.join(r for r in ACL_RULES if not r.startswith('>'))} "
            f">{ACL_PASSWORD}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{self.port}/0"
        self.admin_url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start (or restart from the AOF); returns when it answered PING (time.time())."""
        self.proc = start_server_process(
            self.binary,
            self.port,
            self.dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--aclfile",
            str(self.acl),
        )
        return time.time()

    def kill(self) -> float:
        """SIGKILL; returns when the signal was sent (time.time())."""
        assert self.proc is not None
        at = time.time()
        self.proc.kill()
        self.proc.wait(timeout=10)
        return at

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def aof_dir(tmp_path: Path) -> Path:
    d = tmp_path / "server"
    d.mkdir()
    return d


@contextlib.contextmanager
def pointed(app: App, url: str, queue: str) -> Iterator[App]:
    """The workers' App, pointed at `url` and `queue` for the block (the test's producer)."""
    saved = app.settings
    app.settings = saved.replace(redis_url=url, queue=queue, poll_seconds=0.2)
    yield app
    app.settings = saved


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _starts_by_worker(effects: Effects) -> dict[str, list[float]]:
    """worker id → start times (s) of its runs, sorted."""
    starts: dict[str, list[float]] = {}
    for runs in effects.executions.values():
        for run in runs:
            starts.setdefault(run.worker, []).append(run.started_ms / 1000)
    for times in starts.values():
        times.sort()
    return starts


async def _kill_restart_run(
    server: AofServer,
    app: App,
    fleet: Fleet,
    ledger_server: LedgerServer,
    queue: str,
    rng: random.Random,
    scale: Scale,
    n: int,
    workers: int,
) -> tuple[dict[str, Any], Verdict]:
    """Drain `n` tasks while the server is killed and restarted from its AOF a few times;
    returns the run's figures and the checker's verdict."""
    durations = [rng.randrange(0, 201) for _ in range(n)]
    history = History(app, queue)
    slots = [fleet.start(8) for _ in range(workers)]
    ledger = Ledger(ledger_server, queue)
    await fleet.ready()
    began = time.time()
    for i in range(0, n, 500):
        batch = enumerate(durations[i : i + 500], start=i)
        await history.enqueue_many([(faults.sleep.call(ms), str(k)) for k, ms in batch])
    assert history.counts() == {"ok": n, "fail": 0, "ambiguous": 0}
    outages: list[tuple[float, float]] = []  # (killed at, accepting connections again at)
    for _ in range(scale.pick(3, 3)):
        await asyncio.sleep(rng.uniform(0.8, 1.6))  # the schedule's next fault
        if (await app.queue_counts(queue))["queued"] < 50:
            break  # too little left for the workers to show they came back
        killed = server.kill()
        await asyncio.sleep(rng.uniform(0.9, 1.1))
        up = server.start()
        outages.append((killed, up))

        async def all_resumed(up: float = up) -> bool:
            runs = [r for rs in (await ledger.read()).executions.values() for r in rs]
            return all(any(r.by(s.pid) and r.started_ms >= up * 1000 for r in runs) for s in slots)

        # the next fault only once every worker is back (or the run fails here): each
        # outage's resume time is then measured on its own
        await eventually(all_resumed, timeout=10, interval=0.1)
    done_at = await drained(app, queue, n, timeout=scale.seconds(90, 900))
    effects = await ledger.read()
    verdict = await check(
        history=history, effects=effects, admin_url=server.admin_url, queue=queue, leaks=True
    )
    # per outage and worker: from the server accepting connections to the worker's first
    # new run, i.e. its first claim, whose round trip also carries the outcomes it kept
    starts = _starts_by_worker(effects)
    resumed: list[float] = []
    wedged: list[str] = []
    for k, (_, up) in enumerate(outages):
        until = outages[k + 1][0] if k + 1 < len(outages) else done_at
        for worker, times in starts.items():
            first = next((t for t in times if up <= t < until), None)
            if first is None:
                wedged.append(f"{worker} after restart {k + 1}")
            else:
                resumed.append(first - up)
    # runs in flight when the server died (started before it, not ended 0.2 s before:
    # an outcome waits for the next round trip, milliseconds)
    in_flight = sum(
        1
        for runs in effects.executions.values()
        for run in runs
        for killed, _ in outages
        if run.started_ms / 1000 < killed
        and (run.ended_ms is None or run.ended_ms / 1000 > killed - 0.2)
    )
    figures = {
        "n": n,
        "fsync": server.fsync,
        "workers": workers,
        "kills": len(outages),
        "unavailable_ms": [round((up - killed) * 1000) for killed, up in outages],
        "resume_ms_p50": None if not resumed else round(1000 * (_quantile(resumed, 0.5) or 0)),
        "resume_ms_p99": None if not resumed else round(1000 * (_quantile(resumed, 0.99) or 0)),
        "resume_ms_max": None if not resumed else round(1000 * max(resumed)),
        "wedged_workers": len(wedged),
        "worker_exits": sum(1 for s in fleet.slots if not s.alive()),
        "in_flight_at_kills": in_flight,
        "drain_s": round(done_at - began, 3),
        **verdict.figures(),
    }
    assert len(outages) >= 2, "the queue drained before the server was killed twice"
    assert wedged == [], wedged
    assert all(s.alive() for s in fleet.slots), "a worker exited during the outages"
    assert max(resumed) <= 2.0, sorted(resumed)
    return figures, verdict


async def test_server_kill_and_aof_restart_lose_nothing_and_workers_resume(
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """★R1: kill -9 the server 2-3 times at seeded times while 2 workers drain, restart it
    from its AOF after ~1 s on the same port: nothing acknowledged is lost, extra runs stay
    within the runs in flight, and every worker claims again within 2 s of the restart."""
    n = fault_scale.pick(1_000, 10_000)
    policies = ["everysec"] if not fault_scale.full else ["everysec", "always"]
    runs: dict[str, dict[str, Any]] = {}
    for fsync in policies:
        server = AofServer(_fresh(tmp_path / fsync), fsync)
        server.start()
        queue = f"{queue_name}{fsync[0]}"  # the ledger is shared: a queue per run
        fleet = Fleet(
            APP,
            server.url,
            queue,
            lease=2.0,
            poll=0.2,
            env=fault_ledger.env(),
            log_dir=tmp_path / f"logs-{fsync}",
        )
        workers = fault_scale.pick(2, 4)
        try:
            with pointed(faults.app, server.url, queue) as app, fleet:
                async with app:
                    figures, verdict = await _kill_restart_run(
                        server, app, fleet, fault_ledger, queue, fault_rng, fault_scale, n, workers
                    )
        finally:
            server.stop()
        runs[fsync] = figures
        fault_report.add(**({"runs": runs} if fault_scale.full else figures))
        assert_sound(verdict)
        assert verdict.not_succeeded == {}
        assert verdict.dup_exec <= figures["in_flight_at_kills"]
        assert verdict.leaks is not None
        assert verdict.leaks.queued == verdict.leaks.running == 0


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def test_server_stall_longer_than_the_lease_reclaims_nothing(
    fault_ledger: LedgerServer,
    queue_name: str,
    fault_rng: random.Random,
    fault_scale: Scale,
    fault_report: Report,
    tmp_path: Path,
) -> None:
    """R4: `DEBUG SLEEP` freezes the whole server for 2.5 leases while 2 workers run tasks.
    Leases are kept in server time, so nobody could renew, nor take over, during the
    stall; when it ends, no task is taken from the workers that still run it (0 extra
    runs), and no worker exits."""
    n = fault_scale.pick(200, 2_000)
    lease = 2.0
    stall = 2.5 * lease
    durations = [fault_rng.randrange(500, 2_001) for _ in range(n)]
    server = AofServer(_fresh(tmp_path / "server"))
    server.start()
    fleet = Fleet(
        APP,
        server.url,
        queue_name,
        lease=lease,
        poll=0.2,
        env=fault_ledger.env(),
        log_dir=tmp_path / "logs",
    )
    admin: Any = redis.asyncio.Redis.from_url(server.admin_url, socket_timeout=stall + 10)
    try:
        with pointed(faults.app, server.url, queue_name) as app, fleet:
            async with app:
                history = History(app, queue_name)
                for _ in range(2):
                    fleet.start(16)
                await fleet.ready()
                began = time.time()
                for i in range(0, n, 500):
                    batch = enumerate(durations[i : i + 500], start=i)
                    await history.enqueue_many([(faults.sleep.call(ms), str(k)) for k, ms in batch])
                await asyncio.sleep(fault_rng.uniform(1.0, 2.0))  # the schedule's fault time
                running = (await app.queue_counts(queue_name))["running"]
                stalled_at = time.time()
                await admin.execute_command("DEBUG", "SLEEP", stall)
                woke_at = time.time()
                done_at = await drained(app, queue_name, n, timeout=fault_scale.seconds(90, 600))
                effects = await Ledger(fault_ledger, queue_name).read()
                verdict = await check(
                    history=history,
                    effects=effects,
                    admin_url=server.admin_url,
                    queue=queue_name,
                    leaks=True,
                )
                exits = [s.name for s in fleet.slots if not s.alive()]
    finally:
        await admin.aclose()
        server.stop()
    fault_report.add(
        n=n,
        workers=2,
        lease_s=lease,
        stall_s=round(woke_at - stalled_at, 3),
        running_at_stall=running,
        dup_exec_from_stall=verdict.dup_exec,  # no other fault in this run
        false_reclaims=verdict.lease_losses,
        worker_exits=len(exits),
        drain_s=round(done_at - began, 3),
        **verdict.figures(),
    )
    assert running > 0, "no task was running when the server stalled: nothing was tested"
    assert woke_at - stalled_at >= 2 * lease
    assert_sound(verdict)
    assert verdict.not_succeeded == {}
    assert exits == []
    assert verdict.lease_losses == 0, "the stall made leases of live workers expire"
    assert verdict.dup_exec == 0
