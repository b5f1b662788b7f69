"""The embedded server on a machine with other users: nobody else reads, writes or steers it.

Tests that need a second user run as `nobody` when this process is root (the usual CI
container) and skip, saying so, elsewhere.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from segue import ConfigurationError
from segue import _embedded as emb

pytestmark = pytest.mark.slow


def _nobody() -> tuple[int, int, str]:
    """uid, gid and a python that user can run, or skip saying what is missing."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as a second user (nobody)")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user on this machine")
    python = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if python is None:
        pytest.skip("no system python3 that `nobody` can run")
    return entry.pw_uid, entry.pw_gid, python


def _as_nobody(code: str) -> str:
    uid, gid, python = _nobody()
    done = subprocess.run(
        [python, "-I", "-c", code],
        user=uid,
        group=gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    return done.stdout.strip() + done.stderr.strip()


# A raw PING without credentials, in the stdlib only (the other user has no redis package).
_PING = """
import socket, sys
url = sys.argv[1] if len(sys.argv) > 1 else {url!r}
try:
    if url.startswith("unix://"):
        s = socket.socket(socket.AF_UNIX); s.connect(url[len("unix://"):])
    else:
        hostport = url.split("://", 1)[1].split("@")[-1].split("/")[0]
        host, port = hostport.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.sendall(b"PING\\r\\n"); print(s.recv(100).decode())
except OSError as e:
    print("refused:", type(e).__name__)
"""


def _stop(home: Path) -> None:
    state_file = home / ".segue" / "server.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        for key in ("watchdog_pid", "server_pid"):
            try:
                os.kill(int(state[key]), signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A project directory every user can reach, as on a shared machine's /srv or /tmp."""
    os.chmod(tmp_path, 0o755)
    for parent in tmp_path.parents:
        if parent.stat().st_uid == os.getuid() and parent.stat().st_mode & 0o005 != 0o005:
            os.chmod(parent, parent.stat().st_mode | 0o005)
    home = tmp_path / "proj"
    home.mkdir(mode=0o1777)
    os.chmod(home, 0o1777)
    (home / "pyproject.toml").write_text("")
    yield home
    _stop(home)


def test_another_user_cannot_reach_a_server_on_a_long_project_path(shared: Path) -> None:
    deep = shared / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    os.chmod(deep.parent, 0o755)
    server = emb.acquire(deep)
    try:
        assert "PONG" not in _as_nobody(_PING.format(url=server.url))
    finally:
        emb.release(server)
        _stop(deep)


def test_without_a_short_socket_path_tcp_needs_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    home = tmp_path / ("d" * 60) / ("e" * 60)
    home.mkdir(parents=True)
    server = emb.acquire(home)
    try:
        assert server.url.startswith("redis://:")
        password = redis.connection.parse_url(server.url)["password"]  # type: ignore[no-untyped-call]
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        with redis.Redis(port=port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        # never on a command line, where every user can read it with ps
        pid = json.loads((home / ".segue" / "server.json").read_text())["server_pid"]
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()
        for name in ("server.json", "valkey.conf"):
            assert stat.S_IMODE((home / ".segue" / name).stat().st_mode) == 0o600
    finally:
        emb.release(server)
        _stop(home)


def test_a_symlinked_segue_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    home = tmp_path / "proj"
    home.mkdir()
    (home / ".segue").symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="is a symlink"):
        emb.acquire(home)
    assert list(elsewhere.iterdir()) == []


def test_a_group_writable_segue_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".segue").mkdir()
    os.chmod(tmp_path / ".segue", 0o775)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        emb.acquire(tmp_path)


def test_a_segue_directory_of_another_user_is_refused(shared: Path) -> None:
    uid, gid, _ = _nobody()
    planted = shared / ".segue"
    planted.mkdir(mode=0o700)
    (planted / "server.json").write_text(
        json.dumps({"url": "redis://127.0.0.1:1/0", "server_pid": 1, "watchdog_pid": 1})
    )
    os.chown(planted, uid, gid)
    with pytest.raises(ConfigurationError, match="belongs to uid"):
        emb.acquire(shared)


def test_a_server_run_by_another_user_is_not_attached_to(
    tmp_path: Path, segue_valkey: object
) -> None:
    uid, gid, _ = _nobody()
    theirs = subprocess.Popen(["sleep", "60"], user=uid, group=gid, extra_groups=[])
    try:
        d = tmp_path / ".segue"
        d.mkdir(mode=0o700)
        url = segue_valkey.url  # type: ignore[attr-defined]
        (d / "server.json").write_text(
            json.dumps({"url": url, "server_pid": theirs.pid, "watchdog_pid": theirs.pid})
        )
        server = emb.acquire(tmp_path)
        try:
            assert server.started_here and server.url != url
        finally:
            emb.release(server)
            _stop(tmp_path)
    finally:
        theirs.kill()
        theirs.wait()


def test_everything_under_segue_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        server = emb.acquire(tmp_path)
        with redis.Redis.from_url(server.url) as client:
            client.set("card", "4111 1111 1111 1111")
            client.bgrewriteaof()
        emb.release(server)
    finally:
        os.umask(old)
    d = tmp_path / ".segue"
    seen = []
    for root, dirs, files in os.walk(d):
        for name in dirs + files + ([] if root != str(d) else ["."]):
            p = Path(root, name)
            mode = stat.S_IMODE(p.lstat().st_mode)
            seen.append(p.name)
            assert mode & 0o077 == 0, f"{p} has mode {mode:o}"
    assert any(name.endswith(".aof") for name in seen)


def test_the_helper_ignores_a_segue_package_planted_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "planted-ran"
    planted = tmp_path / "cwd" / "segue"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    home = tmp_path / "proj"
    home.mkdir()
    monkeypatch.chdir(planted.parent)
    server = emb.acquire(home)
    try:
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        emb.release(server)
        _stop(home)
    assert not marker.exists()
    assert sys.modules["segue"].__file__ != str(planted / "__init__.py")


def test_a_temp_dir_where_others_could_swap_directories_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_dir = tmp_path / "o"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # writable by all, no sticky bit
    monkeypatch.setenv("TMPDIR", str(open_dir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    home = tmp_path / ("d" * 60) / ("e" * 60)
    home.mkdir(parents=True)
    server = emb.acquire(home)
    try:
        assert server.url.startswith("redis://:")  # loopback TCP with a password instead
        assert list(open_dir.iterdir()) == []
    finally:
        emb.release(server)
        _stop(home)
