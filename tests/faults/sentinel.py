"""A Sentinel-managed valkey on loopback: primary + replica + 3 sentinels, stopped by pid.

Every node has three users besides `default` (kept for the test's admin reads):
- `segue`: the least-privilege rule set of RELIABILITY §9 (tests/_support.py), what segue
  logs in with;
- `segue-repl`: what a replica needs to copy its primary (PSYNC, REPLCONF, PING); both
  nodes have it and log in with it, because after a failover the roles swap;
- `segue-sentinel`: what the sentinels send to a monitored node (SENTINEL_RULES).
The sentinels require a password of their own from their clients and from each other.

`start_sentinel_set(..., tls=True)` runs Debian's redis-server 7.0 instead (the valkey
binary has no TLS), with every port TLS-only and certificates from a throw-away test CA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests._support import ACL_PASSWORD, ACL_RULES, ACL_USER, free_port, server_binary, stop

SERVICE = "segue-primary"
SENTINEL_USER = "segue-sentinel"
SENTINEL_PASSWORD = "sentinel-node-pw"
SENTINEL_CLIENT_PASSWORD = "sentinel-client-pw"
REPL_USER = "segue-repl"
REPL_PASSWORD = "repl-pw"
# What a sentinel sends to the nodes it monitors: INFO and ROLE to watch them, PING,
# PUBLISH/SUBSCRIBE on its hello channel, and in a failover a MULTI of REPLICAOF (older
# servers: SLAVEOF), CONFIG REWRITE and CLIENT KILL of the clients of the demoted node.
SENTINEL_RULES = [
    "on",
    f">{SENTINEL_PASSWORD}",
    "allchannels",
    "-@all",
    "+multi",
    "+exec",
    "+ping",
    "+info",
    "+role",
    "+subscribe",
    "+publish",
    "+replicaof",
    "+slaveof",
    "+config|rewrite",
    "+client|setname",
    "+client|kill",
    "+script|kill",
]
REPL_RULES = ["on", f">{REPL_PASSWORD}", "-@all", "+psync", "+replconf", "+ping"]
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


@dataclasses.dataclass(frozen=True)
class TestCA:
    """A certificate authority of one test run and a server certificate for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> TestCA:
        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=segue-test-ca")  # fmt: skip
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
                "-subj", "/CN=127.0.0.1")  # fmt: skip
        (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.pem", "-days", "2",
                "-extfile", "san.cnf")  # fmt: skip
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")

    def server_lines(self, port: int) -> list[str]:
        return [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {self.cert}",
            f"tls-key-file {self.key}",
            f"tls-ca-cert-file {self.ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]


@dataclasses.dataclass
class SentinelSet:
    """The running set; `url` is segue's `redis+sentinel://` URL as the `segue` user."""

    directory: Path
    nodes: dict[int, subprocess.Popen[bytes]]  # data node port → process
    sentinels: dict[int, subprocess.Popen[bytes]]
    primary_port: int
    tls: TestCA | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        url = (
            f"{scheme}://{ACL_USER}:{ACL_PASSWORD}@{hosts}/{SERVICE}/0"
            f"?sentinel_password={SENTINEL_CLIENT_PASSWORD}"
        )
        return url + (f"&ssl_ca_certs={self.tls.ca}" if self.tls else "")

    def _client(self, port: int, **extra: Any) -> Any:
        options: dict[str, Any] = {"socket_connect_timeout": 1, "socket_timeout": 5, **extra}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host="127.0.0.1", port=port, **options)

    def admin(self, port: int) -> Any:
        return self._client(port)

    def sentinel(self, port: int) -> Any:
        return self._client(port, password=SENTINEL_CLIENT_PASSWORD)

    def primary_as_seen(self) -> int | None:
        """The primary's port if every live sentinel names the same one, else None."""
        seen = set()
        for port in self.sentinels:
            try:
                with self.sentinel(port) as s:
                    _host, primary = s.sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                return None
            seen.add(int(primary))
        return seen.pop() if len(seen) == 1 else None

    def kill_primary(self) -> int:
        """SIGKILL the current primary (by pid); its port."""
        port = self.primary_port
        proc = self.nodes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        return port

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            stop(proc)


def _write_conf(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _user_line(name: str, rules: list[str]) -> str:
    return " ".join(["user", name, "reset", *rules])


def _node_conf(directory: Path, port: int, replica_of: int | None, tls: TestCA | None) -> Path:
    # Redis 7.0 has no CLIENT SETINFO (7.2+): an ACL rule naming it would stop the server
    rules = [r for r in ACL_RULES if not (tls and r == "+client|setinfo")]
    lines = [
        *(tls.server_lines(port) if tls else [f"port {port}"]),
        "bind 127.0.0.1",
        'save ""',
        "appendonly no",
        f"dir {directory}",
        f"logfile {directory}/node-{port}.log",
        "enable-debug-command local",
        "maxmemory-policy noeviction",
        # a replica must be in sync before a test kills its primary (RELIABILITY §4)
        "repl-diskless-sync-delay 0",
        f"masteruser {REPL_USER}",
        f"masterauth {REPL_PASSWORD}",
        "user default on nopass ~* &* +@all",
        _user_line(ACL_USER, rules),
        _user_line(REPL_USER, REPL_RULES),
        _user_line(SENTINEL_USER, SENTINEL_RULES),
    ]
    if replica_of is not None:
        lines.append(f"replicaof 127.0.0.1 {replica_of}")
    # a config file of its own, which the sentinels rewrite (CONFIG REWRITE) in a failover
    return _write_conf(directory / f"node-{port}.conf", lines)


def launch_node(
    directory: Path, port: int, replica_of: int | None = None
) -> subprocess.Popen[bytes]:
    """One valkey data node configured as in the set (users, no persistence), outside any
    Sentinel set: for tests that manage a primary and its replica themselves (e.g. with
    replication through a fault proxy: `replica_of` is then the proxy's port)."""
    binary = server_binary("valkey")
    assert binary is not None
    directory.mkdir(parents=True, exist_ok=True)
    return _launch(binary, _node_conf(directory, port, replica_of, None))


def _sentinel_conf(directory: Path, port: int, primary: int, tls: TestCA | None) -> Path:
    lines = [
        *(tls.server_lines(port) if tls else [f"port {port}"]),
        "bind 127.0.0.1",
        f"dir {directory}",
        f"logfile {directory}/sentinel-{port}.log",
        f"requirepass {SENTINEL_CLIENT_PASSWORD}",
        f"sentinel sentinel-pass {SENTINEL_CLIENT_PASSWORD}",
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {SERVICE} 1",
        f"sentinel auth-user {SERVICE} {SENTINEL_USER}",
        f"sentinel auth-pass {SERVICE} {SENTINEL_PASSWORD}",
    ]
    return _write_conf(directory / f"sentinel-{port}.conf", lines)


def _launch(binary: str, conf: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, str(conf), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _until(what: str, check: Any, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise _ExitedAtStart(f"a server of the Sentinel set exited ({proc.args!r})")
        with contextlib.suppress(redis.RedisError, ValueError, TypeError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Sentinel set did not come up: {what} within {timeout} s")
        time.sleep(0.05)


class _ExitedAtStart(RuntimeError):
    pass


def start_sentinel_set(directory: Path, *, tls: bool = False, timeout: float = 30.0) -> SentinelSet:
    """Start it and return once the replica is in sync and every sentinel sees the replica
    and the other two sentinels (so that a failover can be agreed on at once)."""
    binary = server_binary("redis" if tls else "valkey")
    if binary is None:
        pytest.skip("a TLS Sentinel set needs redis-server (built with TLS) on PATH")
    for attempt in range(3):
        try:
            return _start(binary, directory / f"attempt-{attempt}", tls, timeout)
        except _ExitedAtStart:
            # on a shared machine another process can take a chosen port before the
            # server binds it: start again on new ports
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _start(binary: str, directory: Path, tls: bool, timeout: float) -> SentinelSet:
    directory.mkdir(parents=True, exist_ok=True)
    ca = TestCA.make(directory) if tls else None
    ports: list[int] = []
    while len(ports) < 5:  # free_port only checks each one: two picks can coincide
        port = free_port()
        if port not in ports:
            ports.append(port)
    primary, replica, *sentinel_ports = ports
    s = SentinelSet(directory, {}, {}, primary, ca)
    try:
        s.nodes[primary] = _launch(binary, _node_conf(directory, primary, None, ca))
        s.nodes[replica] = _launch(binary, _node_conf(directory, replica, primary, ca))
        procs = list(s.nodes.values())

        def in_sync() -> bool:
            with s.admin(replica) as r:
                return bool(r.info("replication").get("master_link_status") == "up")

        _until("replica in sync", in_sync, timeout, procs)
        for port in sentinel_ports:
            s.sentinels[port] = _launch(
                binary, _sentinel_conf(directory, port, primary, ca), "--sentinel"
            )
        procs = [*s.nodes.values(), *s.sentinels.values()]

        def all_see_all() -> bool:
            for port in sentinel_ports:
                with s.sentinel(port) as c:
                    replicas = c.sentinel_slaves(SERVICE)
                    others = c.sentinel_sentinels(SERVICE)
                    ok = len(replicas) == 1 and not replicas[0]["is_sdown"]
                    if not ok or len(others) != 2:
                        return False
            return True

        _until("every sentinel sees the replica and the others", all_see_all, timeout, procs)
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A fresh Sentinel set for one test (a failover test leaves it changed)."""
    s = start_sentinel_set(tmp_path / "sentinel")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """One Sentinel set for the tests of a module that fault nothing."""
    s = start_sentinel_set(tmp_path_factory.mktemp("sentinel"))
    yield s
    s.stop()


@pytest.fixture
def tls_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A Sentinel set of redis-server 7.0 that speaks TLS only."""
    s = start_sentinel_set(tmp_path / "sentinel-tls", tls=True)
    yield s
    s.stop()
