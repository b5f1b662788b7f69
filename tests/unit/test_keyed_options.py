"""Limit declarations: task-wide and keyed parts, the lane a call goes to, and the tables a
worker publishes (claim.lua reads them)."""

from __future__ import annotations

import pytest

from segue import ConfigurationError, Limit
from segue._options import TaskOptions, lane_of, limit_tables


def opts(**kw: object) -> TaskOptions:
    return TaskOptions(name="api.call", **kw)  # type: ignore[arg-type]


def lane(o: TaskOptions, *args: object, override: object = None, **kwargs: object) -> str:
    return lane_of(
        o, lambda: dict(zip(("tenant", "i"), args, strict=False)) | kwargs, args, kwargs, override
    )


def test_plain_limits_stay_task_wide_and_make_no_lane() -> None:
    o = opts(concurrency=3, rate_limit="20/s", rate_burst=2)
    assert (o.limits.concurrency, o.limits.rate, o.limits.has_keyed) == (3, "20/s", False)
    assert lane(o, "t1") == ""
    t = limit_tables([o])
    assert t.concurrency == {"api.call": 3} and t.keyed == {}
    assert opts(concurrency=Limit(4)).limits.concurrency == 4  # no key, no name: task-wide


def test_keyed_limits_combine_with_task_wide_ones_and_publish_one_spec() -> None:
    o = opts(
        concurrency=(20, Limit(5, key="tenant", weight=2)),
        rate_limit=Limit("100/m", key="tenant", burst=10),
    )
    lim = o.limits
    assert (lim.concurrency, lim.keyed_concurrency, lim.keyed_rate, lim.weight) == (
        20,
        5,
        "100/m",
        2,
    )
    assert lane(o, "acme", 1) == "api.call|acme"
    assert lane(o, "acme", 1, override="other") == "api.call|other"
    per_ms = 100 / 60 / 1000
    assert limit_tables([o]).keyed == {"api.call": f"5 {per_ms!r} 10 2"}


def test_workers_publish_the_lane_a_task_sent_by_name_joins() -> None:
    keyed = opts(concurrency=Limit(5, key="tenant", name="partner-api"))
    shared = TaskOptions(name="report", concurrency=Limit(1, name="reports"))
    plain = TaskOptions(name="plain", concurrency=3)
    t = limit_tables([keyed, shared, plain])
    # keyed by an argument: the call's limit_key= completes the lane; no key: the lane itself
    assert t.lanes == {"api.call": "partner-api", "report": "reports|"}
    assert t.lanes_clear == ["plain"]


def test_a_named_limit_is_shared_and_a_key_may_be_a_function() -> None:
    o = opts(concurrency=Limit(2, key=lambda tenant, i: f"{tenant}-{i % 2}", name="shared"))
    assert lane(o, "acme", 3) == "shared|acme-1"
    assert lane(opts(concurrency=Limit(1, name="global")), "x") == "global|"
    # without a keyed limit, limit_key= still gives a lane: turns, no budget
    assert lane(opts(), "x", override=7) == "api.call|7"


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="one limit key"):
        opts(concurrency=Limit(1, key="a"), rate_limit=Limit("1/s", key="b"))
    with pytest.raises(ConfigurationError, match="two keyed"):
        opts(concurrency=(Limit(1, key="a"), Limit(2, key="a")))
    with pytest.raises(ConfigurationError):
        opts(concurrency=Limit(0, key="a"))
    with pytest.raises(ConfigurationError):
        opts(rate_limit=Limit("fast", key="a"))
    with pytest.raises(ConfigurationError):
        Limit(1, key="a", name="has|bar")
    with pytest.raises(ConfigurationError, match="does not pass"):
        lane(opts(concurrency=Limit(1, key="missing")), "x")
