"""`segue worker --reload`: restart the worker when the project's Python files change.

The worker runs as a child process started again after each change (watchfiles, as
uvicorn's `--reload` and arq's `--watch` do). This process holds the embedded server open
meanwhile, so a restart does not stop the server and start it again.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segue._errors import ConfigurationError

if TYPE_CHECKING:
    from segue._app import App

log = logging.getLogger("segue.reload")


def run_with_reload(argv: list[str], app: App | None, watch: Path) -> int:
    """Run `segue <argv>` (without --reload) in a child, again after every change of a .py
    file under `watch`, until Ctrl-C; returns how many times it restarted."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigurationError(
            "--reload needs the watchfiles package: pip install 'segue[reload]'"
        ) from None
    held = None
    if app is not None and app.settings.redis_url is None:
        from segue import _embedded

        held = _embedded.acquire(app.settings.home, idle_timeout=app.settings.embedded_idle_seconds)
    command = shlex.join([sys.executable, "-m", "segue", *argv])
    # Ctrl-C (SIGINT) stops the reloader and its worker even when this process was started
    # with SIGINT ignored, as a shell's background job or a CI runner's child is: Python
    # then keeps the inherited SIG_IGN, and the signal would never reach watchfiles'
    # KeyboardInterrupt (it handles SIGTERM itself). The worker itself already handles both.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    grace = int(app.settings.shutdown_grace_seconds) + 5 if app is not None else 15

    def changed(changes: set[tuple[watchfiles.Change, str]]) -> None:
        names = sorted({Path(path).name for _, path in changes})
        log.warning("%s changed; restarting the worker", ", ".join(names))

    try:
        return watchfiles.run_process(
            watch,
            target=command,
            target_type="command",
            callback=changed,
            watch_filter=watchfiles.PythonFilter(),
            sigint_timeout=grace,
        )
    finally:
        if held is not None:
            from segue import _embedded

            _embedded.release(held)
