"""create_app: the dashboard of one segue App, as a Starlette ASGI application."""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from segue._blobs import human_size
from segue._errors import ConfigurationError, SegueError
from segue.dashboard import _filters, _ops_lists, _ops_views, _views
from segue.dashboard._security import LOOPBACK_HOSTS, Gate, Security

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection

    from segue._app import App
    from segue._client import Client


def create_app(
    app: App,
    *,
    auth: tuple[str, str] | None,
    secret_key: bytes | None = None,
    page_size: int = 50,
    refresh_seconds: float = 2.0,
    max_body_bytes: int = 64 * 1024,
    session_seconds: float = 12 * 3600,
    secure_cookies: bool = False,
    close_app: bool = True,
    allowed_hosts: Collection[str] | None = None,
    trusted_proxies: Collection[str] = (),
) -> Starlette:
    """The web dashboard of `app`.

    `auth=(user, password)` asks for these credentials (login form, or HTTP Basic);
    `auth=None` turns authentication off, and must be said: there is no default. Session
    cookies and CSRF tokens are signed with `secret_key` (at least 32 random bytes; random
    per process unless given: sessions then end when the process restarts); the password
    needs at least 12 characters. `secure_cookies=True` marks cookies Secure, for a dashboard
    served over HTTPS. `allowed_hosts` lists the `Host` names served (any other gets 400);
    `None` serves any with authentication on, and only loopback names with `auth=None`.
    `trusted_proxies` lists the addresses of reverse proxies whose `X-Forwarded-For` names
    the client (for the sign-in limiter); anyone else's header is ignored. `close_app`
    closes the App when the ASGI server shuts the dashboard down. Mount it in another ASGI
    app with Starlette's `Mount`.
    """
    if allowed_hosts is None and auth is None:
        allowed_hosts = LOOPBACK_HOSTS  # no credentials: a rebound name must not get in
    if page_size < 1 or page_size > _views.MAX_LIMIT:
        raise ConfigurationError(f"page_size must be between 1 and {_views.MAX_LIMIT}")
    security = Security(
        auth,
        secret=secret_key or secrets.token_bytes(32),
        session_seconds=session_seconds,
        secure_cookies=secure_cookies,
        allowed_hosts=allowed_hosts,
        trusted_proxies=trusted_proxies,
        generations=_ServerGenerations(app._client),
    )
    templates = Environment(
        loader=PackageLoader("segue.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters.update(
        when=_filters.when,
        pretty=_filters.pretty,
        cell=_filters.cell,
        number=_filters.number,
        progress=_filters.progress_of,
        q=lambda value: _quote(str(value)),
        duration=_ops_lists.duration,
        runtime=_ops_lists.runtime,
        size=human_size,
    )
    templates.globals["actions_for"] = _filters.task_actions
    views = _views.Views(
        app, templates, security, page_size=page_size, refresh_seconds=refresh_seconds
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if close_app:
            await app.close()

    ops = _ops_views.OpsViews(views)
    routes = [
        Route("/", views.overview),
        Route("/tasks", views.tasks),
        Route("/download/{what}/{task_id:path}", views.download),
        Route("/tasks/{task_id:path}", views.task),
        Route("/workflows", ops.workflows),
        Route("/workflows/{workflow_id:path}", views.workflow),
        Route("/schedules", ops.schedules),
        Route("/dead", views.dead),
        Route("/actions/dead", ops.dead_action, methods=["POST"]),
        Route("/actions/schedule", ops.schedule_action, methods=["POST"]),
        Route("/find", views.find),
        Route("/actions/task", views.task_action, methods=["POST"]),
        Route("/actions/queue", views.queue_action, methods=["POST"]),
        Route("/actions/workflow", views.workflow_action, methods=["POST"]),
        Route("/login", views.login_form),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/health", views.health),
        Route("/metrics", views.metrics),
        Mount("/static", StaticFiles(packages=[("segue.dashboard", "static")]), name="static"),
    ]
    handlers: dict[Any, Any] = {HTTPException: views.error, SegueError: views.error}
    return Starlette(
        routes=routes,
        middleware=[Middleware(Gate, security=security, max_body_bytes=max_body_bytes)],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


class _ServerGenerations:
    """The session generation on the App's server, shared by every dashboard process."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def current(self) -> int:
        return await (await self._client.reads()).session_generation()

    async def advance(self) -> int:
        return await (await self._client.broker()).advance_session_generation()


def _quote(value: str) -> str:
    # ids go into paths: keep ':' readable, escape '/' and everything else
    return quote(value, safe=":")
