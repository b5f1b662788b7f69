"""`segue dashboard APP`: refuses to start without a choice about authentication, and
serves on loopback by default (uvicorn.run is replaced: nothing listens here)."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from typer.testing import CliRunner

from segue._cli import cli

APP = "tests.apps.durable:app"


PASSWORD = "a long enough password"


def _run(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> tuple[Any, dict[str, Any]]:
    served: dict[str, Any] = {}
    env.setdefault("SEGUE_DASHBOARD_SECRET", "0123456789abcdef" * 4)

    def fake_run(asgi: Any, **options: Any) -> None:
        served.update(options, asgi=asgi)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    for name in ("SEGUE_DASHBOARD_PASSWORD", "SEGUE_DASHBOARD_USER", "SEGUE_DASHBOARD_SECRET"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli, ["dashboard", APP, *args], env=env)
    return result, served


def test_dashboard_needs_a_password_or_an_explicit_no_auth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, served = _run(monkeypatch)
    assert result.exit_code == 2 and not served
    assert "--no-auth" in result.output
    result, served = _run(monkeypatch, "--no-auth", "--password", PASSWORD)
    assert result.exit_code == 2 and not served


def test_dashboard_serves_on_loopback_with_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, served = _run(monkeypatch, "--port", "9123", SEGUE_DASHBOARD_PASSWORD=PASSWORD)
    assert result.exit_code == 0, result.output
    assert served["host"] == "127.0.0.1" and served["port"] == 9123
    assert isinstance(served["asgi"], Starlette)
    result, served = _run(monkeypatch, "--no-auth")
    assert result.exit_code == 0, result.output
    assert served["host"] == "127.0.0.1"
