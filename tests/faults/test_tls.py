"""Sec2 (RELIABILITY §9, DESIGN §9): segue over `rediss://`, the server side being the fault
proxy's TLS termination with certificates from a throwaway `trustme` CA.

Verification is on unless the URL turns it off: a certificate from another CA or for another
host name is refused, and each refusal is one BrokerError naming the server and the reason.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from segue import App, BrokerError, ConfigurationError
from tests._support import Engine
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import serving

# its assertions are invariants, not timings: scripts/test runs it beside another one
pytestmark = pytest.mark.pairable

ROOT = Path(__file__).resolve().parents[2]


class TLSSetup:
    """A CA, its bundle on disk, and a way to open TLS proxies whose certificate it issued."""

    def __init__(self, directory: Path, engine: Engine) -> None:
        self.ca = trustme.CA()
        self.directory = directory
        self.engine = engine
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        client = self.ca.issue_cert("segue-worker")
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    @contextlib.contextmanager
    def proxy(
        self, *hostnames: str, client_cert: bool = False, ca: trustme.CA | None = None
    ) -> Iterator[FaultProxy]:
        issuer = ca or self.ca
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issuer.issue_cert(*(hostnames or ("127.0.0.1", "localhost"))).configure_cert(ctx)
        if client_cert:
            self.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        with FaultProxy.for_url(self.engine.admin_url, tls=ctx) as p:
            yield p

    def url(self, proxy: FaultProxy, host: str = "127.0.0.1", **query: str) -> str:
        base = proxy.url_for(self.engine.url, scheme="rediss").replace("127.0.0.1", host, 1)
        options = {"ssl_ca_certs": self.ca_file, **query}
        return base + "?" + "&".join(f"{k}={v}" for k, v in options.items())


@pytest.fixture
def tls(tmp_path: Path, segue_valkey: Engine) -> TLSSetup:
    return TLSSetup(tmp_path, segue_valkey)


async def _connect_error(url: str) -> str:
    app = App("tls", redis_url=url)
    with pytest.raises(BrokerError) as caught:
        await app.connect()
    await app.close()
    return str(caught.value)


async def test_an_app_enqueues_and_a_worker_runs_the_task_over_tls(
    tls: TLSSetup, queue_name: str
) -> None:
    with tls.proxy() as proxy:
        app = App("tls", redis_url=tls.url(proxy), queue=queue_name, poll_seconds=0.2)

        @app.task(name="tls.add")
        async def add(x: int, y: int) -> int:
            return x + y

        async with app, serving(app):
            handle = await add.enqueue(2, 3)
            assert await handle.result(timeout=20) == 5
        # producer, worker and lease renewal each opened their own TLS connection
        assert proxy.stats().accepted >= 3


async def test_a_certificate_from_another_ca_is_refused(tls: TLSSetup) -> None:
    with tls.proxy(ca=trustme.CA()) as proxy:
        message = await _connect_error(tls.url(proxy))
    assert message.startswith(f"TLS with the server at rediss://127.0.0.1:{proxy.port}/0 failed")
    assert "certificate" in message


async def test_a_certificate_for_another_host_is_refused_unless_the_check_is_off(
    tls: TLSSetup,
) -> None:
    with tls.proxy("queue.example.org") as proxy:
        message = await _connect_error(tls.url(proxy))
        assert "TLS with the server" in message and "127.0.0.1" in message
        assert "certificate" in message
        app = App("tls", redis_url=tls.url(proxy, ssl_check_hostname="false"))
        async with app:
            await app.connect()


async def test_a_server_requiring_a_client_certificate_accepts_only_clients_with_one(
    tls: TLSSetup, queue_name: str
) -> None:
    with tls.proxy(client_cert=True) as proxy:
        message = await _connect_error(tls.url(proxy))
        assert message.startswith(f"TLS with the server at rediss://127.0.0.1:{proxy.port}/0")
        assert "client certificate" in message
        url = tls.url(proxy, ssl_certfile=tls.client_cert, ssl_keyfile=tls.client_key)
        app = App("tls", redis_url=url, queue=queue_name, poll_seconds=0.2)

        @app.task(name="tls.echo")
        async def echo(text: str) -> str:
            return text

        async with app, serving(app):
            handle = await echo.enqueue("signed")
            assert await handle.result(timeout=20) == "signed"


async def test_plaintext_to_the_tls_port_fails_with_a_clear_error(tls: TLSSetup) -> None:
    with tls.proxy() as proxy:
        message = await _connect_error(proxy.url_for(tls.engine.url))
    assert message == (
        f"the server at redis://127.0.0.1:{proxy.port}/0 speaks TLS: connect with rediss://"
    )


async def test_tls_options_need_a_rediss_url_and_known_values(tls: TLSSetup) -> None:
    plain = App("tls", redis_url=f"{tls.engine.url}?ssl_ca_certs={tls.ca_file}")
    with pytest.raises(ConfigurationError, match="use rediss:// to connect over TLS"):
        await plain.connect()
    with tls.proxy() as proxy:
        wrong = App("tls", redis_url=tls.url(proxy, ssl_cert_reqs="always"))
        with pytest.raises(ConfigurationError, match=r"ssl_cert_reqs .* not 'always'"):
            await wrong.connect()


def test_the_cli_reads_status_over_tls(tls: TLSSetup) -> None:
    with tls.proxy() as proxy:
        done = subprocess.run(
            [sys.executable, "-m", "segue", "status", "--url", tls.url(proxy)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 0, done.stderr
        refused = subprocess.run(
            [sys.executable, "-m", "segue", "status", "--url", tls.url(proxy).split("?")[0]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
        )
    # without the CA the system trust store does not know the test CA: refused, one line
    assert refused.returncode != 0
    assert "TLS with the server" in refused.stderr
