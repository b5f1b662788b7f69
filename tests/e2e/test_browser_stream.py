"""The SSE route of segue.web.router read by a real headless browser (Debian's chromium):
a page's EventSource shows a task's chunks as they come; the server cuts the first
connection mid-stream, the browser reconnects by itself with Last-Event-ID, and the page
ends with every chunk exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route

import segue.web
from segue import App, Context
from tests.e2e.test_browser import CHROMEDRIVER, CHROMIUM
from tests.integration.conftest import serving

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/test installs them as root)",
)
CHUNKS = 150
CUT_AFTER = 40

PAGE = """<!doctype html>
<meta charset="utf-8"><title>stream</title>
<ul id="out"></ul>
<script>
const id = new URLSearchParams(location.search).get("id");
const out = document.getElementById("out");
let opens = 0;
const es = new EventSource(`/api/tasks/${id}/stream`);
es.onopen = () => { opens += 1; document.body.dataset.opens = opens; };
es.addEventListener("chunk", (m) => {
  const li = document.createElement("li");
  li.textContent = JSON.parse(m.data);
  out.appendChild(li);
});
es.addEventListener("end", (m) => {
  document.body.dataset.done = JSON.parse(m.data).status;
  es.close();
});
</script>
"""


class _Cut(Exception):
    pass


class CutFirstStream:
    """Ends the first SSE response after CUT_AFTER chunk events, as a dropped connection
    would (the browser then reconnects); notes each stream request's Last-Event-ID."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last_ids: list[str | None] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/stream"):
            await self.inner(scope, receive, send)
            return
        headers = dict(scope["headers"])
        last = headers.get(b"last-event-id")
        self.last_ids.append(last.decode() if last else None)
        if last is not None:
            await self.inner(scope, receive, send)
            return
        seen = 0

        async def cutting(message: Any) -> None:
            nonlocal seen
            await send(message)
            if message["type"] == "http.response.body":
                seen += message.get("body", b"").count(b"event: chunk")
                if seen >= CUT_AFTER:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    raise _Cut

        with contextlib.suppress(_Cut):
            await self.inner(scope, receive, cutting)


@contextlib.contextmanager
def listening(asgi: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(asgi, log_level="warning", ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def read_in_browser(url: str) -> tuple[list[str], str, int]:
    """The page's chunks, final status and connection count (blocking: run in a thread)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 30, poll_frequency=0.05).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done")
        )
        body = driver.find_element(By.TAG_NAME, "body")
        chunks = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#out li")]
        return (
            chunks,
            str(body.get_attribute("data-done")),
            int(body.get_attribute("data-opens") or 0),
        )
    finally:
        driver.quit()


async def test_a_browser_shows_the_stream_and_resumes_after_a_cut_without_repeats(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app()

    @app.task(name="talk")
    async def talk(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.stream(f"c{i}")
            await asyncio.sleep(0.01)
        return n

    viewer = make_dash_app()  # the web app's own App: it runs in uvicorn's thread and loop

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with viewer:
            yield

    async def page(_: Any) -> HTMLResponse:
        return HTMLResponse(PAGE)

    routes = segue.web.router(viewer, allow_unauthenticated=True).routes
    site = Starlette(routes=[Route("/", page), Mount("/api", routes=routes)], lifespan=lifespan)
    cutter = CutFirstStream(site)
    async with app, serving(app):
        h = await talk.enqueue(CHUNKS)
        with listening(cutter) as base:
            chunks, done, opens = await asyncio.to_thread(read_in_browser, f"{base}/?id={h.id}")
        assert await h.result(timeout=10) == CHUNKS
    assert done == "succeeded"
    assert chunks == [f"c{i}" for i in range(CHUNKS)]  # each once, in order
    assert opens >= 2  # the cut connection, and the reconnect
    assert cutter.last_ids[0] is None and cutter.last_ids[1] is not None
