"""What an App declares lives in its Registry: the errors still name the App, and a refused
declaration leaves nothing behind."""

from __future__ import annotations

import pytest

from segue import App, ConfigurationError

URL = "redis://127.0.0.1:1/0"  # never connected: declaring does no I/O


def test_a_second_task_of_the_same_name_is_refused_naming_the_app() -> None:
    app = App("shop", redis_url=URL)

    @app.task(name="orders.charge")
    def charge() -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        app.task(name="orders.charge")(lambda: None)
    assert str(caught.value) == (f"a task named 'orders.charge' is already registered on {app!r}")
    assert repr(app).startswith("<App shop tasks=1 ")


def test_a_refused_cron_declaration_registers_neither_task_nor_schedule() -> None:
    app = App("shop", redis_url=URL)

    with pytest.raises(ConfigurationError, match="called with no arguments at each tick"):

        @app.cron("@hourly", name="report")  # type: ignore[arg-type]  # mypy refuses it too
        def report(day: str) -> None: ...

    assert "report" not in app.registry
    assert app.crons == {}

    @app.cron("@hourly", name="report")
    def report_again() -> None: ...

    assert list(app.registry) == ["report"]
    assert list(app.crons) == ["report"]
