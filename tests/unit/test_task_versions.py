"""Task versions as declared: the options refused, the chain of migrations, ctx.version of a
local run (issue 17, item 1)."""

from __future__ import annotations

from typing import Any

import pytest

from segue import App, ConfigurationError, Context, SyncContext
from segue._migrate import VersionUnsupported, check_chain
from segue._options import TaskOptions


def up(state: dict[str, Any]) -> dict[str, Any]:
    return state


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"version": 0}, "version must be an int >= 1"),
        ({"version": True}, "version must be an int >= 1"),
        ({"version": "2"}, "version must be an int >= 1"),
        ({"version": 2, "migrate": {2: up}}, "an int from 1 to 1"),
        ({"version": 3, "migrate": {0: up}}, "an int from 1 to 2"),
        ({"version": 2, "migrate": {"1": up}}, "each key is a version"),
        ({"version": 2, "migrate": {1: "up"}}, "must be a function"),
    ],
)
def test_bad_versions_and_migrations_are_refused_at_declaration(
    options: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        TaskOptions(name="t", **options)


def test_migrations_chain_from_a_version_up_to_the_codes() -> None:
    def a(s: dict[str, Any]) -> dict[str, Any]:
        return s

    def b(s: dict[str, Any]) -> dict[str, Any]:
        return s

    opts = TaskOptions(name="t", version=3, migrate={1: a, 2: b})
    assert opts.migrations(1) == [a, b]
    assert opts.migrations(2) == [b]
    assert opts.migrations(3) == []
    gap = TaskOptions(name="t", version=3, migrate={2: b})
    assert gap.migrations(1) is None
    with pytest.raises(VersionUnsupported, match=r"no migration 1->2 \(migrate=\{1: \.\.\.\}\)"):
        check_chain("q:1", gap, 1)
    check_chain("q:1", gap, 2)


async def test_a_local_run_sees_the_codes_version() -> None:
    app = App("local")

    @app.task(name="t.v", version=5, migrate={4: up})
    async def versioned(ctx: Context) -> int:
        return ctx.version

    @app.task(name="t.sync", version=2, migrate={1: up})
    def sync(ctx: SyncContext) -> int:
        return ctx.version

    assert await versioned.run() == 5
    assert await sync.run() == 2
