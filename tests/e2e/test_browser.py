"""The dashboard in a real headless browser (Debian's chromium through chromedriver):
sign in, watch a running task's progress move, press Pause and see it PAUSED, press Resume
and see it finish, all through the page's own live updates; then see it counted in the
overview's throughput chart. Screenshots of the task page and of the overview are kept (in
$SEGUE_ARTIFACTS when set, else in the test's tmp_path)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn

from segue import App, Context, TaskStatus
from segue.dashboard import create_app
from tests.e2e.conftest import PASSWORD, USER
from tests.integration.conftest import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/test installs them as root)",
)


@contextlib.contextmanager
def listening(app: App) -> Iterator[str]:
    """The dashboard of `app` served by uvicorn in a thread, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(app, auth=(USER, PASSWORD), refresh_seconds=0.3),
        log_level="warning",
        ws="none",
        lifespan="on",
    )
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


def browse(base: str, task_id: str, finish: threading.Event, shot: Path, overview: Path) -> None:
    """The operator's side, in the browser (blocking: run in a thread)."""
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        # every condition is polled until its deadline; an element that a live update
        # swapped out between finding and using it is simply looked up again
        wait = WebDriverWait(
            driver, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
        )

        def status() -> str:
            return str(driver.find_element(By.CSS_SELECTOR, "#task-status .status").text)

        def progress() -> float:
            bar = driver.find_element(By.CSS_SELECTOR, "#task-progress progress")
            return float(bar.get_attribute("value") or 0)

        def now(read: Callable[[], T]) -> T:
            """A value read from the page as it stands."""
            return wait.until(lambda _: (read(),))[0]

        def press(css: str) -> None:
            def click(d: webdriver.Chrome) -> bool:
                d.find_element(By.CSS_SELECTOR, css).click()
                return True

            wait.until(click)

        def shows(*wanted: str) -> None:
            wait.until(lambda _: status() in wanted)

        # the task page asks for a sign-in first, then comes back
        driver.get(f"{base}/tasks/{task_id}")
        wait.until(lambda d: d.find_elements(By.NAME, "password"))
        driver.find_element(By.NAME, "user").send_keys(USER)
        driver.find_element(By.NAME, "password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        shows("running")

        # progress moves on its own (the page refreshes its live parts)
        first = now(progress)
        wait.until(lambda _: progress() > first)

        press("button.b-pause")
        shows("paused")
        held = now(progress)
        assert driver.find_elements(By.CSS_SELECTOR, "button.b-resume")
        driver.save_screenshot(str(shot))

        press("button.b-resume")
        shows("queued", "running")
        finish.set()
        shows("succeeded")
        assert now(lambda: driver.find_element(By.CSS_SELECTOR, "pre.value").text) == "10000"
        assert now(progress) >= held

        # the overview's chart counts it in the current minute, drawn by the browser
        queue = task_id.partition(":")[0]
        driver.get(f"{base}/?chart={queue}")
        bar = "#throughput g.minute.current"
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, bar).get_attribute("data-succeeded") == "1"
        )
        drawn = driver.find_element(By.CSS_SELECTOR, f"{bar} rect.ok")
        assert drawn.size["height"] > 0 and drawn.size["width"] > 0
        driver.save_screenshot(str(overview))
    finally:
        driver.quit()


def _artifact(name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SEGUE_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


async def test_pause_and_resume_a_running_task_from_the_browser(
    make_dash_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_dash_app()
    finish = threading.Event()

    @app.task(name="crawl")
    async def crawl(ctx: Context, pages: int) -> int:
        page = await ctx.state.get("page", 0)
        while page < pages:
            # one page at a time until the test has seen what it came for, then the rest
            page = pages if finish.is_set() else page + 1
            await ctx.state.set(page=page)
            await ctx.progress(page, pages)  # also the checkpoint where a pause stops it
            if not finish.is_set():
                await asyncio.sleep(0.05)  # fetching a page
        return pages

    shot = _artifact("dashboard-task-paused.png", tmp_path)
    overview = _artifact("dashboard-overview-chart.png", tmp_path)
    # the dashboard has an App of its own: it runs in uvicorn's thread and event loop
    viewer = make_dash_app()
    async with app, serving(app):
        h = await crawl.enqueue(10_000)
        await h.wait_for(TaskStatus.RUNNING, timeout=10)
        with listening(viewer) as base:
            await asyncio.to_thread(browse, base, h.id, finish, shot, overview)
        assert await h.result(timeout=10) == 10_000
        history = [step.status for step in (await h.info()).history]
        assert TaskStatus.PAUSED in history
    assert shot.stat().st_size > 0
    assert overview.stat().st_size > 0
