"""The autoscaling manifests of docs/scaling.md: every YAML block of the docs parses, the
dashboard's Deployment, run with its own command line and environment, serves the metrics
the ScaledObject queries while no worker runs, to the `Host` names its Service and probe
use, and the worker Deployment and the ScaledObject agree with each other."""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from segue._cli import cli
from tests._support import Engine

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGE = DOCS / "scaling.md"
BLOCK = re.compile(r"^```yaml\n(.*?)^```$", re.M | re.S)


def _documents(page: Path) -> list[Any]:
    return [
        doc
        for block in BLOCK.findall(page.read_text(encoding="utf-8"))
        for doc in yaml.safe_load_all(block)
        if doc is not None
    ]


def _manifest(kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for d in _documents(PAGE)
        if isinstance(d, dict) and d.get("kind") == kind and d["metadata"]["name"] == name
    ]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _triggers() -> list[dict[str, Any]]:
    scaled = _manifest("ScaledObject", "shop-workers")
    triggers: list[dict[str, Any]] = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "prometheus" for t in triggers)
    return triggers


def test_every_yaml_block_of_the_docs_parses() -> None:
    pages = [p for p in sorted(DOCS.glob("*.md")) if BLOCK.search(p.read_text(encoding="utf-8"))]
    assert PAGE in pages
    for page in pages:
        assert _documents(page), page.name
    kinds = {d.get("kind") for d in _documents(PAGE) if isinstance(d, dict)}
    assert {"Deployment", "Service", "ScaledObject"} <= kinds


def test_the_scaled_object_sizes_the_worker_deployment() -> None:
    workers = _manifest("Deployment", "shop-workers")
    scaled = _manifest("ScaledObject", "shop-workers")
    assert scaled["spec"]["scaleTargetRef"]["name"] == workers["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == workers["metadata"]["namespace"]
    assert scaled["spec"]["minReplicaCount"] == 0
    container = _container(workers)
    command = container["command"]
    # exec form, so that the worker is the process Kubernetes sends SIGTERM to
    assert command[:2] == ["segue", "worker"]
    # Kubernetes kills after the pod's grace: the worker's own must end well before it
    grace = float(_env(container)["SEGUE_SHUTDOWN_GRACE_SECONDS"])
    assert workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace + 10
    # one worker per `--concurrency` tasks, on the queue the workers serve
    first = _triggers()[0]["metadata"]
    assert first["threshold"] == _option(command, "--concurrency")
    queue = _option(command, "--queues")
    for trigger in _triggers():
        assert f'queue="{queue}"' in trigger["metadata"]["query"]
    help_text = CliRunner().invoke(cli, ["worker", "--help"], env={"COLUMNS": "200"}).output
    assert "--queues" in help_text and "--concurrency" in help_text


async def test_the_dashboard_deployment_serves_what_the_scaled_object_queries(
    segue_valkey: Engine,
    queue_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Run as its manifest says (uvicorn replaced: the ASGI app is driven in-process), the
    dashboard answers the scrape of the Service's name and the probe's `localhost`, and
    with no worker running reports the ready task of the queue the workers serve."""
    deployment = _manifest("Deployment", "segue-dashboard")
    container = _container(deployment)
    command = container["command"]
    assert command[:2] == ["segue", "dashboard"]
    module, _, attribute = command[2].partition(":")
    package = tmp_path / module.split(".")[0]
    package.mkdir()
    (package / "__init__.py").write_text("")
    worker_command = _container(_manifest("Deployment", "shop-workers"))["command"]
    queue = _option(worker_command, "--queues")
    (tmp_path / (module.replace(".", "/") + ".py")).write_text(
        "from segue import App\n"
        f"{attribute} = App('shop', queue={queue!r})\n"
        f"@{attribute}.task(name='shop.send')\n"
        "async def send(to: str) -> None:\n"
        "    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (module.split(".")[0], module):  # imported below: gone after the test
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **options: served.update(options, asgi=asgi))
    from_secrets = {
        # the admin user: this test's keys are under a prefix of their own
        "SEGUE_REDIS_URL": segue_valkey.admin_url,
        "SEGUE_DASHBOARD_PASSWORD": "a long enough password",
        "SEGUE_DASHBOARD_SECRET": secrets.token_hex(32),
    }
    env = {name: from_secrets[name] for name in _env(container)}
    env["SEGUE_PREFIX"] = f"scaling-{queue_name}"  # this test's keys only
    result = CliRunner().invoke(cli, command[1:], env=env)
    assert result.exit_code == 0, result.output
    assert served["port"] == container["ports"][0]["containerPort"]

    # the App the dashboard serves, as the command loaded it (closed after the block)
    tasks = sys.modules[module]
    async with getattr(tasks, attribute) as app:
        assert app.settings.prefix == env["SEGUE_PREFIX"]
        await tasks.send.enqueue("a@example.com")
        assert not await app.workers()

        scrape = yaml.safe_load(BLOCK.findall(PAGE.read_text(encoding="utf-8"))[1])
        target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
        probe = container["readinessProbe"]["httpGet"]
        transport = httpx.ASGITransport(app=served["asgi"])
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            health = await client.get(
                probe["path"], headers={h["name"]: h["value"] for h in probe["httpHeaders"]}
            )
            assert health.status_code == 200, health.text
            # a probe without the header names the pod's address: refused
            assert (
                await client.get("/health", headers={"Host": "10.1.2.3:8080"})
            ).status_code == 400
            metrics = await client.get("/metrics", headers={"Host": target})
            assert metrics.status_code == 200, metrics.text
    samples = [s for family in text_string_to_metric_families(metrics.text) for s in family.samples]
    # every series the triggers select is served, for the queue they name
    for trigger in _triggers():
        for name, labels in re.findall(r"(segue_\w+)\{([^}]*)\}", trigger["metadata"]["query"]):
            wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            assert any(s.name == name and wanted.items() <= s.labels.items() for s in samples), (
                name,
                wanted,
            )
    ready = [
        s.value for s in samples if s.name == "segue_queue_ready" and s.labels["queue"] == queue
    ]
    assert ready == [1.0]
