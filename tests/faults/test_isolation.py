"""Sec5 (RELIABILITY §9): two Apps on one server, with the same queue name and task names
but different prefixes, each logged in as its own least-privilege ACL user (keys and
channels `<prefix>:*`). Neither's workers run the other's tasks, a purge of one deletes
nothing of the other's, and each user is refused (NOPERM) the other's keys."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio
import redis.exceptions

from segue import App, BrokerError, Context
from tests._support import ACL_PASSWORD, Engine, add_acl_user
from tests.faults.conftest import Report, Scale

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable


def _app(port: int, user: str, prefix: str, queue: str, ran: list[str]) -> App:
    url = f"redis://{user}:{ACL_PASSWORD}@127.0.0.1:{port}/0"
    app = App(prefix, redis_url=url, prefix=prefix, queue=queue, poll_seconds=0.2)

    @app.task(name="sec.job")
    async def job(ctx: Context, i: int) -> int:
        ran.append(ctx.task_id)
        return i

    return app


async def _keys(admin: Any, prefix: str) -> dict[str, Any]:
    """Every key of a prefix with its contents (lists and zsets) or type."""
    found: dict[str, Any] = {}
    async for raw in admin.scan_iter(f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = (await admin.type(key)).decode()
        if kind == "list":
            found[key] = await admin.lrange(key, 0, -1)
        elif kind == "zset":
            found[key] = await admin.zrange(key, 0, -1)
        elif kind == "hash":
            found[key] = await admin.hgetall(key)
        else:
            found[key] = kind
    return found


async def test_two_prefixes_on_one_server_never_see_each_others_tasks(
    segue_valkey: Engine,
    queue_name: str,
    fault_seed: int,
    fault_scale: Scale,
    fault_report: Report,
) -> None:
    port = urlsplit(segue_valkey.admin_url).port
    assert port is not None
    for prefix in ("seca", "secb"):
        add_acl_user(port, user=prefix, prefix=prefix)
    n = fault_scale.pick(200, 2_000)
    ran_a: list[str] = []
    ran_b: list[str] = []
    a = _app(port, "seca", "seca", queue_name, ran_a)
    b = _app(port, "secb", "secb", queue_name, ran_b)
    admin: Any = redis.asyncio.Redis.from_url(segue_valkey.admin_url)
    outsider: Any = redis.asyncio.Redis.from_url(f"redis://seca:{ACL_PASSWORD}@127.0.0.1:{port}/0")
    async with a, b:
        ids_a = {
            h.id for h in await a.enqueue_many(a.registry["sec.job"].call(i) for i in range(n))
        }
        ids_b = {
            h.id for h in await b.enqueue_many(b.registry["sec.job"].call(i) for i in range(n))
        }

        await a.drain()
        assert sorted(ran_a) == sorted(ids_a) and ran_b == []
        assert (await b.queue_counts())["queued"] == n
        await b.drain()
        assert sorted(ran_b) == sorted(ids_b) and sorted(ran_a) == sorted(ids_a)

        # a purge of A's queue deletes nothing of B's
        await a.enqueue_many(a.registry["sec.job"].call(i) for i in range(50))
        await b.enqueue_many(b.registry["sec.job"].call(i) for i in range(50))
        b_before = await _keys(admin, "secb")
        purged = await a.queue().purge()
        b_after = await _keys(admin, "secb")
        assert purged == 50
        assert (await a.queue_counts())["queued"] == 0
        assert (await b.queue_counts())["queued"] == 50
        assert b_after == b_before

        # A's user is refused B's keys, raw or through segue
        b_task = f"secb:{{{queue_name}}}:task:{next(iter(ids_b))}"
        with pytest.raises(redis.exceptions.NoPermissionError):
            await outsider.hgetall(b_task)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await outsider.delete(f"secb:{{{queue_name}}}:q:normal")
        wrong = _app(port, "seca", "secb", queue_name, [])
        async with wrong:
            with pytest.raises(BrokerError, match="refused this ACL user"):
                await wrong.registry["sec.job"].call(1).enqueue()
        await b.queue().purge()
    await outsider.aclose()
    await admin.aclose()
    fault_report.add(
        seed=fault_seed,
        tasks_per_app=n,
        cross_consumed=len(set(ran_a) & ids_b) + len(set(ran_b) & ids_a),
        b_keys_deleted_by_purge_of_a=len(set(b_before) - set(b_after)),
        b_keys=len(b_before),
    )
