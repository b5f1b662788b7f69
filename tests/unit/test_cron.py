"""Cron expressions and zones, checked at declaration; the ticks they make (no server)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from segue import App, ConfigurationError, Context, _calls
from segue._cron import parse
from segue._keys import CronKeys
from segue._scheduler import plan, tick_id

LISBON = ZoneInfo("Europe/Lisbon")
NEW_YORK = ZoneInfo("America/New_York")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def ticks(expr: str, tz: str | None, start: datetime, n: int) -> list[datetime]:
    """The first `n` ticks after `start`, as datetimes in the schedule's zone."""
    cron = parse(expr, tz)
    it = cron.ticks_after(ms(start))
    return [datetime.fromtimestamp(next(it) / 1000, cron.zone) for _ in range(n)]


def test_five_fields_with_names_in_a_time_zone() -> None:
    # Friday 3 July 2026, noon UTC: the next weekday 09:30 in Lisbon (UTC+1 in summer)
    got = ticks("30 9 * * mon-fri", "Europe/Lisbon", datetime(2026, 7, 3, 12, tzinfo=UTC), 3)
    assert [t.isoformat() for t in got] == [
        "2026-07-06T09:30:00+01:00",
        "2026-07-07T09:30:00+01:00",
        "2026-07-08T09:30:00+01:00",
    ]
    got = ticks("0 12 1 jan,jul *", None, datetime(2026, 3, 1, tzinfo=UTC), 2)
    assert got == [datetime(2026, 7, 1, 12, tzinfo=UTC), datetime(2027, 1, 1, 12, tzinfo=UTC)]


def test_six_fields_put_seconds_first() -> None:
    start = datetime(2026, 7, 3, 12, 0, 0, 400_000, tzinfo=UTC)
    assert ticks("*/1 * * * * *", None, start, 3) == [
        datetime(2026, 7, 3, 12, 0, s, tzinfo=UTC) for s in (1, 2, 3)
    ]
    assert ticks("15 0 * * * *", None, start, 2) == [
        datetime(2026, 7, 3, 12, 0, 15, tzinfo=UTC),
        datetime(2026, 7, 3, 13, 0, 15, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("alias", "first"),
    [
        ("@hourly", datetime(2026, 7, 3, 13, tzinfo=UTC)),
        ("@daily", datetime(2026, 7, 4, tzinfo=UTC)),
        ("@midnight", datetime(2026, 7, 4, tzinfo=UTC)),
        ("@weekly", datetime(2026, 7, 5, tzinfo=UTC)),  # Sunday
        ("@monthly", datetime(2026, 8, 1, tzinfo=UTC)),
        ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@annually", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@HOURLY", datetime(2026, 7, 3, 13, tzinfo=UTC)),
    ],
)
def test_aliases(alias: str, first: datetime) -> None:
    assert ticks(alias, None, datetime(2026, 7, 3, 12, 30, tzinfo=UTC), 1) == [first]


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("* * *", "3 field(s)"),
        ("* * * * * * *", "7 field(s)"),
        ("", "0 field(s)"),
        ("@every", "unknown alias"),
        ("*/0 * * * *", "step"),
        ("0 0 30 2 *", "never matches"),
        ("0 0 * * funday", "invalid"),
    ],
)
def test_an_invalid_expression_is_refused_naming_it_and_why(expr: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse(expr)
    assert repr(expr) in str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc/passwd", ""])
def test_an_unknown_time_zone_is_refused(tz: str) -> None:
    with pytest.raises(ConfigurationError, match=r"time zone .* is unknown"):
        parse("* * * * *", tz)


def test_a_repeated_local_hour_fires_once() -> None:
    # Lisbon goes back from 02:00 WEST to 01:00 WET on 25 October 2026
    start = datetime(2026, 10, 24, 12, tzinfo=UTC)
    daily = ticks("30 1 * * *", "Europe/Lisbon", start, 2)
    assert [t.isoformat() for t in daily] == [
        "2026-10-25T01:30:00+01:00",  # the first 01:30 only
        "2026-10-26T01:30:00+00:00",
    ]
    start = datetime(2026, 10, 24, 23, 10, tzinfo=UTC)  # 00:10 WEST
    half_hourly = ticks("*/30 * * * *", "Europe/Lisbon", start, 5)
    assert [t.isoformat() for t in half_hourly] == [
        "2026-10-25T00:30:00+01:00",
        "2026-10-25T01:00:00+01:00",
        "2026-10-25T01:30:00+01:00",
        "2026-10-25T02:00:00+00:00",  # 01:00 and 01:30 WET were passed already
        "2026-10-25T02:30:00+00:00",
    ]


def test_a_skipped_local_hour_fires_once_at_its_old_offset() -> None:
    # New York goes from 02:00 EST to 03:00 EDT on 8 March 2026
    daily = ticks("30 2 * * *", "America/New_York", datetime(2026, 3, 7, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in daily] == [
        "2026-03-08T03:30:00-04:00",  # 02:30 EST, which does not exist on the wall
        "2026-03-09T02:30:00-04:00",
    ]
    start = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST
    every20 = ticks("*/20 * * * *", "America/New_York", start, 4)
    assert [t.isoformat() for t in every20] == [
        "2026-03-08T01:40:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:20:00-04:00",
        "2026-03-08T03:40:00-04:00",
    ]


def test_the_next_tick_after_a_moment_in_a_repeated_hour_is_later_than_it() -> None:
    # 01:20 WET, the second pass of 01:xx in Lisbon: nothing of this hour fires again
    now = ms(datetime(2026, 10, 25, 1, 20, tzinfo=UTC))
    nxt = parse("*/30 * * * *", "Europe/Lisbon").next_after(now)
    assert nxt == ms(datetime(2026, 10, 25, 2, 0, tzinfo=UTC))


def test_missed_ticks_fire_once_then_go_on_from_now_unless_catching_up() -> None:
    cron = parse("*/1 * * * * *")
    tick = ms(datetime(2026, 7, 3, 12, 0, 0, tzinfo=UTC))
    now = tick + 4_300  # four more ticks passed since
    assert plan(cron, False, tick, now) == ([tick], tick + 5_000)
    assert plan(cron, True, tick, now) == ([tick + i * 1000 for i in range(5)], tick + 5_000)
    assert plan(cron, False, tick, tick + 200) == ([tick], tick + 1_000)  # on time


def test_tick_ids_name_queue_schedule_and_instant() -> None:
    assert tick_id("mail", "reports.daily", 1_783_070_400_000) == (
        "mail:cron-reports.daily-1783070400000"
    )


def test_app_cron_declares_a_task_and_its_schedule() -> None:
    app = App("t", redis_url="redis://127.0.0.1:1/0", queue="jobs")

    @app.cron("30 9 * * mon-fri", name="reports.daily", tz="Europe/Lisbon", max_tries=1)
    async def daily(ctx: Context) -> str:
        return ctx.task_id

    assert app.registry["reports.daily"] is daily
    assert daily.opts.max_tries == 1
    schedule = app.crons["reports.daily"]
    assert schedule.id == "reports.daily"
    assert schedule.cron.tz == "Europe/Lisbon" and not schedule.catch_up
    assert schedule.sig.args == () and schedule.sig.task is daily


def test_app_cron_refuses_a_bad_expression_or_a_task_that_needs_arguments() -> None:
    app = App("t", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match=r"'30 25 \* \* \*' is invalid"):
        app.cron("30 25 * * *", name="never")
    with pytest.raises(ConfigurationError, match="time zone 'Lisbon'"):
        app.cron("30 9 * * *", name="never", tz="Lisbon")

    def needs(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="no arguments"):
        app.cron("* * * * *", name="needs")(needs)  # type: ignore[arg-type]
    assert "needs" not in app.registry and not app.crons


def test_app_schedule_refuses_before_touching_the_server() -> None:
    app = App("t", redis_url="redis://127.0.0.1:1/0")  # nothing listens there

    @app.task(name="double")
    def double(x: int) -> int:
        return 2 * x

    async def refused() -> None:
        with pytest.raises(ConfigurationError, match="'every minute' is invalid"):
            await app.schedule(double.call(2), cron="every minute")
        with pytest.raises(ConfigurationError, match="do not apply"):
            await app.schedule(double.options(delay=5).call(2), cron="* * * * *")
        with pytest.raises(ConfigurationError, match="schedule id"):
            await app.schedule(double.call(2), cron="* * * * *", id="two words")
        with pytest.raises(TypeError, match="wrong arguments"):
            await app.schedule(double.call(), cron="* * * * *")

    asyncio.run(refused())


def test_cron_scripts_take_the_keys_their_headers_document_all_in_the_cron_slot() -> None:
    ck = CronKeys("segue")
    calls = (
        _calls.cron_put(ck, "s", b"{}", "x", ""),
        _calls.cron_take(ck, 1, 1),
        _calls.cron_advance(ck, "s", 1, 1, ""),
        _calls.cron_remove(ck, "s"),
    )
    for script, keys, _ in calls:
        assert script.numkeys == len(keys), script.name
        assert all(k.startswith("segue:{cron}:") for k in keys)
