"""Type-checked by mypy, never run: task versions and their migrations are typed.

Each `type: ignore[code]` is a negative test: under `warn_unused_ignores` (strict), mypy
fails if the error it silences ever stops being an error.
"""

from __future__ import annotations

from typing import Any, assert_type

from segue import App, Context, TaskHandle

app = App("typing")


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    return {"done": state.get("count", 0)}


@app.task(name="files.count", version=2, migrate={1: upgrade_v1})
async def count(ctx: Context, files: list[str]) -> int:
    assert_type(ctx.version, int)
    return len(files)


async def check() -> None:
    assert_type(await count.enqueue(["a"]), TaskHandle[int])
    app.task(name="files.bad", version="2")  # type: ignore[call-overload]


def not_an_upgrade(state: int) -> int:
    return state


@app.task(name="files.bad2", version=2, migrate={1: not_an_upgrade})  # type: ignore[dict-item]
async def bad_migration(ctx: Context) -> None: ...
