"""A background loop stops even when Python 3.11 lost its CancelledError (segue._cancel)."""

from __future__ import annotations

import asyncio

import pytest

from segue import _cancel


async def _loop_that_loses_one_cancel(turns: list[int]) -> None:
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what 3.11's wait_for does when its inner call ends in the same turn
        turns.append(1)
        await _cancel.sleep(10)


def test_a_loop_whose_cancel_was_swallowed_stops_at_its_next_turn() -> None:
    async def main() -> None:
        turns: list[int] = []
        task = asyncio.create_task(_loop_that_loses_one_cancel(turns))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 1.0)
        assert turns == [1]

    asyncio.run(main())


def test_an_uncancelled_task_sleeps_normally() -> None:
    async def main() -> None:
        await _cancel.sleep(0.01)
        _cancel.raise_if_cancelling()

    asyncio.run(main())
