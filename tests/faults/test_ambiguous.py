"""★N2 (RELIABILITY §8): ambiguous writes. Producer and worker connections go through the
fault proxy, which runs ~5 % of script calls (enqueue, claim, finish, renew) on the server
and then drops the reply and resets the connection, so the caller cannot tell whether the
call took effect.

Users retry an enqueue that failed with the same `key=` (so the same task id); some give up
instead. Whatever the faults: each task id is enqueued at most once, no outcome is recorded
twice, every acknowledged task ends SUCCEEDED with its effect applied once, and a task whose
enqueue was abandoned either ran to its end once or does not exist.

The task records each run in a ledger on the server's admin connection, not through the
proxy: `SET NX effect:{id}` (the effect) and `RPUSH exec:{id}` (every execution).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from typing import Any

import pytest
import redis.asyncio

from segue import App, BrokerError, Context, TaskStatus
from segue._keys import Keyspace
from tests._support import Engine
from tests.faults.conftest import Report, Scale
from tests.faults.events import EventTally
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import serving

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

DROP_P = 0.05
PRODUCERS = 16
WORKERS = 2
GIVE_UP_EVERY = 10  # every 10th task's producer does not retry an ambiguous enqueue
LEDGER = "segue:ledger"  # inside the least-privilege user's key pattern, on the admin side


@dataclasses.dataclass
class History:
    """What the producer saw for one task id: one entry per enqueue attempt."""

    attempts: list[str] = dataclasses.field(default_factory=list)

    @property
    def acked(self) -> bool:
        return "ok" in self.attempts


def _task_id(queue: str, key: str) -> str:
    return f"{queue}:k:{key}"


async def _statuses(admin: Any, queue: str, keys: list[str]) -> list[str | None]:
    ks = Keyspace("segue", queue)
    pipe = admin.pipeline(transaction=False)
    for key in keys:
        pipe.hget(ks.task(_task_id(queue, key)), "s")
    return [v.decode() if v is not None else None for v in await pipe.execute()]


async def _wait_ended(
    admin: Any, queue: str, keys: list[str], timeout: float, *, missing_ok: bool = False
) -> None:
    """Wait until every task of `keys` is SUCCEEDED (or, with `missing_ok`, absent)."""
    deadline = time.monotonic() + timeout
    ended = {TaskStatus.SUCCEEDED.value} | ({None} if missing_ok else set())
    left = keys
    while left:
        statuses = await _statuses(admin, queue, left)
        left = [k for k, s in zip(left, statuses, strict=True) if s not in ended]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(left)} task(s) not ended within {timeout} s: {left[:5]}")
        await asyncio.sleep(0.1)


async def _check(
    admin: Any, queue: str, keys: list[str], histories: dict[str, History], tally: EventTally
) -> dict[str, Any]:
    """The checker: the event stream counts what the scripts recorded, the ledger what ran."""
    events = tally.counts
    statuses = await _statuses(admin, queue, keys)
    pipe = admin.pipeline(transaction=False)
    for key in keys:
        pipe.exists(f"{LEDGER}:effect:{_task_id(queue, key)}")
        pipe.llen(f"{LEDGER}:exec:{_task_id(queue, key)}")
    ledger = await pipe.execute()
    dup = {"enqueue": 0, "start_without_run": 0, "outcome": 0}
    lost = abandoned_twice = effect_without_success = dup_exec = abandoned_ran = 0
    for i, key in enumerate(keys):
        seen = events.get(_task_id(queue, key), collections.Counter())
        effect, runs = ledger[2 * i], ledger[2 * i + 1]
        dup["enqueue"] += seen["task.enqueued"] > 1
        # a claim whose reply was lost starts no run here, and its lease expires: the
        # task then starts again, so starts may exceed runs by the lost claims only
        dup["start_without_run"] += 0 if seen["task.started"] >= runs else 1
        outcomes = sum(seen[k] for k in ("task.succeeded", "task.failed", "task.cancelled"))
        dup["outcome"] += outcomes > 1
        dup_exec += max(0, runs - 1)
        done = statuses[i] == TaskStatus.SUCCEEDED.value
        if effect and not done:
            effect_without_success += 1
        if histories[key].acked:
            lost += not (done and effect)
        else:
            # an abandoned enqueue either landed and ran to its end once, or left nothing
            absent = statuses[i] is None and not effect and runs == 0
            abandoned_ran += done
            abandoned_twice += not (absent or (done and effect and outcomes == 1))
    return {
        "duplicates": dup,
        "lost": lost,
        "abandoned_twice": abandoned_twice,
        "abandoned_ran": abandoned_ran,
        "effect_without_success": effect_without_success,
        "dup_exec": dup_exec,
        "restarted": sum(1 for c in events.values() if c["task.started"] > 1),
        "events_counted": sum(sum(c.values()) for c in events.values()),
    }


async def _produce(
    app: App, task: Any, keys: list[str], histories: dict[str, History], give_up: set[str]
) -> None:
    for key in keys:
        history = histories[key]
        for _ in range(20):
            try:
                await task.options(key=key).enqueue(key)
            except BrokerError:
                history.attempts.append("ambiguous")
                if key in give_up:
                    break
                continue
            history.attempts.append("ok")
            break


async def test_ambiguous_writes_never_duplicate_a_task_or_an_outcome(
    segue_valkey: Engine,
    queue_name: str,
    fault_seed: int,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    n = fault_scale.pick(800, 5_000)
    admin: Any = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    keys = [f"n2-{i}" for i in range(n)]
    give_up = set(keys[::GIVE_UP_EVERY])
    histories = {k: History() for k in keys}
    # a lease long enough that no renewal is lost on a loaded machine: a task that starts
    # twice is then a claim whose lost reply was not replayed
    options: dict[str, Any] = {"queue": queue_name, "poll_seconds": 0.2, "lease_seconds": 5.0}

    def build(url: str) -> tuple[App, Any]:
        app = App("n2", redis_url=url, **options)

        @app.task(name="n2.effect")
        async def effect(ctx: Context, key: str) -> str:
            # the effect once, every execution recorded: straight to the server, no proxy
            await admin.set(f"{LEDGER}:effect:{ctx.task_id}", ctx.worker_id, nx=True)
            await admin.rpush(f"{LEDGER}:exec:{ctx.task_id}", ctx.worker_id)
            return key

        return app, effect

    with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as proxy:
        url = proxy.url_for(segue_valkey.url)
        producer, task = build(url)
        workers = [build(url)[0] for _ in range(WORKERS)]
        tally = EventTally(admin, queue_name)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(tally)
            for app in (producer, *workers):
                await stack.enter_async_context(app)
            for app in workers:
                await stack.enter_async_context(serving(app, concurrency=16))
            proxy.drop_reply_then_reset(DROP_P, match=b"EVALSHA")
            started = time.monotonic()
            chunks = [keys[i::PRODUCERS] for i in range(PRODUCERS)]
            await asyncio.gather(*(_produce(producer, task, c, histories, give_up) for c in chunks))
            enqueue_seconds = time.monotonic() - started
            acked = [k for k in keys if histories[k].acked]
            await _wait_ended(admin, queue_name, acked, fault_scale.seconds(60, 300))
            drain_seconds = time.monotonic() - started
            stats = proxy.stats()
            proxy.heal()
            # an abandoned enqueue that did land runs too: let it end before the check
            abandoned = [k for k in keys if not histories[k].acked]
            await _wait_ended(admin, queue_name, abandoned, 30, missing_ok=True)

    verdict = await _check(admin, queue_name, keys, histories, tally)
    await admin.aclose()
    fault_report.add(
        n=n,
        drop_p=DROP_P,
        dropped_replies=stats.dropped_replies,
        resets=stats.resets,
        enqueue_seconds=round(enqueue_seconds, 3),
        drain_seconds=round(drain_seconds, 3),
        ambiguous_enqueues=sum(h.attempts.count("ambiguous") for h in histories.values()),
        abandoned=len(abandoned),
        **verdict,
    )
    assert stats.dropped_replies > 0, "the proxy dropped no reply: the test tested nothing"
    assert verdict["duplicates"] == {"enqueue": 0, "start_without_run": 0, "outcome": 0}
    assert verdict["lost"] == 0
    assert verdict["abandoned_twice"] == 0
    assert verdict["effect_without_success"] == 0
    assert verdict["restarted"] == 0, "a claim whose reply was lost left its tasks orphaned"


async def test_a_claim_sent_again_with_its_token_gets_back_what_it_leased(
    segue_valkey: Engine, queue_name: str
) -> None:
    app = App("n2", redis_url=segue_valkey.url, queue=queue_name)

    @app.task(name="n2.noop")
    async def noop(i: int) -> int:
        return i

    async with app:
        for i in range(5):
            await noop.enqueue(i)
        broker = await app._client.broker()
        ks = broker.keyspace(queue_name)
        first = (await broker.run_calls([broker.claim_call(ks, "w1", 3, "tok-1")]))[0]
        again = (await broker.run_calls([broker.claim_call(ks, "w1", 3, "tok-1")]))[0]
        fresh = (await broker.run_calls([broker.claim_call(ks, "w1", 3, "tok-2")]))[0]
    assert [t[0] for t in again[3:]] == [t[0] for t in first[3:]]
    assert [t[4] for t in again[3:]] == [t[4] for t in first[3:]]  # same lease generations
    assert len(first[3:]) == 3
    assert len(fresh[3:]) == 2  # a new token claims what is left, nothing twice
    assert not {t[0] for t in fresh[3:]} & {t[0] for t in first[3:]}
