"""A background loop stops even when Python 3.11 lost its CancelledError (segue._cancel)."""

from __future__ import annotations

import asyncio

from segue import _cancel


async def _loop_that_loses_one_cancel(turns: list[int]) -> None:
    lost = False
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if lost:
                raise
            lost = True  # what 3.11's wait_for does when its inner call ends in the same turn
        turns.append(1)


def test_a_loop_whose_cancel_was_swallowed_is_stopped_by_the_next_one() -> None:
    async def main() -> None:
        turns: list[int] = []
        task = asyncio.create_task(_loop_that_loses_one_cancel(turns))
        await asyncio.sleep(0)
        async with asyncio.timeout(2.0):
            await _cancel.cancel_and_wait(task)
        assert task.cancelled()
        assert turns == [1]

    asyncio.run(main())


def test_a_task_that_ends_on_its_own_is_waited_for() -> None:
    async def main() -> None:
        async def quick() -> int:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return 1  # ends by returning, not by raising
            return 0

        task = asyncio.create_task(quick())
        await asyncio.sleep(0)
        await _cancel.cancel_and_wait(task)
        assert task.result() == 1

    asyncio.run(main())
