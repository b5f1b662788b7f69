"""Dashboard fixtures: an App on this test's queue of the standalone server, and an HTTP
client that talks to the dashboard in-process through httpx's ASGI transport."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from segue import App
from segue.dashboard import create_app
from tests._support import Engine

# async tests run on a fresh event loop, as in the integration tests
from tests.integration.conftest import pytest_pyfunc_call  # noqa: F401

USER = "operator"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def make_dash_app(segue_valkey: Engine, queue_name: str) -> Callable[..., App]:
    """Apps on the standalone server (the dashboard reads one queue's slot at a time, so
    the cluster adds nothing here), on this test's queue by default."""

    def build(**overrides: Any) -> App:
        overrides.setdefault("queue", queue_name)
        overrides.setdefault("poll_seconds", 0.2)
        return App("dash", redis_url=segue_valkey.url, **overrides)

    return build


@contextlib.asynccontextmanager
async def dashboard(
    app: App, *, sign_in: bool = True, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `create_app(app)`, signed in through the login form unless told not to."""
    options.setdefault("auth", (USER, PASSWORD))
    if options["auth"] is None:  # serves loopback names only unless told: this client's too
        options.setdefault("allowed_hosts", ["testserver"])
    asgi = create_app(app, close_app=False, **options)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        if sign_in and options["auth"] is not None:
            await login(client)
        yield client


async def login(
    client: httpx.AsyncClient, user: str = USER, password: str = PASSWORD
) -> httpx.Response:
    await client.get("/login")  # the form sets the CSRF cookie the post must echo
    return await client.post(
        "/login", data={"user": user, "password": password, "next": "/", "csrf": csrf(client)}
    )


def csrf(client: httpx.AsyncClient) -> str:
    token = client.cookies.get("segue_csrf")
    assert token, "no CSRF cookie yet: GET a page first"
    return token


async def act(client: httpx.AsyncClient, kind: str, **fields: str) -> httpx.Response:
    """Press a button: POST the form of /actions/<kind> with the page's CSRF token."""
    if "segue_csrf" not in client.cookies:
        await client.get("/")
    response = await client.post(
        f"/actions/{kind}", data={"csrf": csrf(client), "next": "/", **fields}
    )
    assert response.status_code == 303, response.text
    return response


def page_ids(html: str) -> list[str]:
    """The task ids a list page links to, in order."""
    return re.findall(r'<td class="id"><a href="[^"]*">([^<]+)</a>', html)
