from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime

import pytest

from segue import PayloadError
from segue._codec import ArgsDecoder, encode, encode_args
from segue._options import TaskOptions


@dataclasses.dataclass
class P:
    x: int


def f(a: int, when: datetime, *rest: P, flag: bool = False, **extra: float) -> None: ...


def test_arguments_decode_to_their_annotations() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    data = encode_args((1, when, P(1), P(2)), {"flag": True, "z": 1}, what="x", limit=1 << 20)
    args, kwargs = ArgsDecoder(f, typing.get_type_hints(f), skip_first=False).decode(data)
    assert args == [1, when, P(1), P(2)]
    assert kwargs == {"flag": True, "z": 1.0}


def test_limits_and_unencodable_values_are_refused() -> None:
    with pytest.raises(PayloadError, match="over the limit of 10 bytes"):
        encode("x" * 20, what="arguments of t", limit=10)
    with pytest.raises(PayloadError, match="arguments of t cannot be encoded"):
        encode(object(), what="arguments of t", limit=100)


def test_backoff_is_exponential_with_jitter() -> None:
    opts = TaskOptions(name="t", retry_backoff=1.0)
    for tries in (1, 2, 3, 4):
        step = 2 ** (tries - 1)
        assert step / 2 <= opts.backoff(tries) <= step
    assert TaskOptions(name="t", retry_backoff=lambda n: 7.0 * n).backoff(2) == 14.0
