"""The outcome of one attempt (segue._runner.attempt): what a run's return or exception, its
try count and its options decide (succeed, retry after a delay, fail with a reason, suspend,
pause, wait, requeue, release), one table row per case.

`attempt` runs the task's real function and talks to no server, so each row is a real task
raising a real exception. Outcomes are read as what finish.lua receives, (action, a, b),
whatever Python type carries them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from segue import (
    App,
    ConfigurationError,
    Context,
    Fail,
    Hook,
    Pause,
    PayloadError,
    Retry,
    RunResult,
)
from segue._context import PauseRequested, WaitingForSubtasks
from segue._keys import Keyspace
from segue._run_control import ServerUnreachable
from segue._runner import Job, attempt

QUEUE = "q"


@dataclass(frozen=True)
class Decision:
    """An outcome as a user sees its effect: the kind, why, and after how long."""

    kind: str  # ok | fail | retry | suspend | pause | paused | waiting | requeue | release
    reason: str | None = None  # fail: the failure's reason; requeue: why (history)
    delay_ms: int | None = None  # retry: the backoff; suspend: -1 for none
    error: dict[str, Any] | None = None  # fail, retry: the error report stored
    result: Any = None  # ok: the stored result, decoded
    max_pauses: int | None = None  # pause: -1 for no limit
    state: dict[str, Any] | None = None  # pause: merged into ctx.state as it suspends


def decision(outcome: Any) -> Decision:
    """What finish.lua is told: (action, a, b[, ...]), from a tuple or a typed outcome."""
    action, a, b, *rest = (
        outcome if isinstance(outcome, tuple) else (outcome.action, *outcome.argv())
    )
    match action:
        case "pause":
            k, *pairs = rest
            state = {pairs[i]: json.loads(pairs[i + 1]) for i in range(0, 2 * k, 2)}
            return Decision("pause", delay_ms=a, max_pauses=b, state=state)
        case "ok":
            return Decision("ok", result=json.loads(a))
        case "fail":
            return Decision("fail", reason=b, error=json.loads(a))
        case "retry":
            return Decision("retry", delay_ms=b, error=json.loads(a))
        case "suspend":
            return Decision("suspend", delay_ms=a)
        case "requeue":
            return Decision("requeue", reason=a)
        case "release":
            return Decision("release", reason=f"{a} releases in {b} ms")
        case "paused" | "waiting":
            return Decision(action)
    raise AssertionError(f"unknown outcome {outcome!r}")


def _app(**settings: Any) -> App:
    # never connected: attempt() talks to no server
    return App("unit", redis_url="redis://127.0.0.1:1/0", queue=QUEUE, **settings)


async def run(
    app: App,
    task_name: str | None,
    *args: Any,
    tries: int = 1,
    max_tries: int = 3,
    timeout_ms: int = 0,
    payload: bytes | None = None,
    hooks: Sequence[Hook] = (),
    from_worker: str = "",
) -> Decision:
    """One attempt of the app's task `task_name` (None: a name no worker knows)."""
    task = app.registry.get(task_name) if task_name else None
    job = Job(
        ks=Keyspace("segue", QUEUE),
        id=f"{QUEUE}:01TEST",
        name=task_name or "nobody.knows",
        payload=payload if payload is not None else json.dumps([list(args), {}]).encode(),
        tries=tries,
        gen="1",
        timeout_ms=timeout_ms,
        max_tries=max_tries,
        from_worker=from_worker,
    )
    with ThreadPoolExecutor(max_workers=1) as executor:
        return decision(await attempt(job, task, app.settings, "w-1", executor, hooks))


def raising(exc: BaseException | Callable[[], BaseException]) -> App:
    """An app whose tasks `raise.async` and `raise.sync` raise `exc` (a fresh one each run
    if a factory), with a backoff of 0.25 s times the try count."""
    app = _app()
    make = exc if callable(exc) else (lambda: exc)

    def backoff(tries: int) -> float:
        return 0.25 * tries

    @app.task(name="raise.async", retry_backoff=backoff)
    async def raise_async(x: int) -> int:
        raise make()

    @app.task(name="raise.sync", retry_backoff=backoff)
    def raise_sync(x: int) -> int:
        raise make()

    return app


BOTH = pytest.mark.parametrize("name", ["raise.async", "raise.sync"])


# --- a value ---------------------------------------------------------------------------------


async def test_a_returned_value_succeeds_with_the_value_as_its_result() -> None:
    app = _app()

    @app.task(name="add")
    async def add(x: int, y: int) -> dict[str, int]:
        return {"sum": x + y}

    @app.task(name="add.sync")
    def add_sync(x: int, y: int) -> list[int]:
        return [x, y]

    assert await run(app, "add", 2, 3) == Decision("ok", result={"sum": 5})
    assert await run(app, "add.sync", 2, 3) == Decision("ok", result=[2, 3])
    # the try count does not matter to a success, the last one included
    assert await run(app, "add", 1, 1, tries=3, max_tries=3) == Decision("ok", result={"sum": 2})


async def test_a_result_that_cannot_be_stored_fails_at_once_even_with_tries_left() -> None:
    app = _app(max_result_bytes=1024)

    @app.task(name="big")
    async def big(n: int) -> str:
        return "x" * n

    @app.task(name="odd")
    async def odd(n: int) -> object:
        return object()

    too_large = await run(app, "big", 4096, tries=1, max_tries=5)
    assert (too_large.kind, too_large.reason) == ("fail", "result_too_large")
    assert too_large.error is not None and "max_result_bytes" in too_large.error["message"]
    assert await run(app, "big", 100) == Decision("ok", result="x" * 100)
    unencodable = await run(app, "odd", 1, tries=1, max_tries=5)
    assert (unencodable.kind, unencodable.reason) == ("fail", "unencodable_result")


# --- an error of the task ----------------------------------------------------------------------


@BOTH
async def test_an_error_with_tries_left_retries_after_the_backoff(name: str) -> None:
    app = raising(lambda: ValueError("bad input"))
    for tries, delay_ms in [(1, 250), (2, 500)]:
        got = await run(app, name, 1, tries=tries, max_tries=3)
        assert (got.kind, got.delay_ms) == ("retry", delay_ms)
        assert got.error is not None
        assert (got.error["type"], got.error["message"], got.error["reason"]) == (
            "ValueError",
            "bad input",
            "error",
        )
        assert "ValueError: bad input" in got.error["traceback"]  # where it was raised


@BOTH
async def test_an_error_on_the_last_try_fails_with_reason_error(name: str) -> None:
    app = raising(lambda: KeyError("k"))
    got = await run(app, name, 1, tries=3, max_tries=3)
    assert (got.kind, got.reason) == ("fail", "error")
    assert got.error is not None and got.error["type"] == "KeyError"
    assert got.error["traceback"] is not None
    # max_tries=1: the first try is the last
    assert (await run(app, name, 1, tries=1, max_tries=1)).kind == "fail"


async def test_a_numeric_backoff_doubles_per_try_with_jitter_down_to_half() -> None:
    app = _app()

    @app.task(name="flaky", retry_backoff=2.0)
    async def flaky() -> None:
        raise RuntimeError("flaky")

    for tries, step_ms in [(1, 2000), (2, 4000), (3, 8000)]:
        got = await run(app, "flaky", tries=tries, max_tries=10)
        assert got.kind == "retry"
        assert got.delay_ms is not None and step_ms / 2 <= got.delay_ms <= step_ms


async def test_a_run_past_its_timeout_retries_then_fails_with_reason_timeout() -> None:
    app = _app()

    @app.task(name="slow", retry_backoff=lambda tries: 0.0)
    async def slow() -> None:
        await asyncio.sleep(10)

    got = await run(app, "slow", tries=1, max_tries=2, timeout_ms=50)
    assert (got.kind, got.delay_ms) == ("retry", 0)
    assert got.error is not None and got.error["reason"] == "timeout"
    assert got.error["message"] == f"task {QUEUE}:01TEST (slow) ran past its timeout of 0.05 s"
    last = await run(app, "slow", tries=2, max_tries=2, timeout_ms=50)
    assert (last.kind, last.reason) == ("fail", "timeout")


async def test_a_timeout_error_the_task_raised_itself_is_an_ordinary_error() -> None:
    app = raising(lambda: TimeoutError("the remote API timed out"))
    got = await run(app, "raise.async", 1, tries=3, max_tries=3, timeout_ms=60_000)
    assert (got.kind, got.reason) == ("fail", "error")
    assert got.error is not None and got.error["message"] == "the remote API timed out"


# --- what the task asked for ---------------------------------------------------------------------


@BOTH
async def test_fail_ends_the_task_at_once_with_tries_left(name: str) -> None:
    app = raising(lambda: Fail("card declined"))
    got = await run(app, name, 1, tries=1, max_tries=5)
    assert (got.kind, got.reason) == ("fail", "fail")
    assert got.error == {
        "type": "Fail",
        "message": "card declined",
        "traceback": None,  # an expected failure: no traceback
        "reason": "fail",
    }


@pytest.mark.parametrize(
    ("retry", "tries", "expected"),
    [
        (Retry(), 1, ("retry", 250)),  # no delay: the task's backoff (0.25 s x tries)
        (Retry(), 2, ("retry", 500)),
        (Retry(delay=1.5), 1, ("retry", 1500)),  # its own delay wins
        (Retry(delay=timedelta(minutes=2)), 2, ("retry", 120_000)),
        (Retry(delay=0), 1, ("retry", 0)),
        (Retry(delay=1.5), 3, ("fail", "max_tries")),  # the last try: no more
    ],
)
async def test_retry_asks_again_after_its_delay_until_the_tries_are_spent(
    retry: Retry, tries: int, expected: tuple[str, Any]
) -> None:
    got = await run(raising(retry), "raise.async", 1, tries=tries, max_tries=3)
    kind, detail = expected
    assert got.kind == kind
    assert (got.delay_ms if kind == "retry" else got.reason) == detail
    assert got.error is not None and got.error["type"] == "Retry"
    assert got.error["reason"] == ("retry" if kind == "retry" else "max_tries")
    assert got.error["traceback"] is None


@pytest.mark.parametrize(
    ("pause", "delay_ms"),
    [
        (Pause(), -1),  # back to its queue at once
        (Pause(delay=2.5), 2500),
        (Pause(delay=timedelta(hours=1)), 3_600_000),
    ],
)
async def test_pause_suspends_without_spending_the_try_even_on_the_last(
    pause: Pause, delay_ms: int
) -> None:
    for tries in (1, 3):  # the last try too: a suspend is not a failure
        got = await run(raising(pause), "raise.async", 1, tries=tries, max_tries=3)
        assert got == Decision("pause", delay_ms=delay_ms, max_pauses=100, state={})


async def test_a_pause_raised_in_a_sync_task_suspends_it_too() -> None:
    got = await run(raising(Pause(delay=1)), "raise.sync", 1)
    assert got == Decision("pause", delay_ms=1000, max_pauses=100, state={})


async def test_a_pause_carries_its_state_and_the_task_s_max_pauses() -> None:
    app = _app()

    @app.task(name="limited", max_pauses=7)
    async def limited() -> None:
        raise Pause(state={"cursor": 40, "seen": ["a", "b"]})

    @app.task(name="unlimited", max_pauses=None)
    async def unlimited() -> None:
        raise Pause(delay=0.25)

    got = await run(app, "limited")
    assert got == Decision(
        "pause", delay_ms=-1, max_pauses=7, state={"cursor": 40, "seen": ["a", "b"]}
    )
    assert await run(app, "unlimited") == Decision("pause", delay_ms=250, max_pauses=-1, state={})


async def test_a_pause_state_value_over_the_payload_limit_fails_the_try_naming_the_key() -> None:
    app = _app(max_payload_bytes=64)

    @app.task(name="big", max_tries=1)
    async def big() -> None:
        raise Pause(state={"blob": "x" * 100})

    got = await run(app, "big", max_tries=1)
    assert (got.kind, got.reason) == ("fail", "error")
    assert got.error is not None and "'blob'" in got.error["message"]
    assert "max_payload_bytes" in got.error["message"]


async def test_a_pause_state_value_that_is_not_json_fails_the_try_naming_the_key() -> None:
    app = _app()

    @app.task(name="sock", max_tries=2)
    async def sock() -> None:
        raise Pause(state={"ok": 1, "sock": object()})

    got = await run(app, "sock", max_tries=2)
    assert got.kind == "retry" and got.error is not None
    assert got.error["type"] == "PayloadError"
    assert got.error["message"].startswith("Pause(state=...): state value 'sock' cannot be")


def test_a_pause_state_key_must_be_a_string() -> None:
    with pytest.raises(PayloadError, match="non-empty str: 3"):
        Pause(state={3: "x"})  # type: ignore[dict-item]


def test_max_pauses_must_be_a_count_or_none() -> None:
    app = _app()
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigurationError, match="max_pauses must be an int >= 0 or None"):

            @app.task(name=f"bad{bad}", max_pauses=bad)  # type: ignore[arg-type]
            async def bad_task() -> None: ...


# --- what the run was told from outside ------------------------------------------------------


@pytest.mark.parametrize(
    ("signal", "expected"),
    [
        # an operator's pause reached a checkpoint: held, no try spent
        (PauseRequested(), Decision("paused")),
        # ctx.wait_for found sub-tasks still running: the task waits without a slot
        (WaitingForSubtasks(), Decision("waiting")),
        # the server stayed unreachable for half a lease: back to the queue, no try spent
        (ServerUnreachable("server down"), Decision("requeue", reason="server unreachable")),
    ],
)
async def test_a_stop_from_outside_the_task_spends_no_try(
    signal: BaseException, expected: Decision
) -> None:
    for tries in (1, 3):
        assert await run(raising(signal), "raise.async", 1, tries=tries, max_tries=3) == expected


async def test_those_stops_pass_through_the_tasks_own_except_exception() -> None:
    app = _app()

    @app.task(name="careful")
    async def careful(ctx: Context) -> str:
        try:
            raise PauseRequested
        except Exception:  # task code that catches "everything" must not swallow a pause
            return "swallowed"

    assert await run(app, "careful") == Decision("paused")


# --- before the function is called --------------------------------------------------------------


async def test_a_task_no_worker_knows_is_released_for_another_worker() -> None:
    app = _app(unknown_task_max_releases=4, unknown_task_window_seconds=60)
    got = await run(app, None, 1)
    assert got == Decision("release", reason="4 releases in 60000 ms")


async def test_arguments_that_do_not_decode_fail_at_once_naming_the_task() -> None:
    app = _app()

    @app.task(name="charge")
    async def charge(order_id: int) -> int:
        return order_id

    got = await run(app, "charge", payload=b'[["not a number"],{}]', tries=1, max_tries=5)
    assert (got.kind, got.reason) == ("fail", "undecodable")
    assert got.error is not None and got.error["reason"] == "undecodable"
    assert f"{QUEUE}:01TEST (charge)" in got.error["message"]
    assert (await run(app, "charge", payload=b"not json")).reason == "undecodable"


async def test_a_call_that_does_not_fit_the_function_fails_bad_arguments_without_a_retry() -> None:
    app = _app()

    @app.task(name="report")
    def report(year: int, *, title: str = "r") -> str:
        return f"{title} {year}"

    @app.task(name="typo")
    async def typo(n: int) -> None:
        raise TypeError("the function's own TypeError")  # not an argument mismatch

    missing = await run(app, "report", payload=b"[[],{}]", max_tries=5)
    assert (missing.kind, missing.reason) == ("fail", "bad_arguments")
    assert missing.error is not None and "'year'" in missing.error["message"]
    assert "(report)" in missing.error["message"]
    extra = await run(app, "report", payload=b'[[1],{"colour":"red"}]', max_tries=5)
    assert (extra.kind, extra.reason) == ("fail", "bad_arguments")
    assert extra.error is not None and "'colour'" in extra.error["message"]
    assert (await run(app, "typo", 1, max_tries=5)).kind == "retry"
    # the producer of a task enqueued by name did not check the types: its mistake too
    sent = await run(app, "report", payload=b'[["x"],{}]', from_worker="send mt to")
    assert (sent.kind, sent.reason) == ("fail", "bad_arguments")
    assert sent.error is not None and "parameter 'year'" in sent.error["message"]


async def test_a_task_sent_by_name_runs_with_this_workers_max_tries_and_timeout() -> None:
    app = _app()

    @app.task(name="flaky", max_tries=5, retry_backoff=0.0)
    async def flaky() -> None:
        raise RuntimeError("again")

    @app.task(name="slow", timeout=0.05, max_tries=1)
    async def slow() -> None:
        await asyncio.sleep(5)

    # the record's stand-ins (3 tries, no timeout) give way to the definition's
    assert (await run(app, "flaky", tries=3, from_worker="send mt to")).kind == "retry"
    assert (await run(app, "flaky", tries=5, from_worker="send mt to")).kind == "fail"
    # passed to send: the record's own value holds
    assert (await run(app, "flaky", tries=3, from_worker="send to")).kind == "fail"
    timed_out = await run(app, "slow", from_worker="send mt to")
    assert (timed_out.kind, timed_out.reason) == ("fail", "timeout")


# --- what hooks are told ------------------------------------------------------------------------


class Ends(Hook):
    """Records what after_run and the failure hooks were told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def after_run(self, ctx: Context, result: RunResult) -> None:
        self.seen.append(("after_run", (result.end, result.retry_in)))

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        self.seen.append(("on_retry", delay))

    async def on_final_failure(self, ctx: Context, error: BaseException) -> None:
        self.seen.append(("on_final_failure", type(error).__name__))


@pytest.mark.parametrize(
    ("exc", "tries", "seen"),
    [
        (None, 1, [("after_run", ("succeeded", None))]),
        (lambda: ValueError("x"), 1, [("on_retry", 0.25), ("after_run", ("retrying", 0.25))]),
        (
            lambda: ValueError("x"),
            3,
            [("on_final_failure", "ValueError"), ("after_run", ("failed", None))],
        ),
        (lambda: Fail("no"), 1, [("on_final_failure", "Fail"), ("after_run", ("failed", None))]),
        (lambda: Pause(delay=5), 1, [("after_run", ("suspended", None))]),
        (PauseRequested, 1, [("after_run", ("paused", None))]),
        (WaitingForSubtasks, 1, [("after_run", ("waiting", None))]),
        (lambda: ServerUnreachable("down"), 1, [("after_run", ("stopped", None))]),
    ],
)
async def test_hooks_are_told_how_the_run_ended_and_do_not_change_the_outcome(
    exc: Callable[[], BaseException] | None, tries: int, seen: list[tuple[str, Any]]
) -> None:
    # a fresh exception each run: one raised twice would carry both tracebacks
    app = raising(exc) if exc is not None else _app()
    if exc is None:

        @app.task(name="raise.async")
        async def fine(x: int) -> int:
            return x

    hook = Ends()
    with_hook = await run(app, "raise.async", 1, tries=tries, max_tries=3, hooks=[hook])
    assert with_hook == await run(app, "raise.async", 1, tries=tries, max_tries=3)
    assert hook.seen == seen
