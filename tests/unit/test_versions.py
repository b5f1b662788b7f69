"""Which server versions get the Lua-advisory warning (RELIABILITY §9, minimum versions)."""

from __future__ import annotations

import pytest

from segue._versions import advisory


@pytest.mark.parametrize(
    ("server", "version"),
    [
        ("redis", "7.0.15"),
        ("redis", "7.2.10"),
        ("redis", "8.2.1"),
        ("valkey", "8.1.3"),
        ("valkey", "7.0.0"),
        ("redis", "6.2.14"),
    ],
)
def test_unpatched_versions_are_named_with_the_release_to_upgrade_to(
    server: str, version: str
) -> None:
    text = advisory(server, version)
    assert text is not None
    assert version in text and "CVE-2025-49844" in text and "upgrade to" in text


@pytest.mark.parametrize(
    ("server", "version"),
    [
        ("redis", "7.2.11"),
        ("redis", "7.4.6"),
        ("redis", "8.4.0"),
        ("valkey", "8.0.6"),
        ("valkey", "9.1.2"),
        ("keydb", "6.3.4"),
    ],
)
def test_patched_or_newer_versions_pass(server: str, version: str) -> None:
    assert advisory(server, version) is None


def test_the_release_to_upgrade_to_is_the_next_patched_branch() -> None:
    text = advisory("redis", "7.0.15")
    assert text is not None and "7.2.11" in text


def test_the_advisory_is_logged_once_per_process_not_per_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from segue._versions import warn_if_unpatched

    with caplog.at_level("WARNING", logger="segue.server"):
        for _ in range(3):
            assert warn_if_unpatched("redis", "7.0.1", "redis://a:6379/0") is not None
    assert len([r for r in caplog.records if "7.0.1" in r.getMessage()]) == 1
