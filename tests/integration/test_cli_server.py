"""Which server a command uses, said in its first line; where no server runs, no new empty
one is started; a bad URL or a failing command ends with one `error:` line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segue import App, ConfigurationError, Settings
from segue._settings import mask_url

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def segue_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    return subprocess.run(
        [sys.executable, "-m", "segue", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT / "src"), **env},
    )


def test_a_read_only_command_where_no_server_runs_starts_none_and_says_so(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    for command in (("status",), ("tasks",), ("info", "default:01ABC"), ("dead",)):
        done = segue_in(project / "src" / "pkg", *command)
        lines = done.stderr.splitlines()
        assert done.returncode == 1, done.stderr
        # the project directory is found by walking up to the pyproject.toml
        assert lines[0] == f"server: embedded server in {project / '.segue'}"
        assert len(lines) == 2 and lines[1].startswith(f"error: no server runs for {project}")
        assert "--url" in lines[1] and "SEGUE_REDIS_URL" in lines[1]
        assert not (project / ".segue").exists()  # nothing started, nothing written


def test_a_bad_url_is_one_error_line_naming_setting_value_and_forms(tmp_path: Path) -> None:
    for args, env, setting in (
        (("--url", "http://localhost:6379"), {}, "--url"),
        (("--url", "localhost:6379"), {}, "--url"),
        ((), {"SEGUE_REDIS_URL": "redis//:secret@host"}, "SEGUE_REDIS_URL"),
    ):
        done = segue_in(tmp_path, "status", *args, **env)
        assert done.returncode == 1
        [line] = done.stderr.splitlines()
        assert line.startswith(f"error: {setting} '")
        assert "redis://" in line and "unix://" in line and "secret" not in line
        assert done.stdout == ""
    traced = segue_in(tmp_path, "--debug", "status", "--url", "http://x")
    assert "Traceback (most recent call last)" in traced.stderr
    assert traced.stderr.splitlines()[-1].startswith("error: --url 'http://x'")


def test_the_first_line_names_the_server_with_its_password_masked() -> None:
    url = "redis://someone:hunter2@127.0.0.1:1/0"  # nothing listens: the command fails
    done = segue_in(ROOT, "queues", "--url", url)
    first, last = done.stderr.splitlines()
    assert first == "server: redis://someone:***@127.0.0.1:1/0"
    assert last.startswith("error: cannot reach") and "hunter2" not in done.stderr
    assert done.returncode == 1


def test_settings_accept_the_documented_url_forms_and_refuse_others() -> None:
    for good in (
        "redis://localhost",
        "redis://u:p@host:6379/1",
        "rediss://host:6380/0?ssl_cert_reqs=none",
        "unix:///tmp/valkey.sock",
        "redis+cluster://a:7000,b:7001",
        "redis+sentinel://s1:26379,s2/mymaster",
    ):
        assert Settings(redis_url=good).redis_url == good
    for bad in ("http://host:6379", "localhost:6379", "redis://", "redis://host:port", "unix://"):
        with pytest.raises(ConfigurationError, match=r"redis_url .* accepted forms: redis://"):
            Settings(redis_url=bad)
    with pytest.raises(ConfigurationError, match="SEGUE_REDIS_URL 'nope'"):
        Settings.from_env({"SEGUE_REDIS_URL": "nope"})
    assert mask_url("rediss://u:pw@h/0?password=x") == "rediss://u:***@h/0?password=***"


def test_app_home_takes_a_str_or_a_path(tmp_path: Path) -> None:
    assert App("a", home=str(tmp_path)).settings.home == tmp_path
    assert App("b", home=tmp_path).settings.home == tmp_path
