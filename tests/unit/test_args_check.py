"""The enqueue check of arguments refuses exactly what the worker's decoding refuses, and
names the parameter: a table of values against typed parameters, each payload decoded as
the worker decodes it and checked as an enqueue checks it."""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any

import pydantic
import pytest

from segue import PayloadError
from segue._codec import ArgsDecoder, encode_args


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(pydantic.BaseModel):
    name: str
    size: int


def plain(n: int, ratio: float, tags: list[str], at: datetime, p: Point, m: Model) -> None: ...


def loose(n: int, anything: Any, bare, *, flag: bool = False) -> None: ...  # type: ignore[no-untyped-def]


def spread(n: int, *rest: int, **extra: float) -> None: ...


VALID: list[tuple[Any, ...]] = [
    (1, 2.5, ["a"], "2026-01-02T03:04:05Z", Point(1, 2), Model(name="a", size=1)),
    (1, 2, ("a", "b"), datetime(2026, 1, 2), {"x": 1, "y": 2}, {"name": "a", "size": 1}),
    ("7", "2.5", [], "2026-01-02T00:00:00", Point(0, 0), Model(name="", size=0)),  # strict=False
]
INVALID: list[tuple[tuple[Any, ...], str]] = [
    (({1, 2}, 2.5, [], "2026-01-02T00:00:00Z", Point(1, 2), Model(name="a", size=1)), "n"),
    ((1, "fast", [], "2026-01-02T00:00:00Z", Point(1, 2), Model(name="a", size=1)), "ratio"),
    ((1, 2.5, [1], "2026-01-02T00:00:00Z", Point(1, 2), Model(name="a", size=1)), "tags"),
    ((1, 2.5, [], "yesterday", Point(1, 2), Model(name="a", size=1)), "at"),
    ((1, 2.5, [], "2026-01-02T00:00:00Z", {"x": 1}, Model(name="a", size=1)), "p"),
    ((1, 2.5, [], "2026-01-02T00:00:00Z", Point(1, 2), {"name": "a", "size": "big"}), "m"),
]


def _decoder(fn: Any) -> ArgsDecoder:
    return ArgsDecoder(fn, typing.get_type_hints(fn), skip_first=False)


def _worker_refuses(dec: ArgsDecoder, data: bytes) -> bool:
    try:
        dec.decode(data)
    except PayloadError:
        return True
    return False


@pytest.mark.parametrize("args", VALID)
def test_what_the_worker_decodes_passes_the_check(args: tuple[Any, ...]) -> None:
    dec = _decoder(plain)
    assert dec._whole is not None  # the one-call check of the common case is under test
    for data in (
        encode_args(args, {}, what="x", limit=1 << 20),
        encode_args(
            args[:2],
            dict(zip(("tags", "at", "p", "m"), args[2:], strict=True)),
            what="x",
            limit=1 << 20,
        ),
    ):
        assert not _worker_refuses(dec, data)
        dec.check(data)


@pytest.mark.parametrize(("args", "bad"), INVALID)
def test_what_the_worker_refuses_fails_the_check_naming_the_parameter(
    args: tuple[Any, ...], bad: str
) -> None:
    dec = _decoder(plain)
    data = encode_args(args, {}, what="x", limit=1 << 20)
    assert _worker_refuses(dec, data)
    with pytest.raises(PayloadError, match=f"^parameter '{bad}': "):
        dec.check(data)
    by_name = encode_args(
        (),
        dict(zip(("n", "ratio", "tags", "at", "p", "m"), args, strict=True)),
        what="x",
        limit=1 << 20,
    )
    with pytest.raises(PayloadError, match=f"^parameter '{bad}': "):
        dec.check(by_name)


def test_values_the_decoder_cannot_check_pass() -> None:
    dec = _decoder(loose)
    dec.check(encode_args((1, {"any": [1]}, {2}), {"flag": True}, what="x", limit=1 << 20))
    with pytest.raises(PayloadError, match=r"^parameter 'flag': Expected `bool`"):
        dec.check(encode_args((1, None, None), {"flag": [1]}, what="x", limit=1 << 20))
    untyped = ArgsDecoder(lambda a, b=1: None, {}, skip_first=False)
    assert not untyped.typed
    untyped.check(b"not even JSON")  # nothing to check: a worker would decode any JSON here


def test_star_parameters_and_chain_steps_are_named() -> None:
    dec = _decoder(spread)
    dec.check(encode_args((1, 2, 3), {"z": 1.5}, what="x", limit=1 << 20))
    with pytest.raises(PayloadError, match=r"^parameter 'rest\[1\]': Expected `int`"):
        dec.check(encode_args((1, 2, "three"), {}, what="x", limit=1 << 20))
    with pytest.raises(PayloadError, match=r"^parameter 'z': Expected `float`"):
        dec.check(encode_args((1,), {"z": "x"}, what="x", limit=1 << 20))
    # a chain step's stored arguments start at its second parameter
    step = _decoder(plain)
    step.check(encode_args((2.5, []), {}, what="x", limit=1 << 20), first_to_come=True)
    with pytest.raises(PayloadError, match=r"^parameter 'ratio'"):
        step.check(encode_args(("x",), {}, what="x", limit=1 << 20), first_to_come=True)
