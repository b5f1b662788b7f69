"""Arguments are checked at enqueue with the decoder the worker uses: what a worker would
refuse is refused before anything is written, naming the parameter; what it accepts
passes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from segue import App, PayloadError, TaskStatus


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def _nothing_written(app: App) -> bool:
    counts = await app.queue_counts()
    return sum(counts.values()) == 0


async def test_an_argument_the_worker_would_refuse_is_refused_at_enqueue(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="charge")
    async def charge(order_id: int, cents: int) -> None: ...

    async with app:
        with pytest.raises(PayloadError) as caught:
            await charge.enqueue({1, 2}, 100)  # type: ignore[arg-type]
        assert str(caught.value) == (
            "arguments of task charge do not decode for its parameters, so a worker would "
            "refuse them: parameter 'order_id': Expected `int`, got `array`"
        )
        with pytest.raises(PayloadError, match="parameter 'cents': Expected `int`, got `str`"):
            await charge.enqueue(1, cents="a hundred")  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="parameter 'cents'"):
            # one bad call refuses the whole batch, before any of it is sent
            await app.enqueue_many([charge.call(1, 1), charge.call(2, "x")])  # type: ignore[call-overload]
        assert await _nothing_written(app)


async def test_what_the_worker_accepts_is_accepted(make_app: Callable[..., App]) -> None:
    app = make_app()
    seen: list[Any] = []

    @app.task(name="shapes")
    async def shapes(  # type: ignore[no-untyped-def]
        ratio: float, ids: list[int], at: datetime, where: Point, anything: Any, bare, *rest: int
    ) -> None:
        seen.append((ratio, ids, at, where, anything, bare, rest))

    async with app:
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        # an int for a float, a tuple for a list, values the decoder cannot check (Any, no
        # annotation) of any JSON shape: what the worker decodes, enqueue lets through
        h = await shapes.enqueue(2, (1, 2), when, Point(1, 2), {"a": [1]}, {3}, 4, 5)  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match=r"parameter 'rest\[1\]': Expected `int`"):
            await shapes.enqueue(2, [], when, Point(1, 2), None, None, 4, "five")  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match="parameter 'where': Object missing required field"):
            await shapes.enqueue(2, [], when, {"x": 1}, None, None)  # type: ignore[arg-type]
        await app.drain()
        assert await h.status() is TaskStatus.SUCCEEDED
        assert seen == [(2.0, [1, 2], when, Point(1, 2), {"a": [1]}, [3], (4, 5))]


async def test_a_chain_step_is_checked_from_its_second_parameter(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.task(name="first")
    async def first(n: int) -> int:
        return n + 1

    @app.task(name="scale")
    async def scale(value: int, factor: int) -> int:
        return value * factor

    async with app:
        with pytest.raises(PayloadError, match=r"task scale .* parameter 'factor'"):
            await (first.call(1) | scale.call(factor="x")).enqueue()  # type: ignore[call-overload]
        assert await _nothing_written(app)
        wf = await (first.call(1) | scale.call(3)).enqueue()
        await app.drain()
        assert await wf.result() == 6
