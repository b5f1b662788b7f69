"""An idempotency key becomes part of a task id, and task ids travel space- and
`|`-separated through graph.lua (after=, workflows): a key that could split there is refused
before anything is sent."""

from __future__ import annotations

import pytest

from segue import App, ConfigurationError


@pytest.mark.parametrize("key", ["a b", "a\tb", "x|0 other:id", "a\nb", "\x1b[2J", ""])
def test_keys_that_could_name_other_tasks_are_refused(key: str) -> None:
    app = App("keys", redis_url="redis://127.0.0.1:1/0")

    @app.task(name="k.job")
    async def job() -> None: ...

    with pytest.raises(ConfigurationError, match="key="):
        job.options(key=key)


def test_ordinary_keys_are_kept() -> None:
    app = App("keys", redis_url="redis://127.0.0.1:1/0")

    @app.task(name="k.job")
    async def job() -> None: ...

    assert job.options(key="order-42:2026/12/07").call().opts["key"] == "order-42:2026/12/07"
