"""The operator's day in a real headless browser (one chromium session for the module):
every page the operator reads (overview with latency and the 24-hour chart, task lists with
due time, error, runtime and filter counts, a task with its progress events grouped,
workflows and a workflow's structure and result, schedules) and every bulk action pressed
with a real click, its confirmation read and accepted (purge a queue, delete a task, delete
and retry dead letters by selection and all at once, pause and resume a schedule); then the
same pages at 420 px, where nothing may overflow. Screenshots go to $SEGUE_ARTIFACTS (the
ones in docs/img/ were taken so) or the test's tmp_path."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segue import App, Context, Fail, TaskStatus
from tests.e2e.conftest import PASSWORD, USER
from tests.e2e.test_browser import CHROMEDRIVER, CHROMIUM, _artifact, listening, pytestmark
from tests.integration.conftest import serving

__all__ = ["pytestmark"]  # skips the module where chromium is missing, as test_browser does


def operate(base: str, ids: dict[str, Any], shots: Callable[[str], Path]) -> dict[str, Any]:
    """The operator's side (blocking: run in a thread). Returns what the pages said."""
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    seen: dict[str, Any] = {}
    try:
        wait = WebDriverWait(
            driver, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
        )

        def css(selector: str) -> Any:
            return wait.until(lambda d: d.find_element(By.CSS_SELECTOR, selector))

        def text(selector: str) -> str:
            # found and read in one go: a live refresh may swap the element in between
            found = wait.until(lambda d: (d.find_element(By.CSS_SELECTOR, selector).text,))
            return str(found[0])

        def press(selector: str) -> None:
            def click(d: Any) -> bool:
                d.find_element(By.CSS_SELECTOR, selector).click()
                return True

            wait.until(click)

        def confirm() -> str:
            """Accept the confirmation the button asked for; its question."""
            alert = wait.until(expected_conditions.alert_is_present())
            question = str(alert.text)
            alert.accept()
            return question

        shown: list[str] = [""]

        def flash() -> str:
            """The message the action's redirect brought (not the one of the page before)."""

            def fresh(d: Any) -> str | bool:
                found = d.find_elements(By.CSS_SELECTOR, ".flash")
                now = str(found[0].text) if found else ""
                return now if now and now != shown[0] else False

            shown[0] = str(wait.until(fresh))
            return shown[0]

        def arrived(part: str) -> None:
            """Wait for the page a click opens (reading before it would read the last one)."""
            wait.until(lambda d: part in d.current_url)
            css("main")

        def fits() -> bool:
            """Nothing makes the page wider than the window (tables scroll in their card)."""
            width = driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            return bool(width[0] <= width[1])

        queue, other = ids["queue"], ids["other"]
        # the server holds other tests' queues too: open the overview's page that starts
        # with this test's (queue names are listed sorted)
        home = f"{base}/?offset={ids['offset']}"
        driver.get(home)
        css("input[name=password]").send_keys(PASSWORD)
        driver.find_element(By.NAME, "user").send_keys(USER)
        press("form.login button")

        # overview: latency columns, the live clock in UTC, 24 hours of history
        seen["ready"] = text(f"table.queues tr:has(a[href*='queue={other}']) td.ready")
        wait.until(lambda _: re.fullmatch(r"live \d\d:\d\d:\d\d UTC", text("#live-stamp")))
        assert fits()
        driver.save_screenshot(str(shots("dashboard-overview.png")))
        press(".chart-range a[href*='range=24h']")
        arrived("range=24h")
        css(".chart-range a.current[href*='range=24h']")
        driver.get(f"{base}/?range=24h&chart={queue}")
        seen["day_bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#throughput g.minute"))
        seen["day_ok"] = css("#throughput svg").get_attribute("data-succeeded")
        driver.save_screenshot(str(shots("dashboard-overview-24h.png")))

        # purge a queue: the button says how many, and so does its question
        driver.get(home)
        press(f"tr:has(a[href*='queue={other}']) button.b-purge")
        seen["purge_question"] = confirm()
        seen["purge_flash"] = flash()

        # lists: failed tasks with their error; ended ones with end time and runtime, newest
        # first; scheduled ones with their due time; a name filter with its count
        driver.get(f"{base}/tasks?queue={queue}&status=succeeded")
        seen["ended"] = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "td.ended")]
        seen["runtime"] = text("table.tasks td.runtime")
        seen["total"] = text(".list-note .total-count")
        assert fits()
        driver.save_screenshot(str(shots("dashboard-tasks.png")))
        search = css("form.search input[name=q]")
        search.send_keys("report")
        search.submit()
        arrived("q=report")
        seen["match"] = text(".list-note")
        driver.get(f"{base}/tasks?queue={queue}&status=scheduled")
        seen["due"] = text("table.tasks td.due")
        driver.get(f"{base}/tasks?queue={queue}&status=failed")
        seen["error"] = text("table.tasks td.err")

        # a task page: its many progress events are one row
        driver.get(f"{base}/tasks/{ids['progress']}")
        seen["grouped"] = text("#task-events tr.grouped")
        driver.save_screenshot(str(shots("dashboard-task-ended.png")))
        # delete an ended task from its page
        press("#task-head button.b-delete")
        seen["delete_question"] = confirm()
        seen["delete_flash"] = flash()
        seen["after_delete_url"] = driver.current_url

        # dead letters: delete the ticked one, then retry all the rest
        driver.get(f"{base}/dead?queue={queue}")
        css("input[name=ids]")
        seen["dead_listed"] = len(driver.find_elements(By.CSS_SELECTOR, "input[name=ids]"))
        seen["ticked"] = css("input[name=ids]").get_attribute("value")
        press("input[name=ids]")
        driver.save_screenshot(str(shots("dashboard-dead.png")))
        press("button.b-delete-selected")
        seen["delete_selected_question"] = confirm()
        seen["delete_selected_flash"] = flash()
        press("button.b-retry-all")
        seen["retry_all_question"] = confirm()
        seen["retry_all_flash"] = flash()

        # workflows: the list with status and progress, filtered; a workflow's structure
        driver.get(f"{base}/workflows?queue={queue}")
        seen["wf_row"] = text("table.workflows tbody tr")
        press(".wf-status a[href*='status=succeeded']")
        arrived("status=succeeded")
        seen["wf_filtered"] = text(".list-note")
        press("table.workflows td.id a")
        arrived("/workflows/")
        css(".wf-shape")
        seen["wf_groups"] = len(driver.find_elements(By.CSS_SELECTOR, ".wf-shape .wf-group"))
        seen["wf_chains"] = len(driver.find_elements(By.CSS_SELECTOR, ".wf-shape .wf-chain"))
        seen["wf_steps"] = len(driver.find_elements(By.CSS_SELECTOR, ".wf-shape .wf-step"))
        seen["wf_result"] = text("pre.wf-result")
        driver.save_screenshot(str(shots("dashboard-workflow.png")))

        # schedules: pause one (it says so), resume it
        driver.get(f"{base}/schedules")
        sid = ids["schedule"]
        press(f"tr[data-schedule='{sid}'] button.b-pause")
        seen["pause_question"] = confirm()
        seen["pause_flash"] = flash()
        seen["paused_state"] = text(f"tr[data-schedule='{sid}'] td.state")
        seen["paused_next"] = text(f"tr[data-schedule='{sid}'] td.next")
        driver.save_screenshot(str(shots("dashboard-schedules.png")))
        press(f"tr[data-schedule='{sid}'] button.b-resume")
        seen["resume_flash"] = flash()
        seen["resumed_state"] = text(f"tr[data-schedule='{sid}'] td.state")

        # the queued list (buttons Pause and Cancel on each row) fits a 1280 px window whole:
        # its card needs no scrolling either
        driver.get(f"{base}/tasks?queue={queue}&status=queued")
        css("table.tasks button.b-cancel")
        seen["queued_card_fits"] = driver.execute_script(
            "const c = document.querySelector('.card'); return c.scrollWidth <= c.clientWidth"
        )
        driver.save_screenshot(str(shots("dashboard-queued.png")))

        # a phone's width: every page fits
        driver.set_window_size(420, 900)
        narrow: dict[str, bool] = {}
        for path in (
            "/",
            f"/tasks?queue={queue}&status=succeeded",
            f"/tasks?queue={queue}&status=failed",
            f"/tasks/{ids['progress_other']}",
            f"/dead?queue={queue}",
            f"/workflows?queue={queue}",
            f"/workflows/{ids['workflow']}",
            "/schedules",
        ):
            driver.get(base + path)
            css("main")
            narrow[path] = fits()
            if path == "/":
                driver.save_screenshot(str(shots("dashboard-overview-420px.png")))
            if path.startswith("/workflows/"):
                driver.save_screenshot(str(shots("dashboard-workflow-420px.png")))
        seen["narrow"] = narrow
    finally:
        driver.quit()
    return seen


async def test_the_operators_day_in_the_browser(
    make_dash_app: Callable[..., App], queue_name: str, tmp_path: Path
) -> None:
    app = make_dash_app()
    other = f"{queue_name}-x"

    @app.task(name="ops.report")
    async def report(ctx: Context, n: int) -> int:
        for i in range(12):
            await ctx.progress(i + 1, 12)
        return n

    @app.task(name="ops.broken", max_tries=1)
    async def broken(n: int) -> None:
        raise Fail(f"cannot read file {n}.csv")

    @app.task(name="ops.seed")
    async def seed(n: int) -> int:
        return n * 10

    @app.task(name="ops.fan")
    async def fan(previous: int, n: int) -> int:
        return previous + n

    @app.task(name="ops.merge")
    async def merge(parts: list[int]) -> int:
        return sum(parts)

    @app.task(name="ops.nightly")
    async def nightly() -> None:
        return None

    viewer = make_dash_app()
    async with app:
        async with serving(app, queues=[queue_name]):
            reports = [await report.enqueue(n) for n in range(3)]
            for n in range(4):
                await broken.enqueue(n)
            fanned = app.group([fan.call(2), fan.call(3)])
            wf = await (seed.call(1) | fanned | merge.call()).enqueue()
            await wf.result(timeout=20)
            for h in reports:
                await h.result(timeout=20)
            # settle: every dead letter recorded
            while len(await app.dead_letters()) < 4:
                await asyncio.sleep(0.05)
        await report.options(delay=3600).enqueue(99)
        await app.queue(other).pause()
        for n in range(5):
            await report.options(queue=other).enqueue(n)
        sid = await app.schedule(nightly.call(), cron="0 3 * * *", id=f"{queue_name}-nightly")
        ids = {
            "queue": queue_name,
            "other": other,
            "progress": reports[0].id,
            "progress_other": reports[1].id,
            "workflow": wf.id,
            "schedule": sid,
            "offset": (await app.queues()).index(queue_name),
        }
        try:
            with listening(viewer) as base:
                seen = await asyncio.to_thread(
                    operate, base, ids, lambda name: _artifact(name, tmp_path)
                )
        finally:
            await app.unschedule(sid)

        # overview: a paused queue has nothing ready; a day of 5-minute steps
        assert seen["ready"] == "0"
        assert seen["day_bars"] == 288 and int(seen["day_ok"]) >= 6
        assert "Cancel all 5 task(s) of queue" in seen["purge_question"]
        assert seen["purge_flash"] == f"queue {other}: 5 cancelled"
        assert (await app.queue(other).counts())["cancelled"] == 5

        # lists
        assert len(seen["ended"]) == 7  # three reports, four workflow steps
        assert seen["ended"] == sorted(seen["ended"], reverse=True)  # newest first
        assert re.fullmatch(r"\d+ ms|\d+\.\d s", seen["runtime"]), seen["runtime"]
        assert seen["total"] == "7"
        assert seen["match"].startswith("3 succeeded tasks whose name contains “report”")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in 59 min \d+ s\)", seen["due"])
        assert "cannot read file" in seen["error"] and "fail" in seen["error"]

        # task page, delete
        assert "task.progress" in seen["grouped"] and "×12" in seen["grouped"]
        assert seen["delete_question"].startswith(f"Delete task {reports[0].id}")
        assert seen["delete_flash"] == f"task {reports[0].id} deleted"
        assert f"/tasks?queue={queue_name}" in seen["after_delete_url"]
        assert (await app.queue_counts())["succeeded"] >= 1
        assert reports[0].id not in {i.id for i in await app.tasks("succeeded", limit=50)}

        # dead letters: one deleted by selection, the other three retried (and failed again)
        assert seen["dead_listed"] == 4
        assert (
            seen["delete_selected_question"]
            == "Delete the 1 dead letter(s) ticked, records and all?"
        )
        assert seen["delete_selected_flash"] == f"1 dead letter(s) of {queue_name} deleted"
        assert seen["retry_all_question"] == f"Retry all 3 dead letter(s) of queue {queue_name}?"
        assert seen["retry_all_flash"] == f"3 dead letter(s) of {queue_name} queued again"
        dead_now = {i.id for i in await app.dead_letters()}
        assert seen["ticked"] not in dead_now
        assert (await app.queue_counts())["queued"] == 3  # retried, waiting for a worker

        # workflows
        assert (
            wf.id in seen["wf_row"] and "succeeded" in seen["wf_row"] and "100%" in seen["wf_row"]
        )
        assert seen["wf_filtered"].startswith("1 workflow succeeded")
        assert (seen["wf_groups"], seen["wf_chains"], seen["wf_steps"]) == (1, 1, 4)
        assert seen["wf_result"] == "25"  # (10 + 2) + (10 + 3)

        # schedules
        assert seen["pause_question"].startswith(f"Pause schedule {sid}?")
        assert seen["pause_flash"] == f"schedule {sid} paused: its ticks are skipped until resumed"
        assert seen["resume_flash"] == f"schedule {sid} resumed"
        assert seen["paused_state"].startswith("paused")
        assert seen["paused_next"] == "skipped while paused"
        assert seen["resumed_state"] == "active"

        assert seen["queued_card_fits"] is True
        # 420 px
        assert seen["narrow"] == dict.fromkeys(seen["narrow"], True)
        assert await reports[1].status() is TaskStatus.SUCCEEDED
