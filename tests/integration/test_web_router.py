"""segue.web.router mounted in FastAPI and in Starlette, on a single server and the cluster:
the authorize hook guards every route, POSTs take JSON only, SSE resumes after
Last-Event-ID, the result route waits up to its timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import segue.web
from segue import App, ConfigurationError, Context
from tests.integration.conftest import serving


def sse_events(text: str) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of each event of an SSE body (comments skipped)."""
    found = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            found.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return found


@asynccontextmanager
async def client_of(asgi: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def test_the_router_refuses_to_build_without_authorize(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="authorize"):
        segue.web.router(app)
    assert segue.web.router(app, allow_unauthenticated=True).routes


async def test_fastapi_routes_guarded_json_only_and_sse_resumes(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    denied: set[str] = set()
    asked: list[str] = []

    async def authorize(request: Request, task_id: str, action: str) -> bool:
        asked.append(action)
        return task_id not in denied and request.headers.get("x-user") == "ada"

    @app.task(name="talk")
    async def talk(ctx: Context, n: int) -> str:
        for i in range(n):
            await ctx.stream(f"token-{i}")
        await ctx.progress(n, n, "done")
        return "said"

    @app.task(name="idle")
    async def idle(ctx: Context) -> None:
        await asyncio.sleep(30)

    api = FastAPI()
    api.include_router(segue.web.router(app, authorize=authorize))
    headers = {"x-user": "ada"}
    async with app, client_of(api) as web:
        h = await talk.enqueue(20)
        other = await idle.enqueue()
        denied.add(other.id)
        # the result route waits up to its timeout, then says where the task stands
        r = await web.get(f"/tasks/{h.id}/result?timeout=0.1", headers=headers)
        assert r.status_code == 202 and r.json()["status"] == "queued"
        async with serving(app, concurrency=4):
            r = await web.get(f"/tasks/{h.id}/result?timeout=10", headers=headers)
            assert r.json() == {"id": h.id, "status": "succeeded", "result": "said"}
            r = await web.get(f"/tasks/{h.id}", headers=headers)
            assert r.json()["status"] == "succeeded"
            assert r.json()["progress"] == {"done": 20, "total": 20, "message": "done"}

            r = await web.get(f"/tasks/{h.id}/stream", headers=headers)
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.text)
            chunks = [(i, d) for i, e, d in events if e == "chunk"]
            assert [d for _, d in chunks] == [f"token-{i}" for i in range(20)]
            assert events[-1][1:] == ("end", {"status": "succeeded"})
            # a reconnect with Last-Event-ID repeats nothing and misses nothing
            again = sse_events(
                (
                    await web.get(
                        f"/tasks/{h.id}/stream",
                        headers={**headers, "Last-Event-ID": str(chunks[9][0])},
                    )
                ).text
            )
            assert [d for _, e, d in again if e == "chunk"] == [f"token-{i}" for i in range(10, 20)]
            r = await web.get(f"/tasks/{h.id}/stream", headers={**headers, "Last-Event-ID": "x"})
            assert r.status_code == 400

            # the hook guards every route, GETs included
            for path in ("", "/result", "/stream"):
                r = await web.get(f"/tasks/{other.id}{path}", headers=headers)
                assert r.status_code == 403, path
                r = await web.get(f"/tasks/{h.id}{path}")  # no user
                assert r.status_code == 403, path
            r = await web.post(f"/tasks/{other.id}/cancel", json={}, headers=headers)
            assert r.status_code == 403
            assert {"info", "result", "stream", "cancel"} <= set(asked)

            # POSTs take JSON only: a cross-site form cannot send one
            denied.clear()
            r = await web.post(f"/tasks/{other.id}/cancel", data={"a": "b"}, headers=headers)
            assert r.status_code == 415
            r = await web.post(
                f"/tasks/{other.id}/cancel",
                content=b"{}",
                headers={**headers, "content-type": "text/plain"},
            )
            assert r.status_code == 415
            r = await web.post(f"/tasks/{other.id}/pause", json={"reason": "ops"}, headers=headers)
            assert r.status_code == 200
            r = await web.post(f"/tasks/{other.id}/cancel", json={"reason": "x"}, headers=headers)
            assert r.json()["id"] == other.id  # a running task stops at its next await
            assert await other.wait_for(timeout=10) == "cancelled"
            r = await web.post(f"/tasks/{other.id}/resume", json={}, headers=headers)
            assert r.status_code == 409  # a cancelled task does not resume
            r = await web.get("/tasks/nope/result", headers=headers)
            assert r.status_code == 404


async def test_a_starlette_mount_serves_the_same_routes(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.task(name="quiet")
    async def quiet() -> int:
        return 7

    @app.task(name="brief", ttl=0)
    async def brief(ctx: Context) -> None:
        await ctx.stream("only chunk")

    site = Starlette(
        routes=[Mount("/api", routes=segue.web.router(app, allow_unauthenticated=True).routes)]
    )
    async with app, client_of(site) as web:
        h = await quiet.enqueue()
        await app.drain()
        r = await web.get(f"/api/tasks/{h.id}/result")
        assert r.json()["result"] == 7
        events = sse_events((await web.get(f"/api/tasks/{h.id}/stream")).text)
        assert events == [(None, "end", {"status": "succeeded"})]
        # a ttl=0 task: no record after its end, its stream lingers
        b = await brief.enqueue()
        await app.drain()
        events = sse_events((await web.get(f"/api/tasks/{b.id}/stream")).text)
        assert [(e, d) for _, e, d in events] == [
            ("chunk", "only chunk"),
            ("end", {"status": None}),
        ]
        r = await web.get(f"/api/tasks/{h.queue}:01ABCDEFGHJKMNPQRSTVWXYZ00/stream")
        assert r.status_code == 404


async def test_the_signal_route_delivers_once_and_answers_in_json(
    make_app: Callable[..., App],
) -> None:
    app = make_app(max_pending_signals=1, max_payload_bytes=1000)

    async def authorize(request: Request, task_id: str, action: str) -> bool:
        return action == "signal" and request.headers.get("x-user") == "ada"

    @app.task(name="approve")
    async def approve(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    api = FastAPI()
    api.include_router(segue.web.router(app, authorize=authorize))
    headers = {"x-user": "ada"}
    async with app, client_of(api) as web:
        h = await approve.enqueue()
        url = f"/tasks/{h.id}/signal"
        r = await web.post(url, data={"name": "go"}, headers=headers)
        assert r.status_code == 415  # a cross-site form cannot signal
        r = await web.post(url, json={"name": "go"})
        assert r.status_code == 403
        for bad in ({}, {"name": ""}, {"name": "a|b"}, {"name": "go", "id": 7}, ["go"]):
            r = await web.post(url, json=bad, headers=headers)
            assert r.status_code == 400, bad
            assert "error" in r.json()
        r = await web.post(url, json={"name": "go", "data": "x" * 2000}, headers=headers)
        assert r.status_code == 413
        body = {"name": "go", "data": {"ok": True}, "id": "approval-1"}
        r = await web.post(url, json=body, headers=headers)
        assert r.status_code == 200 and r.json() == {"id": h.id, "status": "queued"}
        # a resend after a lost reply (same id) is accepted and delivers nothing twice
        r = await web.post(url, json=body, headers=headers)
        assert r.status_code == 200
        r = await web.post(url, json={"name": "go", "id": "approval-2"}, headers=headers)
        assert r.status_code == 429  # max_pending_signals=1: the first is not taken yet
        await app.drain()
        assert await h.result(timeout=5) == {"ok": True}
        r = await web.post(url, json={"name": "go", "id": "late"}, headers=headers)
        assert r.status_code == 409 and "error" in r.json()  # the task has ended
        r = await web.post(url, json=body, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        r = await web.post(
            f"/tasks/{h.queue}:01ABCDEFGHJKMNPQRSTVWXYZ00/signal", json=body, headers=headers
        )
        assert r.status_code == 404
