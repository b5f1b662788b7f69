"""The dashboard against an attacker: password guessing (form and HTTP Basic), DNS
rebinding, forged or stolen sessions, costly requests to its open paths."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from segue import App, ConfigurationError
from segue._cli import cli
from segue.dashboard import create_app
from segue.dashboard._security import Security
from tests.e2e.conftest import PASSWORD, USER, dashboard, login

SECRET = b"0123456789abcdef" * 4


def _session(value: str) -> dict[str, str]:
    return {"cookie": f"segue_session={value}"}


def _client(asgi: Any, address: str = "127.0.0.1", host: str = "testserver") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=asgi, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


async def test_basic_auth_is_throttled_like_the_form(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    async with app, _client(create_app(app, close_app=False, auth=(USER, PASSWORD))) as c:
        for _ in range(5):
            assert (await c.get("/", auth=(USER, "wrong guess"))).status_code == 401
        refused = await c.get("/", auth=(USER, PASSWORD))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        # the form shares the same count
        await c.get("/login")
        assert (await login(c)).status_code == 429


async def test_a_forwarded_for_header_from_an_untrusted_peer_changes_nothing(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    asgi = create_app(app, close_app=False, auth=(USER, PASSWORD))
    async with app, _client(asgi) as c:
        await c.get("/login")
        for i in range(5):
            c.headers["x-forwarded-for"] = f"10.0.0.{i}"
            assert (await login(c, USER, "wrong guess")).status_code == 401
        c.headers["x-forwarded-for"] = "10.0.0.99"
        assert (await login(c)).status_code == 429


async def test_behind_a_trusted_proxy_each_client_is_counted_apart(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    asgi = create_app(app, close_app=False, auth=(USER, PASSWORD), trusted_proxies=["127.0.0.1"])
    async with app, _client(asgi) as c:
        await c.get("/login")
        c.headers["x-forwarded-for"] = "203.0.113.7"
        for _ in range(5):
            assert (await login(c, USER, "wrong guess")).status_code == 401
        assert (await login(c)).status_code == 429
        # the operator, from another address behind the same proxy, still gets in
        c.headers["x-forwarded-for"] = "198.51.100.1, 203.0.113.7"  # spoofed left part
        assert (await login(c)).status_code == 429
        c.headers["x-forwarded-for"] = "198.51.100.1"
        assert (await login(c)).status_code == 303


async def test_failures_from_many_addresses_close_password_checks_for_all(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    asgi = create_app(app, close_app=False, auth=(USER, PASSWORD))

    async def guess(i: int) -> int:
        async with _client(asgi, address=f"10.1.{i // 250}.{i % 250}") as c:
            return (await c.get("/", auth=(USER, f"guess {i}"))).status_code

    async with app:
        codes = await asyncio.gather(*(guess(i) for i in range(50)))
        assert set(codes) == {401}
        async with _client(asgi, address="192.0.2.1") as fresh:
            assert (await fresh.get("/", auth=(USER, PASSWORD))).status_code == 429


async def test_a_foreign_host_is_refused_without_auth(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    asgi = create_app(app, close_app=False, auth=None)
    async with app:
        for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080"):
            async with _client(asgi, host=host) as c:
                assert (await c.get("/")).status_code == 200, host
        async with _client(asgi, host="rebound.example:8080") as c:
            assert (await c.get("/")).status_code == 400
            assert (await c.get("/tasks")).status_code == 400
        listed = create_app(app, close_app=False, auth=None, allowed_hosts=["ops.internal"])
        async with _client(listed, host="ops.internal") as c:
            assert (await c.get("/")).status_code == 200


def test_short_passwords_and_weak_secrets_are_refused(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    with pytest.raises(ConfigurationError, match="at least 12"):
        create_app(app, auth=(USER, "x"))
    with pytest.raises(ConfigurationError, match="at least 32 random bytes"):
        create_app(app, auth=(USER, PASSWORD), secret_key=b"hunter2")


async def test_forged_future_dated_and_revoked_sessions_are_refused(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    async with app, dashboard(app, secret_key=SECRET) as c:
        stolen = c.cookies["segue_session"]
        assert (await c.get("/")).status_code == 200
        # a session signed with the secret alone (what the secret, once guessed, forged)
        security = Security(
            (USER, PASSWORD), secret=SECRET, session_seconds=3600.0, secure_cookies=False
        )
        who = base64.urlsafe_b64encode(USER.encode()).decode().rstrip("=")
        text = f"{who}.{int(time.time())}.0.00"
        forged = f"{text}.{security._sign('session', text)}"
        assert (await c.get("/", headers=_session(forged))).status_code == 401
        # a session dated ten years ahead, validly signed, is refused
        text = f"{who}.{int(time.time()) + 10 * 365 * 86400}.0.00"
        ahead = f"{text}.{security._sign('session', text, security._session_key)}"
        assert (await c.get("/", headers=_session(ahead))).status_code == 401
        # logout revokes the session wherever it was copied
        page = await c.get("/")
        assert page.status_code == 200
        assert (await c.post("/logout", data={"csrf": c.cookies["segue_csrf"]})).status_code == 303
        c.cookies.delete("segue_session")
        assert (await c.get("/", headers=_session(stolen))).status_code == 401

    async with app, dashboard(app, secret_key=SECRET) as c:
        kept = c.cookies["segue_session"]
        # the same secret with another password: sessions of the old one are void
        changed = create_app(app, close_app=False, auth=(USER, PASSWORD + "!"), secret_key=SECRET)
        async with _client(changed) as other:
            assert (await other.get("/", headers=_session(kept))).status_code == 401


async def test_a_huge_range_header_on_a_static_file_is_cheap(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    async with app, dashboard(app, sign_in=False) as c:
        ranges = ",".join(f"{i}-{i + 1}" for i in range(0, 20_000, 3))
        started = time.monotonic()
        response = await c.get("/static/dashboard.css", headers={"range": f"bytes={ranges}"})
        took = time.monotonic() - started
        assert response.status_code in (200, 206, 416)
        assert took < 2.0, f"a Range header took {took:.1f} s of the event loop"


async def test_metrics_scrapes_are_served_from_a_short_cache(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="work")
    async def work() -> None: ...

    async with app, dashboard(app, sign_in=False) as c:
        scrapes = await asyncio.gather(*(c.get("/metrics") for _ in range(6)))
        assert len({s.text for s in scrapes}) == 1
        await work.enqueue()
        assert (await c.get("/metrics")).text == scrapes[0].text  # within the cache time
        assert (await c.get("/health")).status_code == 200


def _serve_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str
) -> tuple[Any, dict[str, Any]]:
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **o: served.update(o, asgi=asgi))
    monkeypatch.delenv("SEGUE_DASHBOARD_SECRET", raising=False)
    env = {
        "SEGUE_DASHBOARD_PASSWORD": PASSWORD,
        "SEGUE_DASHBOARD_SECRET_FILE": str(tmp_path / "secret"),
    }
    result = CliRunner().invoke(cli, ["dashboard", "tests.apps.durable:app", *args], env=env)
    return result, served


def test_the_cli_refuses_exposure_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, served = _serve_cli(monkeypatch, tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 2 and not served
    assert "--insecure" in result.output
    result, served = _serve_cli(monkeypatch, tmp_path, "--host", "0.0.0.0", "--insecure")
    assert result.exit_code == 0, result.output
    assert served["proxy_headers"] is False  # X-Forwarded-For only from --trusted-proxy
    monkeypatch.delenv("SEGUE_DASHBOARD_PASSWORD", raising=False)
    result = CliRunner().invoke(
        cli,
        ["dashboard", "tests.apps.durable:app", "--no-auth", "--host", "0.0.0.0", "--insecure"],
    )
    assert result.exit_code == 2 and "loopback only" in result.output


def test_the_cli_generates_a_private_session_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, _ = _serve_cli(monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    secret = tmp_path / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text()) == 64
    first = secret.read_text()
    _serve_cli(monkeypatch, tmp_path)
    assert secret.read_text() == first  # kept: sign-ins survive a restart
    os.chmod(secret, 0o644)
    result, served = _serve_cli(monkeypatch, tmp_path)
    assert result.exit_code == 2 and not served and "chmod 600" in result.output


async def test_the_cli_serves_allowed_hosts_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result, served = _serve_cli(monkeypatch, tmp_path, "--allowed-host", "queue.internal")
    assert result.exit_code == 0, result.output
    for host, code in (("queue.internal", 401), ("localhost:8080", 401), ("evil.example", 400)):
        async with _client(served["asgi"], host=host) as c:
            assert (await c.get("/tasks")).status_code == code, host
