"""The fault proxy does to the traffic what each mode promises (other fault tests rely on it)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import redis
import trustme

from tests._support import Engine
from tests.faults.proxy import FaultProxy


@pytest.fixture
def proxy(segue_valkey: Engine, fault_seed: int) -> Iterator[FaultProxy]:
    with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as p:
        yield p


def _client(url: str, timeout: float = 2.0) -> redis.Redis:
    # no retries: each test wants to see the first failure, not redis-py's recovery
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=None
    )


def _raw_command(port: int, *args: bytes) -> bytes | None:
    """Send one command on a fresh socket; its reply, or None if the connection died."""
    packed = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(packed)
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            return None
        return data or None


def test_pass_forwards_both_ways_and_counts_bytes(proxy: FaultProxy, segue_valkey: Engine) -> None:
    with _client(proxy.url_for(segue_valkey.url)) as client:
        client.set("segue:proxy:pass", "v")
        assert client.get("segue:proxy:pass") == b"v"
    stats = proxy.stats()
    assert stats.accepted >= 1
    assert stats.bytes_up > 0
    assert stats.bytes_down > 0


def test_delay_holds_each_direction(proxy: FaultProxy, segue_valkey: Engine) -> None:
    with _client(proxy.url_for(segue_valkey.url)) as client:
        client.ping()
        proxy.delay(150, direction="up")
        started = time.monotonic()
        client.ping()
        assert time.monotonic() - started >= 0.14
        proxy.pass_through()
        started = time.monotonic()
        client.ping()
        assert time.monotonic() - started < 0.14


def test_delay_is_latency_not_one_chunk_per_delay(proxy: FaultProxy) -> None:
    """Commands written one after another on one connection (a pipelining client) each
    arrive one delay later: the link is slow, not stop-and-wait."""
    proxy.delay(200, direction="up")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        started = time.monotonic()
        for _ in range(3):
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            time.sleep(0.03)  # separate chunks, each read and delayed on its own
        replies = b""
        while replies.count(b"+PONG") < 3:
            replies += sock.recv(1024)
        elapsed = time.monotonic() - started
    assert replies == b"+PONG\r\n" * 3  # in order
    # the last one was sent at 60 ms: ~260 ms; a stop-and-wait link needs two delays
    assert 0.19 <= elapsed < 0.36


def test_blackhole_keeps_the_socket_open_but_nothing_arrives(
    proxy: FaultProxy, segue_valkey: Engine
) -> None:
    admin = _client(segue_valkey.admin_url)
    admin.delete("segue:proxy:hole")
    with _client(proxy.url_for(segue_valkey.url), timeout=0.5) as client:
        client.ping()
        proxy.blackhole("up")
        with pytest.raises(redis.TimeoutError):
            client.set("segue:proxy:hole", "v")
    assert admin.get("segue:proxy:hole") is None
    assert proxy.stats().discarded_bytes > 0
    proxy.heal()
    with _client(proxy.url_for(segue_valkey.url)) as client:
        assert client.ping()
    admin.close()


def test_reset_drops_current_connections_and_can_refuse_new_ones(
    proxy: FaultProxy, segue_valkey: Engine
) -> None:
    url = proxy.url_for(segue_valkey.url)
    with _client(url) as client:
        client.ping()
        assert proxy.reset(refuse_new=True) == 1
        with pytest.raises(redis.ConnectionError):
            client.ping()
    with _client(url) as fresh, pytest.raises(redis.ConnectionError):
        fresh.ping()
    assert proxy.stats().refused >= 1
    proxy.heal()
    with _client(url) as client:
        assert client.ping()


def test_drop_reply_then_reset_runs_the_command_and_loses_its_reply(
    proxy: FaultProxy, segue_valkey: Engine
) -> None:
    admin = _client(segue_valkey.admin_url)
    admin.delete("segue:proxy:n")
    proxy.drop_reply_then_reset(1.0, match=b"INCR")
    assert _raw_command(proxy.port, b"INCR", b"segue:proxy:n") is None
    # the command ran although the client saw only a reset: an ambiguous write
    assert admin.get("segue:proxy:n") == b"1"
    # commands that do not match go through
    assert _raw_command(proxy.port, b"PING") == b"+PONG\r\n"
    stats = proxy.stats()
    assert stats.dropped_replies == 1
    assert stats.resets >= 1
    admin.close()


def test_the_seed_replays_the_same_drops(segue_valkey: Engine, fault_seed: int) -> None:
    def pattern() -> list[bool]:
        with FaultProxy.for_url(segue_valkey.admin_url, seed=fault_seed) as p:
            p.drop_reply_then_reset(0.3)
            return [_raw_command(p.port, b"PING") is None for _ in range(30)]

    first = pattern()
    assert first == pattern()
    assert any(first)
    assert not all(first)


def test_tls_termination_with_an_optional_client_certificate(
    segue_valkey: Engine,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_cert = ca.issue_cert("segue-client")
    with (
        FaultProxy.for_url(segue_valkey.admin_url, tls=server_ctx) as p,
        ca.cert_pem.tempfile() as ca_file,
        client_cert.private_key_and_cert_chain_pem.tempfile() as cert_file,
    ):
        url = p.url_for(segue_valkey.url, scheme="rediss") + f"?ssl_ca_certs={ca_file}"
        with _client(url) as anonymous, pytest.raises(redis.ConnectionError):
            anonymous.ping()
        with _client(f"{url}&ssl_certfile={cert_file}&ssl_keyfile={cert_file}") as client:
            assert client.ping()
