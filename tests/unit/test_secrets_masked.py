"""Passwords never appear in a repr or an error message: URLs are shown masked."""

from __future__ import annotations

import importlib

import pytest
from typer.testing import CliRunner

from segue import (
    App,
    ConfigurationError,
    Settings,  # registers `segue status` on cli
)
from segue._cli import cli
from segue._redact import mask_url

importlib.import_module("segue._cli_inspect")  # registers `segue status` on cli

SECRETS = ("s3cr3t-pw", "sentinel-pw", "ssl-pw")


def _clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:s3cr3t-pw@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:s3cr3t-pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://u:s3/cr?3t@h:6379/0", "redis://u:***@h:6379/0"),
        ("unix:///run/v.sock", "unix:///run/v.sock"),
        (
            "redis+sentinel://u:s3cr3t-pw@a:26379,b:26379/m?sentinel_password=sentinel-pw&x=1",
            "redis+sentinel://u:***@a:26379,b:26379/m?sentinel_password=***&x=1",
        ),
        ("rediss://h:6380/0?ssl_password=ssl-pw", "rediss://h:6380/0?ssl_password=***"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_reprs_of_settings_and_app_hide_the_password() -> None:
    url = "redis+sentinel://u:s3cr3t-pw@h:26379/m?sentinel_password=sentinel-pw"
    settings = Settings(redis_url=url)
    _clean(repr(settings))
    assert "redis+sentinel://u:***@h:26379/m" in repr(settings)
    _clean(repr(App("shop", settings=settings)))
    _clean(repr(App("shop", redis_url="redis://u:s3cr3t-pw@h:1/0")))


def test_a_sentinel_url_error_hides_both_passwords() -> None:
    url = "redis+sentinel://u:s3cr3t-pw@h:26379/?sentinel_password=sentinel-pw"
    with pytest.raises(ConfigurationError) as caught:
        Settings(redis_url=url)
    _clean(str(caught.value))
    result = CliRunner().invoke(cli, ["status", "--url", url])
    assert result.exit_code == 1, result.output
    assert "names no service" in result.output
    _clean(result.output)
