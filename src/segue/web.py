"""Ready-made web routes for one task by its id: `segue.web.router(app, authorize=...)`.

A Starlette router (a FastAPI `APIRouter` when FastAPI is installed, so that
`api.include_router(...)` takes it; a Starlette app mounts it with `Mount`). Under its
`prefix` (default `/tasks`), per task id:

    GET  /{id}                 status and info, JSON
    GET  /{id}/result?timeout= the result, waiting up to `timeout` seconds (at most 60)
    GET  /{id}/stream          the output stream and progress as Server-Sent Events
    POST /{id}/signal          JSON body {"name": "...", "data": ..., "id": "..."} (id optional)
    POST /{id}/pause|resume|cancel   JSON bodies only: {"reason": "..."} or {}

`authorize(request, task_id, action)` is called before every route (GETs included: a task
id is not a secret) and returns True to allow; it may be async. The router refuses to be
built without it unless `allow_unauthenticated=True` is passed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, Router

from segue._errors import (
    ConfigurationError,
    InvalidTransition,
    PayloadError,
    ResultTimeout,
    ResultUnavailable,
    SignalBufferFull,
    StreamTruncated,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
)
from segue._keys import queue_of
from segue._output import StreamRestarted, TaskStream, parse_position
from segue._signals import check_name

if TYPE_CHECKING:
    # typed as FastAPI's router (a Starlette Router), so that FastAPI.include_router takes
    # it under mypy; without FastAPI installed it is a plain Starlette Router
    from fastapi import APIRouter

    from segue._app import App
    from segue._handle import TaskHandle
    from segue._state import TaskInfo

Action = Literal["info", "result", "stream", "signal", "pause", "resume", "cancel"]
Authorize = Callable[[Request, str, Action], bool | Awaitable[bool]]
__all__ = ["Action", "Authorize", "router"]

_MAX_WAIT = 60.0
_PROGRESS_EVERY = 0.5  # seconds between reads of the record's progress during an SSE stream
_KEEPALIVE_EVERY = 15.0  # a comment line keeps proxies from closing a quiet stream
_MAX_SIGNAL_ID = 200


def router(
    app: App,
    *,
    authorize: Authorize | None = None,
    prefix: str = "/tasks",
    allow_unauthenticated: bool = False,
) -> APIRouter:
    """The routes of one task by id, under `prefix`, guarded by `authorize`."""
    if authorize is None and not allow_unauthenticated:
        raise ConfigurationError(
            "segue.web.router needs authorize=<fn(request, task_id, action) -> bool>: "
            "without it anyone who learns a task id reads its result and cancels it. Pass "
            "allow_unauthenticated=True to serve it open on purpose (a trusted network)"
        )
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigurationError(f"prefix {prefix!r} must start with '/' and not end with '/'")
    routes = _Routes(app, authorize)
    table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/{task_id}", routes.info, "GET"),
        ("/{task_id}/result", routes.result, "GET"),
        ("/{task_id}/stream", routes.stream, "GET"),
        ("/{task_id}/signal", routes.signal, "POST"),
        ("/{task_id}/pause", routes.pause, "POST"),
        ("/{task_id}/resume", routes.resume, "POST"),
        ("/{task_id}/cancel", routes.cancel, "POST"),
    ]
    try:
        from fastapi import APIRouter as FastAPIRouter
    except ImportError:
        plain = Router([Route(prefix + path, fn, methods=[method]) for path, fn, method in table])
        return cast("APIRouter", plain)
    api = FastAPIRouter()
    for path, fn, method in table:
        api.add_route(prefix + path, fn, methods=[method], include_in_schema=False)
    return api


class _Denied(Exception):
    pass


class _Routes:
    def __init__(self, app: App, authorize: Authorize | None) -> None:
        self.app = app
        self.authorize = authorize

    async def _handle(self, request: Request, action: Action) -> TaskHandle[Any]:
        task_id = str(request.path_params["task_id"])
        if self.authorize is not None:
            allowed = self.authorize(request, task_id, action)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if allowed is not True:
                raise _Denied
        try:
            queue_of(task_id)
        except ConfigurationError:
            raise TaskNotFound(f"no task {task_id}") from None
        return await self.app.task_handle(task_id)

    async def _guarded(
        self,
        request: Request,
        action: Action,
        respond: Callable[[TaskHandle[Any]], Awaitable[Response]],
    ) -> Response:
        try:
            handle = await self._handle(request, action)
            return await respond(handle)
        except _Denied:
            return JSONResponse({"error": "forbidden"}, status_code=403)
        except (TaskNotFound, ValueError):
            return JSONResponse({"error": "no such task"}, status_code=404)
        except InvalidTransition as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except SignalBufferFull as exc:
            # the task has not taken its earlier signals yet: the sender may try again later
            return JSONResponse({"error": str(exc)}, status_code=429)

    async def info(self, request: Request) -> Response:
        async def respond(handle: TaskHandle[Any]) -> Response:
            return JSONResponse(_info_body(await handle.info()))

        return await self._guarded(request, "info", respond)

    async def result(self, request: Request) -> Response:
        try:
            timeout = min(max(float(request.query_params.get("timeout", "0")), 0.0), _MAX_WAIT)
        except ValueError:
            return JSONResponse({"error": "timeout must be a number of seconds"}, 400)

        async def respond(handle: TaskHandle[Any]) -> Response:
            try:
                value = await handle.result(timeout=timeout)
            except ResultTimeout:
                status = await handle.status()
                return JSONResponse({"id": handle.id, "status": status.value}, status_code=202)
            except TaskFailed as exc:
                error = {"type": exc.exc_type, "message": exc.message, "reason": exc.reason}
                return JSONResponse({"id": handle.id, "status": "failed", "error": error})
            except TaskCancelled:
                return JSONResponse({"id": handle.id, "status": "cancelled"})
            except ResultUnavailable as exc:
                return JSONResponse({"id": handle.id, "error": str(exc)}, status_code=410)
            return JSONResponse({"id": handle.id, "status": "succeeded", "result": value})

        return await self._guarded(request, "result", respond)

    async def stream(self, request: Request) -> Response:
        after = request.headers.get("last-event-id") or request.query_params.get("after")
        if after is not None:
            try:
                parse_position(after)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        async def respond(handle: TaskHandle[Any]) -> Response:
            stream = handle.stream(after=after)
            try:
                await handle.status()
            except TaskNotFound:
                # a task never seen is a 404, not a stream; one whose record went at its
                # end (ttl=0) still has its stream for a while
                if not await stream.exists():
                    raise
            return StreamingResponse(
                _events(handle, stream),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        return await self._guarded(request, "stream", respond)

    async def _json_body(self, request: Request) -> dict[str, Any] | Response:
        """The POST's JSON object, or the response that refuses it."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # a cross-site HTML form can post only form encodings and text/plain
            return JSONResponse(
                {"error": "send a JSON body (Content-Type: application/json)"}, status_code=415
            )
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        return body

    async def _command(self, request: Request, action: Action) -> Response:
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            return JSONResponse({"error": "reason must be a string"}, status_code=400)

        async def respond(handle: TaskHandle[Any]) -> Response:
            command = getattr(handle, action)
            status = await command(reason)
            return JSONResponse({"id": handle.id, "status": status.value})

        return await self._guarded(request, action, respond)

    async def signal(self, request: Request) -> Response:
        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        data, signal_id = body.get("data"), body.get("id")
        try:
            name = check_name(body.get("name"), str(request.path_params["task_id"]))
        except ValueError as exc:
            # checked here: the guard maps a ValueError (a malformed task id) to 404
            return JSONResponse({"error": str(exc)}, status_code=400)
        if signal_id is not None and (
            not isinstance(signal_id, str) or not 0 < len(signal_id) <= _MAX_SIGNAL_ID
        ):
            return JSONResponse(
                {"error": f"id must be a string of 1 to {_MAX_SIGNAL_ID} characters"},
                status_code=400,
            )

        async def respond(handle: TaskHandle[Any]) -> Response:
            try:
                status = await handle.signal(name, data, id=signal_id)
            except PayloadError as exc:  # over max_payload_bytes
                return JSONResponse({"error": str(exc)}, status_code=413)
            return JSONResponse({"id": handle.id, "status": status.value})

        return await self._guarded(request, "signal", respond)

    async def pause(self, request: Request) -> Response:
        return await self._command(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._command(request, "resume")

    async def cancel(self, request: Request) -> Response:
        return await self._command(request, "cancel")


def _info_body(info: TaskInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "tries": info.tries,
        "enqueued_at": info.enqueued_at.isoformat() if info.enqueued_at else None,
        "started_at": info.started_at.isoformat() if info.started_at else None,
        "ended_at": info.ended_at.isoformat() if info.ended_at else None,
        "progress": _progress(info),
    }
    if info.error is not None:
        body["error"] = {
            "type": info.error.type,
            "message": info.error.message,
            "reason": info.error.reason,
        }
    return body


def _progress(info: TaskInfo) -> dict[str, Any] | None:
    if info.progress is None:
        return None
    done, total = info.progress
    return {"done": done, "total": total, "message": info.progress_message}


def _sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _events(handle: TaskHandle[Any], stream: TaskStream) -> AsyncIterator[str]:
    """Chunks as `chunk` events whose id is their position (a reconnecting EventSource sends
    the last as Last-Event-ID, and resumes after it), `restart` where a new run begins,
    `progress` when the record's progress moves, `end` with the final status, or
    `truncated` when the position asked for was trimmed (not `error`: EventSource fires
    its own `error` on a dropped connection)."""
    loop = asyncio.get_running_loop()
    last_progress: Any = None
    next_progress = 0.0
    quiet_since = loop.time()
    # the headers go out now (the browser's onopen fires); a dropped connection is retried
    # after 1 s, with the last chunk's id as Last-Event-ID
    yield "retry: 1000\n\n"
    while True:
        now = loop.time()
        if now >= next_progress:
            next_progress = now + _PROGRESS_EVERY
            try:
                progress = _progress(await handle.info())
            except TaskNotFound:
                progress = None
            if progress is not None and progress != last_progress:
                last_progress = progress
                yield _sse("progress", progress)
        try:
            items = await stream.read(int(_PROGRESS_EVERY * 1000))
        except StreamTruncated as exc:
            yield _sse("truncated", {"error": str(exc)})
            return
        except TaskNotFound:
            yield _sse("end", {"status": None})
            return
        if items:
            quiet_since = loop.time()
        for item, position in items:
            if isinstance(item, StreamRestarted):
                yield _sse("restart", {"tries": item.tries, "resumed": item.resumed}, position)
            else:
                yield _sse("chunk", item, position)
        if stream.ended:
            status: str | None
            try:
                status = (await handle.status()).value
            except TaskNotFound:
                status = None  # ttl=0: the record went at the end
            yield _sse("end", {"status": status})
            return
        if loop.time() - quiet_since > _KEEPALIVE_EVERY:
            quiet_since = loop.time()
            yield ": keep-alive\n\n"
