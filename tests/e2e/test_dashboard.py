"""The dashboard over HTTP (httpx's ASGI transport) against a real server: security
(authentication, CSRF, limits), the buttons acting on real tasks, paged lists, the pages'
content, and the Prometheus gauges."""

from __future__ import annotations

import asyncio
import hmac
import html
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from segue import App, Context, Fail, Pause, TaskStatus
from segue._options import Priority
from segue.dashboard import create_app
from tests._support import free_port
from tests.e2e.conftest import PASSWORD, USER, act, csrf, dashboard, login, page_ids
from tests.integration.conftest import eventually, serving

HTML = {"accept": "text/html"}

# --- authentication --------------------------------------------------------------------


async def test_every_page_needs_authentication(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    async with app, dashboard(app, sign_in=False) as client:
        # a browser is sent to the login form, anything else is told to authenticate
        page = await client.get("/tasks?status=queued", headers=HTML)
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Dqueued"
        for path in ("/", "/tasks", f"/tasks/{app.settings.queue}:x", "/dead", "/workflows/q:wf"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Basic ")
        # mutating routes need authentication before anything else
        await client.get("/login")
        refused = await client.post(
            "/actions/queue", data={"csrf": csrf(client), "queue": "q", "action": "pause"}
        )
        assert refused.status_code == 401

        wrong = await login(client, USER, "wrong password")
        assert wrong.status_code == 401
        assert "Wrong user or password" in wrong.text
        assert "segue_session" not in client.cookies
        assert (await login(client, "someone", PASSWORD)).status_code == 401
        assert (await client.get("/")).status_code == 401

        # HTTP Basic, for scripts; a wrong password is refused the same way
        assert (await client.get("/", auth=(USER, "nope"))).status_code == 401
        assert (await client.get("/", auth=(USER, PASSWORD))).status_code == 200

        signed_in = await login(client)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert (await client.get("/")).status_code == 200

        # a session cookie signed by another dashboard (another secret) is worth nothing
        client.cookies.set("segue_session", client.cookies["segue_session"][:-4] + "0000")
        assert (await client.get("/")).status_code == 401


async def test_health_and_metrics_are_open_and_the_rest_is_not(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    async with app, dashboard(app, sign_in=False) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "set-cookie" not in metrics.headers
        assert (await client.get("/static/dashboard.js")).status_code == 200
        assert (await client.get("/login")).status_code == 200
        assert _value(metrics.text, "segue_up") == 1
    down = App("dash", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with dashboard(down, sign_in=False) as client:
        assert (await client.get("/health")).status_code == 503
        scraped = (await client.get("/metrics")).text
        # an unreachable server is a value, and the only family then
        assert _value(scraped, "segue_up") == 0
        assert [f.name for f in text_string_to_metric_families(scraped)] == ["segue_up"]


async def test_credentials_are_compared_in_constant_time(
    make_dash_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = make_dash_app()
    async with app, dashboard(app, sign_in=False) as client:
        await login(client, "intruder", "guess")
    # both the user and the password went through compare_digest, even with a wrong user
    assert (b"intruder", USER.encode()) in compared
    assert (b"guess", PASSWORD.encode()) in compared


async def test_repeated_failed_sign_ins_are_throttled(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    asgi = create_app(app, close_app=False, auth=(USER, PASSWORD))

    def client_from(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=asgi, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async with app, client_from("10.0.0.1") as guesser, client_from("10.0.0.2") as operator:
        for _ in range(5):
            assert (await login(guesser, USER, "guess")).status_code == 401
        throttled = await login(guesser, USER, PASSWORD)  # even the right password waits
        assert throttled.status_code == 429
        assert 0 < int(throttled.headers["retry-after"]) <= 60
        assert "Too many failed sign-ins" in throttled.text
        assert "segue_session" not in throttled.cookies
        # the throttle holds one address back, not everybody
        assert (await login(operator)).status_code == 303


async def test_no_auth_must_be_asked_for(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    with pytest.raises(TypeError):
        create_app(app)  # type: ignore[call-arg]
    async with app, dashboard(app, auth=None) as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/login")).status_code == 303
        # CSRF still holds without authentication: a loopback dashboard is reachable from
        # any page the operator's browser opens
        refused = await client.post(
            "/actions/queue", data={"queue": app.settings.queue, "action": "pause"}
        )
        assert refused.status_code == 403
        assert not await app.queue().is_paused()


# --- CSRF, limits, redirects -------------------------------------------------------------


async def test_mutations_need_the_csrf_token(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    queue = app.settings.queue
    async with app, dashboard(app) as client:
        page = await client.get("/")
        token = csrf(client)
        assert f'<meta name="csrf-token" content="{token}">' in page.text
        form = {"queue": queue, "action": "pause", "next": "/"}
        assert (await client.post("/actions/queue", data=form)).status_code == 403
        wrong = {**form, "csrf": token[:-1] + ("0" if token[-1] != "0" else "1")}
        assert (await client.post("/actions/queue", data=wrong)).status_code == 403
        # a token from another dashboard (another secret) is refused, even echoed in its cookie
        async with dashboard(app) as other:
            await other.get("/")
            foreign = csrf(other)
        client.cookies.set("segue_csrf", foreign)
        forged = await client.post("/actions/queue", data={**form, "csrf": foreign})
        assert forged.status_code == 403
        client.cookies.set("segue_csrf", token)
        cross = await client.post(
            "/actions/queue", data={**form, "csrf": token}, headers={"origin": "http://evil.test"}
        )
        assert cross.status_code == 403
        assert not await app.queue().is_paused()
        # nor does an empty token without a cookie, on any path
        async with dashboard(app, auth=None) as bare:
            for path in ("/actions/queue", "/metrics", "/health"):
                empty = await bare.post(path, data={**form, "csrf": ""})
                assert empty.status_code == 403, path
        # GET never acts
        assert (await client.get("/actions/queue?queue=x&action=pause")).status_code == 405

        ok = await client.post("/actions/queue", data={**form, "csrf": token})
        assert ok.status_code == 303
        assert await app.queue().is_paused()
        # the token may come as a header too (a script's fetch)
        header = await client.post(
            "/actions/queue",
            data={"queue": queue, "action": "resume"},
            headers={"x-csrf-token": token},
        )
        assert header.status_code == 303
        assert not await app.queue().is_paused()


async def test_request_bodies_are_limited(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    async with app, dashboard(app, max_body_bytes=1024) as client:
        big = {"csrf": csrf(client), "queue": "q", "action": "pause", "pad": "x" * 4096}
        assert (await client.post("/actions/queue", data=big)).status_code == 413

        async def chunks() -> Any:
            for _ in range(8):  # no Content-Length: the limit counts what arrives
                yield b"x" * 512

        streamed = await client.post(
            "/actions/queue",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert streamed.status_code == 413


async def test_redirects_stay_on_the_dashboard(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    async with app, dashboard(app, sign_in=False) as client:
        await client.get("/login")
        for evil in ("//evil.test/x", "https://evil.test/", "/\\evil.test"):
            response = await client.post(
                "/login",
                data={"user": USER, "password": PASSWORD, "next": evil, "csrf": csrf(client)},
            )
            assert response.headers["location"] == "/", evil


async def test_pages_send_security_headers(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    async with app, dashboard(app) as client:
        page = await client.get("/")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"


# --- buttons on real tasks ---------------------------------------------------------------


async def test_buttons_pause_resume_cancel_and_retry_a_running_task(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="crunch")
    async def crunch(ctx: Context, steps: int) -> int:
        for i in range(await ctx.state.get("done", 0), steps):
            await ctx.state.set(done=i + 1)
            await ctx.progress(i + 1, steps)
            await asyncio.sleep(0.02)  # the task's work
        return steps

    async with app, serving(app), dashboard(app) as client:
        h = await crunch.enqueue(5_000)
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        back = await act(client, "task", id=h.id, action="pause", next=f"/tasks/{h.id}")
        assert back.headers["location"] == f"/tasks/{h.id}"
        assert await h.wait_for(TaskStatus.PAUSED, timeout=10) is TaskStatus.PAUSED
        page = await client.get(f"/tasks/{h.id}")
        # the one-shot message of the action
        assert f"pause requested: task {h.id} stops at its next checkpoint" in page.text
        assert '<span class="status s-paused">paused</span>' in page.text
        assert 'value="resume"' in page.text and 'value="pause"' not in page.text
        assert "pause from the dashboard" in page.text  # the history's reason
        assert "pause requested" not in (await client.get(f"/tasks/{h.id}")).text
        done_at_pause = (await h.state())["done"]

        await act(client, "task", id=h.id, action="resume")
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        # it goes on from its state
        await eventually(lambda: _state_past(h, done_at_pause))

        await act(client, "task", id=h.id, action="cancel")
        assert await h.wait_for(TaskStatus.CANCELLED, timeout=10) is TaskStatus.CANCELLED
        await act(client, "task", id=h.id, action="retry")
        assert (await h.info()).tries <= 1
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        await act(client, "task", id=h.id, action="cancel")
        await h.wait_for(TaskStatus.CANCELLED, timeout=10)

        # a button that no longer applies says why, and changes nothing
        refused = await act(client, "task", id=h.id, action="resume")
        assert refused.headers["location"] == "/"
        assert "cannot resume task" in (await client.get("/")).text
        assert await h.status() is TaskStatus.CANCELLED


async def _state_past(h: Any, done: int) -> bool:
    state: dict[str, Any] = await h.state()
    return int(state.get("done", 0)) > done


async def test_queue_buttons_pause_and_resume_a_queue(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="tick")
    async def tick() -> str:
        return "tock"

    async with app, dashboard(app) as client:
        h = await tick.enqueue()
        await act(client, "queue", queue=app.settings.queue, action="pause")
        overview = (await client.get("/")).text
        assert "Resume queue" in overview and f"queue {app.settings.queue} paused" in overview
        assert await app.drain() == 0  # a paused queue starts nothing
        assert await h.status() is TaskStatus.QUEUED
        await act(client, "queue", queue=app.settings.queue, action="resume")
        assert await app.drain() == 1
        assert await h.result() == "tock"


async def test_dead_letters_page_retries_a_task(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()
    attempts: list[int] = []

    @app.task(name="charge", max_tries=1)
    async def charge(amount: int) -> int:
        attempts.append(amount)
        if len(attempts) == 1:
            raise ConnectionError("card network down")
        return amount

    async with app, dashboard(app) as client:
        h = await charge.enqueue(12)
        await app.drain()
        page = await client.get(f"/dead?queue={app.settings.queue}")
        assert page_ids(page.text) == [h.id]
        assert "ConnectionError: card network down" in page.text
        assert 'value="retry"' in page.text
        await act(client, "task", id=h.id, action="retry", next=f"/dead?queue={app.settings.queue}")
        assert page_ids((await client.get(f"/dead?queue={app.settings.queue}")).text) == []
        await app.drain()
        assert await h.result() == 12


# --- what the pages show -----------------------------------------------------------------


async def test_task_page_shows_arguments_state_progress_history_and_events(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="import_rows")
    async def import_rows(ctx: Context, source: str, *, batch: int) -> None:
        await ctx.state.set(cursor=42, seen=["a.csv", "b.csv"])
        await ctx.progress(3, 12)
        await ctx.emit("rows.checkpointed", {"cursor": 42})
        raise Pause(delay=3600)  # back later: SUSPENDED with its state kept

    @app.task(name="parse", max_tries=1)
    async def parse(text: str) -> int:
        raise ValueError(f"not a number: {text}")

    @app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app, dashboard(app) as client:
        held = await import_rows.enqueue("<script>alert(1)</script>", batch=500)
        failed = await parse.enqueue("forty-two")
        ok = await add.enqueue(2, 40)
        await app.drain()

        page = (await client.get(f"/tasks/{held.id}")).text
        assert "import_rows" in page and '<span class="status s-suspended">' in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # escaped, never markup
        assert "<script>alert" not in page
        assert '"batch": 500' in html.unescape(page)
        assert '<progress value="3.0" max="12.0">' in page and "3 / 12 (25%)" in page
        assert "<th>cursor</th>" in page and "42" in page and "b.csv" in page
        for kind in ("task.started", "task.progress", "rows.checkpointed", "task.suspended"):
            assert f"<td>{kind}</td>" in page
        assert page.index("task.started") < page.index("rows.checkpointed")

        page = (await client.get(f"/tasks/{failed.id}")).text
        assert "<strong>ValueError</strong>: not a number: forty-two" in page
        assert "Traceback (most recent call last)" in page
        assert 'value="retry"' in page

        page = (await client.get(f"/tasks/{ok.id}")).text
        assert '<pre class="value">42</pre>' in page
        assert "None kept" in page  # its state went with its end

        missing = await client.get(f"/tasks/{app.settings.queue}:nope", headers=HTML)
        assert missing.status_code == 404
        assert (await client.get("/tasks/not-an-id", headers=HTML)).status_code == 404

        found = await client.get(f"/find?id={ok.id}")
        assert found.headers["location"] == f"/tasks/{ok.id}"


async def test_a_large_state_is_shown_in_part(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="wide")
    async def wide(ctx: Context) -> None:
        await ctx.state.set(**{f"k{i}": i for i in range(150)})
        raise Pause(delay=3600)

    async with app, dashboard(app) as client:
        h = await wide.enqueue()
        await app.drain()
        assert len(await h.state()) == 150
        assert len(await h.state(limit=100)) == 100
        page = (await client.get(f"/tasks/{h.id}")).text
        assert "Only 100 of its values are shown" in page
        assert page.count("<tr><th>k") == 100


async def test_lists_are_paged_in_the_order_tasks_run(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    async with app, dashboard(app) as client:
        ids: dict[Priority, list[str]] = {"high": [], "normal": [], "low": []}
        levels: tuple[Priority, ...] = ("high", "normal", "low")
        for n in range(11):
            priority = levels[n % 3]
            ids[priority].append((await job.options(priority=priority).enqueue(n)).id)
        order = ids["high"] + ids["normal"] + ids["low"]
        # the broker reads only the page asked for, across the three priority lists
        for offset in range(12):
            for limit in (1, 2, 3, 5):
                infos = await app.tasks("queued", offset=offset, limit=limit)
                assert [i.id for i in infos] == order[offset : offset + limit], (offset, limit)

        seen: list[str] = []
        url = f"/tasks?queue={app.settings.queue}&status=queued&limit=4"
        page = await client.get(url)
        while True:
            seen += page_ids(page.text)
            more = re.search(r'<a href="([^"]+)" rel="next">', page.text)
            if more is None:
                break
            page = await client.get(more.group(1).replace("&amp;", "&"))
        assert seen == order
        assert "9–11 of 11" in page.text
        assert (await client.get(url + "&limit=100000")).status_code == 200  # capped, not refused
        assert (await client.get(url + "&offset=x")).status_code == 400
        assert (await client.get("/tasks?status=bogus")).status_code == 400


async def test_workflow_page_shows_steps_and_pauses_the_workflow(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="fetch")
    async def fetch(url: str) -> str:
        return url.upper()

    @app.task(name="store")
    async def store(text: str) -> int:
        return len(text)

    async with app, dashboard(app) as client:
        wf = await (fetch.call("a.test") | store.call()).enqueue()
        page = (await client.get(f"/workflows/{wf.id}")).text
        steps = re.findall(
            r'<td class="id"><a href="[^"]*">([^<]+)</a></td>\s*<td>(\w+)</td>', page
        )
        assert steps == [(f"{wf.id}.1", "fetch"), (f"{wf.id}.2", "store")]
        assert "s-queued" in page and "s-waiting" in page
        step_page = (await client.get(f"/tasks/{wf.id}.2")).text
        assert f'href="/workflows/{wf.id}"' in step_page

        await act(client, "workflow", id=wf.id, action="pause")
        assert await wf.status() is TaskStatus.PAUSED
        assert 'value="resume"' in (await client.get(f"/workflows/{wf.id}")).text
        await act(client, "workflow", id=wf.id, action="resume")
        await app.drain()
        assert await wf.result() == 6
        assert (await client.get(f"/find?id={wf.id}")).headers["location"] == f"/workflows/{wf.id}"


async def test_workers_panel_uses_app_workers_when_there_is_one(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()
    async with app, dashboard(app) as client, serving(app) as worker:
        await asyncio.wait_for(worker.ready.wait(), 10)
        page = (await client.get("/")).text
        assert worker.id in page
        metrics = (await client.get("/metrics")).text
        assert _value(metrics, "segue_workers") == 1


async def test_the_dashboard_mounts_under_a_prefix(make_dash_app: Callable[..., App]) -> None:
    app = make_dash_app()

    @app.task(name="tick")
    async def tick() -> None:
        pass

    outer = Starlette(routes=[Mount("/ops", create_app(app, auth=(USER, PASSWORD)))])
    transport = httpx.ASGITransport(app=outer)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        h = await tick.enqueue()
        assert (await c.get("/ops/", headers=HTML)).headers["location"] == "/ops/login?next=%2F"
        await c.get("/ops/login")
        signed = await c.post(
            "/ops/login",
            data={"user": USER, "password": PASSWORD, "next": "/", "csrf": c.cookies["segue_csrf"]},
        )
        assert signed.headers["location"] == "/ops/"
        page = (await c.get("/ops/")).text
        assert 'href="/ops/static/dashboard.css"' in page
        assert f'href="/ops/tasks?queue={app.settings.queue}&amp;status=queued"' in page
        assert (await c.get(f"/ops/tasks/{h.id}")).status_code == 200


# --- metrics -----------------------------------------------------------------------------


async def test_metrics_are_queue_gauges_read_from_the_server(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="work", max_tries=1)
    async def work(n: int) -> int:
        if n < 0:
            raise Fail("negative")
        return n

    async with app, dashboard(app, sign_in=False) as client:
        await work.enqueue(-1)
        await work.enqueue(1)
        await app.drain()  # one failed (dead-lettered), one succeeded
        await work.enqueue(2)
        await work.enqueue(3)
        await work.options(delay=3600).enqueue(4)
        held = await work.enqueue(5)
        await held.pause()
        gone = await work.enqueue(6)
        await gone.cancel()
        await app.queue().pause()

        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        values = _samples(response.text, app.settings.queue)
        assert values == {
            ("segue_queue_tasks", "queued"): 2,
            ("segue_queue_tasks", "scheduled"): 1,
            ("segue_queue_tasks", "running"): 0,
            ("segue_queue_tasks", "waiting"): 0,
            ("segue_queue_tasks", "paused"): 1,
            ("segue_queue_tasks", "succeeded"): 1,
            ("segue_queue_tasks", "failed"): 1,
            ("segue_queue_tasks", "cancelled"): 1,
            ("segue_queue_tasks", "expired"): 0,
            ("segue_queue_paused", ""): 1,
            ("segue_queue_dead_letters", ""): 1,
            # a paused queue has nothing ready
            ("segue_queue_ready", ""): 0,
            ("segue_queue_oldest_ready_seconds", ""): 0,
            ("segue_runs_started_total", ""): 2,
            ("segue_runs_retried_total", ""): 0,
            ("segue_tasks_ended_total", "succeeded"): 1,
            ("segue_tasks_ended_total", "failed"): 1,
            ("segue_tasks_ended_total", "cancelled"): 1,
            ("segue_tasks_ended_total", "expired"): 0,
        }
        assert _value(response.text, "segue_up") == 1
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        assert {n: f.type for n, f in families.items()} == {
            "segue_up": "gauge",
            "segue_queue_tasks": "gauge",
            "segue_queue_paused": "gauge",
            "segue_queue_dead_letters": "gauge",
            "segue_queue_ready": "gauge",
            "segue_queue_oldest_ready_seconds": "gauge",
            "segue_runs_started": "counter",
            "segue_runs_retried": "counter",
            "segue_tasks_ended": "counter",
            "segue_key_waiting": "gauge",
            "segue_key_running": "gauge",
            "segue_shard_ready": "gauge",
            "segue_shard_oldest_ready_seconds": "gauge",
            "segue_queues_not_exported": "gauge",
            "segue_workers": "gauge",
        }


def _value(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` with these labels, as prometheus-client's parser reads it."""
    found = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def _samples(text: str, queue: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("queue") == queue:
                found[(sample.name, sample.labels.get("status", ""))] = sample.value
    return found
