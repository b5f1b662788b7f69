"""The overview's throughput chart (counted from the event streams, drawn as SVG on the
server) and the task lists' search by id or name, over HTTP against a real server."""

from __future__ import annotations

import asyncio
import html
import itertools
import re
import time
from collections.abc import Callable

import pytest

from segue import App, Fail
from segue.dashboard import _throughput, _views
from tests.e2e.conftest import dashboard, page_ids

MINUTE_RE = re.compile(
    r'<g class="minute( current)?" data-minute="(\d\d:\d\d)"'
    r' data-succeeded="(\d+)" data-failed="(\d+)">'
)


def minutes(page: str) -> list[tuple[bool, str, int, int]]:
    """Each bar of the chart: (is the current minute, HH:MM, succeeded, failed)."""
    return [(bool(c), m, int(s), int(f)) for c, m, s, f in MINUTE_RE.findall(page)]


async def clear_of_a_minute_boundary() -> None:
    """Wait while the minute is about to turn, so what ends next lands in the current one."""
    while time.time() % 60 > 54:
        await asyncio.sleep(0.5)


def work_app(make_dash_app: Callable[..., App], **overrides: str) -> App:
    app = make_dash_app(**overrides)

    @app.task(name="work", max_tries=1)
    async def work(n: int) -> int:
        if n < 0:
            raise Fail("negative")
        return n

    return app


async def test_the_chart_counts_the_tasks_that_ended_this_minute(
    make_dash_app: Callable[..., App], queue_name: str
) -> None:
    app = work_app(make_dash_app)
    other = work_app(make_dash_app, queue=f"{queue_name}_other")
    async with app, other, dashboard(app) as client:
        await clear_of_a_minute_boundary()
        for n in (1, 2, 3, -1):
            await app.registry["work"].enqueue(n)
        for n in (4, 5):
            await other.registry["work"].enqueue(n)
        assert await app.drain() == 4
        assert await other.drain() == 2

        page = (await client.get(f"/?chart={queue_name}")).text
        bars = minutes(page)
        assert len(bars) == _throughput.MINUTES
        # the last bar is the current minute, and holds all four
        assert bars[-1][0] and not any(current for current, *_ in bars[:-1])
        assert bars[-1][2:] == (3, 1)
        assert all((s, f) == (0, 0) for _, _, s, f in bars[:-1])
        assert bars[-1][1] == time.strftime("%H:%M", time.gmtime())
        # minutes follow each other
        stamps = [int(m[:2]) * 60 + int(m[3:]) for _, m, _, _ in bars]
        assert all((b - a) % (24 * 60) == 1 for a, b in itertools.pairwise(stamps))
        # the numbers are written out: the tooltip, the bar's label and the caption
        assert f"{bars[-1][1]} (now): 3 succeeded, 1 failed</title>" in page
        assert 'data-succeeded="3" data-failed="1" data-scale="5"' in page
        assert '<strong class="t-succeeded">3</strong>' in page
        assert '<strong class="t-failed">1</strong>' in page
        assert re.search(r'<text class="count" [^>]*>4</text>', page)
        # bars are drawn to scale: 3 of 5 and 1 of 5 of the chart's height
        height = _throughput.HEIGHT
        assert re.search(rf'<rect class="ok" [^>]*height="{height * 3 / 5:g}"/>', page)
        assert re.search(rf'<rect class="bad" [^>]*height="{height * 1 / 5:g}"/>', page)
        # the chart is a live part of the page, and lives in the page itself
        assert '<section id="throughput" data-live>' in page
        assert "<svg" in page and "<script" not in page.replace(
            '<script src="/static/dashboard.js" defer></script>', ""
        )

        # the other queue counts only its own, and all queues at least both
        assert minutes((await client.get(f"/?chart={queue_name}_other")).text)[-1][2:] == (2, 0)
        everything = minutes((await client.get("/")).text)
        if len(await app.queues()) <= _throughput.MAX_QUEUES:
            # beyond that many queues on the server (other tests' queues, when tests run in
            # parallel on it) the page counts the first MAX_QUEUES only, and says so
            assert everything[-1][2] >= 5 and everything[-1][3] >= 1
        assert (await client.get("/?chart=bad%20name")).status_code == 400


async def test_a_busy_stream_is_read_only_up_to_its_cap(
    make_dash_app: Callable[..., App], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = work_app(make_dash_app)
    monkeypatch.setattr(_throughput, "SCAN_PER_QUEUE", 3)
    async with app, dashboard(app) as client:
        await clear_of_a_minute_boundary()
        for n in range(4):
            await app.registry["work"].enqueue(n)
        await app.drain()
        page = (await client.get(f"/?chart={queue_name}")).text
        # 4 tasks wrote 12 lifecycle events (enqueued, started, succeeded): the newest 3
        # are read, and the page says the count is cut
        succeeded = sum(s for _, _, s, _ in minutes(page))
        assert 1 <= succeeded <= 3
        assert f"Busy queue {queue_name}: only the latest events were read" in page


async def test_the_chart_is_empty_but_drawn_without_tasks(
    make_dash_app: Callable[..., App], queue_name: str
) -> None:
    app = make_dash_app()
    async with app, dashboard(app) as client:
        page = (await client.get(f"/?chart={queue_name}")).text
        bars = minutes(page)
        assert len(bars) == _throughput.MINUTES and all(b[2:] == (0, 0) for b in bars)
        assert 'data-scale="1"' in page


async def _named_tasks(app: App) -> dict[str, list[str]]:
    """Queued tasks under three names, interleaved: name -> ids in queue order."""
    ids: dict[str, list[str]] = {"email.send": [], "email.send_bulk": [], "charge": []}
    for _ in range(3):
        for name in ids:
            ids[name].append((await app.registry[name].enqueue()).id)
    return ids


def search_app(make_dash_app: Callable[..., App]) -> App:
    app = make_dash_app()
    for name in ("email.send", "email.send_bulk", "charge"):

        async def fn() -> None:
            pass

        app.task(name=name)(fn)
    return app


async def test_search_by_name_filters_the_status_shown(
    make_dash_app: Callable[..., App], queue_name: str
) -> None:
    app = search_app(make_dash_app)
    base = f"/tasks?queue={queue_name}&status=queued"
    async with app, dashboard(app) as client:
        ids = await _named_tasks(app)
        # a scheduled email.send_bulk is in another list: the queued search leaves it out
        later = await app.registry["email.send_bulk"].options(delay=3600).enqueue()
        all_queued = [
            i
            for n in range(3)
            for i in (ids["email.send"][n], ids["email.send_bulk"][n], ids["charge"][n])
        ]
        assert page_ids((await client.get(f"{base}&limit=200")).text) == all_queued

        async def found(q: str, extra: str = "") -> list[str]:
            page = await client.get(f"{base}&q={q}{extra}")
            assert page.status_code == 200
            return page_ids(page.text)

        assert await found("send_bulk") == ids["email.send_bulk"]
        assert await found("charge") == ids["charge"]
        both = [i for i in all_queued if i in ids["email.send"] + ids["email.send_bulk"]]
        assert await found("EMAIL.SEND") == both  # any case, the part of a name
        assert await found("refund") == []
        page = (await client.get(f"{base}&q=refund")).text
        assert "No queued task named like “refund”" in html.unescape(page)
        assert "whose name contains “refund”" in html.unescape(page)
        assert 'value="refund"' in page  # the box keeps what was typed

        # matches are paged
        first = await client.get(f"{base}&q=email&limit=4")
        assert page_ids(first.text) == both[:4]
        more = re.search(r'<a href="([^"]+)" rel="next">', first.text)
        assert more is not None and "q=email" in more.group(1)
        second = await client.get(html.unescape(more.group(1)))
        assert page_ids(second.text) == both[4:]
        assert 'rel="next"' not in second.text

        # another status is searched in its own list
        scheduled = f"/tasks?queue={queue_name}&status=scheduled"
        assert page_ids((await client.get(f"{scheduled}&q=send_bulk")).text) == [later.id]
        assert page_ids((await client.get(f"{scheduled}&q=charge")).text) == []


async def test_search_by_id_goes_to_the_task(
    make_dash_app: Callable[..., App], queue_name: str
) -> None:
    app = search_app(make_dash_app)
    async with app, dashboard(app) as client:
        h = await app.registry["charge"].enqueue()
        jump = await client.get(f"/tasks?queue={queue_name}&status=running&q={h.id}")
        assert jump.status_code == 303 and jump.headers["location"] == f"/tasks/{h.id}"
        # an id that names no task is a name to look for, and finds nothing
        none = await client.get(f"/tasks?queue={queue_name}&status=queued&q={queue_name}:nope")
        assert none.status_code == 200 and page_ids(none.text) == []


async def test_a_name_search_reads_a_bounded_number_of_tasks(
    make_dash_app: Callable[..., App], queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = search_app(make_dash_app)
    monkeypatch.setattr(_views, "NAME_SCAN", 4)
    async with app, dashboard(app) as client:
        ids = await _named_tasks(app)  # queued in turn: send, send_bulk, charge, send, ...
        page = (await client.get(f"/tasks?queue={queue_name}&status=queued&q=charge")).text
        # of the first four queued, one is a charge
        assert page_ids(page) == ids["charge"][:1]
        assert "among the first 4 of 9 queued tasks (the search reads at most 4)" in page
        # unbounded when the list is shorter than the cap
        monkeypatch.setattr(_views, "NAME_SCAN", 1000)
        page = (await client.get(f"/tasks?queue={queue_name}&status=queued&q=charge")).text
        assert page_ids(page) == ids["charge"] and "among the first" not in page
