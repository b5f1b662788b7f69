"""Record what a release writes on the server, for tests/integration/test_previous_release.py.

    git worktree add --detach /tmp/rel <commit>      # the release to record
    mkdir -p /tmp/rel/tests/releases && cp tests/releases/*.py /tmp/rel/tests/releases/
    cd /tmp/rel && PYTHONPATH=/tmp/rel/src:/tmp/rel python -m tests.releases.record out.json

It runs on the release being recorded (a checkout whose src/ is that release): it starts a
server of its own, drives one queue into every state a deploy can find (queued, scheduled,
paused, suspended with its state, retrying, waiting for `after=`, waiting for sub-tasks,
running under a lease, a pause asked of a run whose worker then vanished, a workflow half
done, a paused workflow, a dead letter, an idempotency key, a unique lock, a cron schedule),
and writes every key of that queue, the cron schedules and the queue set to a JSON file:
contents as read (HGETALL, LRANGE, ZRANGE, SMEMBERS, XRANGE, GET) and each key's
remaining TTL, read in one MULTI so the picture is one instant of the server.

The tasks here are the release's: `legacy.hold` never ends and `legacy.boom` always raises,
so that their runs stay where the snapshot takes them. The test defines tasks of the same
names that finish, as a new release deployed over the old one would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio

from segue import App, Context, Pause, TaskStatus
from tests._support import start_server, stop

PREFIX = "relgen"
QUEUE = "legacy"
ROOT = Path(__file__).resolve().parents[2]


def build_app(url: str) -> App:
    app = App(
        "legacy",
        redis_url=url,
        prefix=PREFIX,
        queue=QUEUE,
        poll_seconds=0.1,
        lease_seconds=2.0,
        # a pause asked of a running `legacy.hold` waits for a grace it never reaches
        pause_grace_seconds=600.0,
    )

    @app.task(name="legacy.add")
    async def add(x: int, y: int = 0) -> int:
        return x + y

    @app.task(name="legacy.hold")
    async def hold(ctx: Context, x: int) -> int:
        await ctx.progress(1, 4, "holding")
        await asyncio.Event().wait()  # until the snapshot is taken, and beyond
        return x

    @app.task(name="legacy.boom", max_tries=1)
    async def boom(x: int) -> int:
        raise RuntimeError(f"boom {x}")

    @app.task(name="legacy.flaky", max_tries=3, retry_backoff=10.0)
    async def flaky(x: int) -> int:
        raise RuntimeError(f"flaky {x}")

    @app.task(name="legacy.resumable")
    async def resumable(ctx: Context, n: int) -> int:
        await ctx.state.set(seen=n, note="first run")
        raise Pause(delay=10)

    @app.task(name="legacy.parent")
    async def parent(ctx: Context, n: int) -> int:
        subs = await ctx.enqueue([add.call(n, 1), hold.call(n)])
        return sum(await ctx.wait_for(subs))

    @app.task(name="legacy.only_one", unique=True)
    async def only_one(x: int) -> int:
        return x

    return app


async def _until(handle: Any, status: TaskStatus, timeout: float = 20.0) -> None:
    await handle.wait_for(status, timeout=timeout)


async def drive(app: App) -> dict[str, str]:
    """Bring the queue into every state; returns the ids, by role."""
    t = app.registry
    ids: dict[str, str] = {}
    worker = app.worker(concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        # four slots: each ends held by a `legacy.hold` run (the workflow's middle step, a
        # sub-task, two lone tasks), so nothing enqueued after them is claimed
        wf = await (
            t["legacy.add"].call(1, 2) | t["legacy.hold"] | t["legacy.add"].call(y=100)
        ).enqueue()
        ids["workflow"] = wf.id
        steps = await wf.steps()
        ids["wf_first"], ids["wf_middle"], ids["wf_last"] = (s.id for s in steps)
        await _until(await app.task_handle(ids["wf_middle"]), TaskStatus.RUNNING)

        dead = await t["legacy.boom"].enqueue(7)
        ids["dead"] = dead.id
        await _until(dead, TaskStatus.FAILED)

        flaky = await t["legacy.flaky"].enqueue(9)
        ids["retrying"] = flaky.id
        await _until(flaky, TaskStatus.RETRYING)

        suspended = await t["legacy.resumable"].enqueue(21)
        ids["suspended"] = suspended.id
        await _until(suspended, TaskStatus.SUSPENDED)

        parent = await t["legacy.parent"].enqueue(4)
        ids["parent"] = parent.id
        await _until(parent, TaskStatus.WAITING)

        lone = await t["legacy.hold"].enqueue(3)
        ids["running"] = lone.id
        await _until(lone, TaskStatus.RUNNING)

        # a pause asked of a run whose worker then vanished: carried out at lease expiry
        asked = await t["legacy.hold"].enqueue(5)
        ids["pause_asked"] = asked.id
        await _until(asked, TaskStatus.RUNNING)
        assert await asked.pause("ops: hold it") is TaskStatus.RUNNING

        # the slots are full: what follows stays as enqueued
        queued = await t["legacy.add"].enqueue(2, 3)
        ids["queued"] = queued.id
        keyed = await (
            t["legacy.add"]
            .options(priority="high", key="order-7", timeout=30, ttl=None, headers={"trace": "abc"})
            .enqueue(40, 2)
        )
        ids["keyed"] = keyed.id
        ids["unique"] = (await t["legacy.only_one"].enqueue(11)).id
        ids["scheduled"] = (await t["legacy.add"].options(delay=2).enqueue(5, 5)).id
        paused = await t["legacy.add"].enqueue(6, 6)
        await paused.pause("held by an operator")
        ids["paused"] = paused.id
        ids["waiting"] = (await t["legacy.add"].options(after=[queued]).enqueue(7, 7)).id
        ids["expiring"] = (await t["legacy.add"].options(expire=1).enqueue(8, 8)).id
        held = await (t["legacy.add"].call(1, 1) | t["legacy.add"].call(y=1)).enqueue()
        assert await held.pause(reason="ops: wait") is TaskStatus.PAUSED
        ids["wf_paused"] = held.id
        # a schedule that fires every second (its ticks so far queued behind the full slots)
        ids["schedule"] = await app.schedule(
            t["legacy.add"].call(20, 1), cron="* * * * * *", id="every-second"
        )
        await asyncio.sleep(1.2)  # past the expiring task's deadline before the snapshot
    finally:
        # no graceful stop: the snapshot is taken while the held runs hold their leases
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running
    return ids


# the command that reads a key of each type whole
READ: dict[str, Callable[[bytes], tuple[Any, ...]]] = {
    "hash": lambda k: ("HGETALL", k),
    "list": lambda k: ("LRANGE", k, 0, -1),
    "zset": lambda k: ("ZRANGE", k, 0, -1, "WITHSCORES"),
    "set": lambda k: ("SMEMBERS", k),
    "stream": lambda k: ("XRANGE", k, "-", "+"),
    "string": lambda k: ("GET", k),
}


def _text(raw: bytes) -> str | dict[str, str]:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


async def snapshot(admin_url: str) -> list[dict[str, Any]]:
    """Every key of the queue, the cron schedules and the queue set, in one MULTI (one
    instant)."""
    client: Any = redis.asyncio.Redis.from_url(admin_url)
    try:
        names = sorted(
            [k async for k in client.scan_iter(match=f"{PREFIX}:{{{QUEUE}}}:*")]
            + [k async for k in client.scan_iter(match=f"{PREFIX}:{{cron}}:*")]
            + [k async for k in client.scan_iter(match=f"{PREFIX}:queues")]
        )
        kinds = [(await client.type(k)).decode() for k in names]
        async with client.pipeline(transaction=True) as pipe:
            for name, kind in zip(names, kinds, strict=True):
                pipe.execute_command(*READ[kind](name))
                pipe.execute_command("PTTL", name)
            replies = await pipe.execute()
    finally:
        await client.aclose()
    keys: list[dict[str, Any]] = []
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        raw, pttl = replies[2 * i], replies[2 * i + 1]
        keys.append(
            {
                "key": name.decode().removeprefix(f"{PREFIX}:"),
                "type": kind,
                "pttl": pttl,
                "value": _value(kind, raw),
            }
        )
    return keys


def _value(kind: str, raw: Any) -> Any:
    if kind == "hash":
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
        return {_text(k): _text(v) for k, v in pairs}
    if kind in ("list", "set"):
        return sorted(_text(v) for v in raw) if kind == "set" else [_text(v) for v in raw]
    if kind == "zset":
        return [[_text(m), s] for m, s in raw]
    if kind == "stream":
        return [[_text(i), {_text(k): _text(v) for k, v in f.items()}] for i, f in raw]
    return _text(raw)


def _release() -> str:
    """The commit src/ comes from; the recording is of a clean tree only."""
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    if dirty.strip():
        raise SystemExit(
            f"src/ has uncommitted changes: record a release, not a work tree\n{dirty}"
        )
    return subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


async def main(out: Path) -> None:
    release = _release()
    with tempfile.TemporaryDirectory() as directory:
        engine, proc = start_server("valkey", Path(directory))
        try:
            app = build_app(engine.admin_url)
            async with app:
                ids = await drive(app)
            keys = await snapshot(engine.admin_url)
        finally:
            stop(proc)
    record = {
        "release": release,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "queue": QUEUE,
        "tasks": ids,
        "keys": keys,
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    await asyncio.to_thread(out.write_text, text)
    print(f"{len(keys)} keys of release {release[:7]} written to {out}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
