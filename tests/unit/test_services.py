"""The worker's service group (segue._services): order, failure policy, stopping."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from segue import _services
from segue._services import POLICY, OnFailure, Service, ServiceGroup


class Recorder(Service):
    """A service that writes what happens to it into a shared list."""

    def __init__(self, name: str, log: list[str], *, fail_runs: int = 0) -> None:
        self.name = name  # type: ignore[misc]  # a POLICY key chosen per test
        self.log = log
        self.fail_runs = fail_runs
        self.runs: list[float] = []

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def run(self) -> None:
        self.runs.append(time.monotonic())
        if len(self.runs) <= self.fail_runs:
            raise RuntimeError(f"run {len(self.runs)} failed")
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_every_part_of_a_worker_has_a_policy_and_only_two_stop_it() -> None:
    stoppers = {name for name, policy in POLICY.items() if policy is OnFailure.STOP}
    assert stoppers == {"claim loop", "lease thread"}


def test_services_stop_in_the_reverse_order_of_their_start() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        async with ServiceGroup("w", lambda name, exc: None) as group:
            for name in ("lease thread", "subscriber", "claim loop"):
                await group.start(Recorder(name, log))
            await asyncio.sleep(0.01)
        return log

    assert asyncio.run(main()) == [
        *("start lease thread", "start subscriber", "start claim loop"),
        *("stop claim loop", "close claim loop", "stop subscriber", "close subscriber"),
        *("stop lease thread", "close lease thread"),
    ]


def test_a_failing_service_that_restarts_runs_again_after_a_doubling_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_services, "BACKOFF_FIRST", 0.05)
    fatal: list[str] = []

    async def main() -> list[float]:
        forwarder = Recorder("forwarder", [], fail_runs=3)
        async with ServiceGroup("w", lambda name, exc: fatal.append(name)) as group:
            await group.start(forwarder)
            while len(forwarder.runs) < 4:
                await asyncio.sleep(0.01)
        return forwarder.runs

    runs = asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert len(runs) == 4 and fatal == []
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2


def test_a_failing_service_that_stops_the_worker_is_reported_once_not_restarted() -> None:
    async def main() -> tuple[list[tuple[str, str]], int]:
        fatal: list[tuple[str, str]] = []
        lease = Recorder("lease thread", [], fail_runs=5)
        async with ServiceGroup("w", lambda name, exc: fatal.append((name, str(exc)))) as group:
            await group.start(lease)
            await asyncio.sleep(0.2)
        return fatal, len(lease.runs)

    assert asyncio.run(main()) == ([("lease thread", "run 1 failed")], 1)


def test_a_service_that_swallows_a_cancel_is_stopped_all_the_same() -> None:
    class Stubborn(Recorder):
        async def run(self) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # what 3.11's wait_for does when its inner call ends in the same turn
            self.log.append("ran on")
            await asyncio.sleep(3600)

    async def main() -> list[str]:
        log: list[str] = []
        async with asyncio.timeout(5), ServiceGroup("w", lambda name, exc: None) as group:
            await group.start(Stubborn("heartbeat", log))
            await asyncio.sleep(0.01)
        return log

    assert asyncio.run(main()) == ["start heartbeat", "stop heartbeat", "ran on", "close heartbeat"]


def test_an_error_closing_one_service_is_raised_after_the_others_stopped() -> None:
    class Broken(Recorder):
        async def close(self) -> None:
            raise RuntimeError("could not close")

    async def main(log: list[str]) -> None:
        async with ServiceGroup("w", lambda name, exc: None) as group:
            await group.start(Recorder("lease thread", log))
            await group.start(Broken("claim loop", log))

    log: list[str] = []
    with pytest.raises(RuntimeError, match="could not close"):
        asyncio.run(main(log))
    assert log[-2:] == ["stop lease thread", "close lease thread"]
