"""claim.lua's rows as the worker decodes them: a row it cannot read in full still decodes,
naming the task and saying why, so the worker fails that task alone and goes on."""

from __future__ import annotations

from typing import Any

import pytest

from segue._wire import ClaimedRun

GOOD: list[Any] = [b"q:01", b"job", b"[[],{}]", 1, 3, b"0", b"3", b"", b"", 0, b"", b""]


def test_a_good_row_reads_in_full() -> None:
    run = ClaimedRun.parse(GOOD)
    assert (run.id, run.name, run.tries, run.gen, run.unreadable) == ("q:01", "job", 1, "3", None)
    # a record without a version is version 1, and started under its version
    assert (run.version, run.started_version) == (1, 1)
    moved = ClaimedRun.parse([*GOOD[:10], b"3", b"1"])
    assert (moved.version, moved.started_version) == (3, 1)
    assert ClaimedRun.parse([*GOOD[:10], b"2", b""]).started_version == 2


def test_a_last_delivery_is_one_whose_loss_ends_the_task() -> None:
    # as claim.lua decides it: a run lost before, and deliveries or tries spent
    def row(tries: int, lost: int) -> ClaimedRun:
        return ClaimedRun.parse([*GOOD[:3], tries, 3, b"0", b"3", b"", b"", lost])

    assert not row(2, 0).last_delivery(5)
    assert not row(1, 1).last_delivery(5)
    assert row(1, 4).last_delivery(5)
    assert row(3, 1).last_delivery(5)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        *((1, b"\xff name"), (5, b"abc"), (6, b"1.5"), (8, b"[1]"), (8, b"{not json")),
        *((9, b"x"), (10, b"two"), (10, b"0"), (11, b"1.5")),
    ],
)
def test_a_bad_field_makes_the_row_unreadable_not_an_exception(index: int, value: bytes) -> None:
    row = list(GOOD)
    row[index] = value
    run = ClaimedRun.parse(row)
    assert run.unreadable is not None
    assert run.id == "q:01" and run.gen == "3" and run.id_readable


def test_a_short_row_or_an_id_that_is_not_utf8() -> None:
    assert ClaimedRun.parse(GOOD[:4]).unreadable is not None
    run = ClaimedRun.parse([b"q:\xff", *GOOD[1:]])
    assert run.unreadable is not None and not run.id_readable
