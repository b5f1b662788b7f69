"""Prometheus metrics and OpenTelemetry spans through the hook interface; a worker
process serving /metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from segue import App
from segue.metrics import PrometheusHook, TracingHook
from tests._support import free_port
from tests._workers import Fleet
from tests.integration.conftest import eventually


async def test_the_prometheus_hook_counts_runs_by_how_they_ended(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    hook = PrometheusHook()
    app.add_hook(hook)

    @app.task(name="m.ok")
    async def ok() -> int:
        return 1

    @app.task(name="m.bad", max_tries=2, retry_backoff=lambda tries: 0.0)
    async def bad() -> None:
        raise ValueError("no")

    async with app:
        for _ in range(3):
            await ok.enqueue()
        await bad.enqueue()
        await app.drain(horizon=1.0)

    def value(name: str, **labels: str) -> float:
        labels["queue"] = app.settings.queue
        got = hook.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert value("segue_tasks_enqueued_total", task="m.ok") == 3
    assert value("segue_runs_started_total", task="m.ok") == 3
    assert value("segue_runs_ended_total", task="m.ok", end="succeeded") == 3
    assert value("segue_runs_ended_total", task="m.bad", end="retrying") == 1
    assert value("segue_runs_ended_total", task="m.bad", end="failed") == 1
    assert value("segue_run_seconds_count", task="m.ok") == 3


async def test_the_tracing_hook_makes_a_span_per_enqueue_and_run(
    make_app: Callable[..., App],
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app()
    app.add_hook(TracingHook(provider.get_tracer("test")))

    @app.task(name="t.fails", max_tries=1)
    async def fails() -> None:
        raise RuntimeError("broken")

    tracer = provider.get_tracer("caller")
    async with app:
        with tracer.start_as_current_span("http request") as request:
            h = await fails.enqueue()
        await app.drain()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"http request", "segue.enqueue t.fails", "segue.run t.fails"}
    run = spans["segue.run t.fails"]
    enqueue = spans["segue.enqueue t.fails"]
    # one trace from the caller's request through the enqueue to the run in the worker
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values() if s.context} == {trace_id}
    assert (
        enqueue.parent is not None and enqueue.parent.span_id == request.get_span_context().span_id
    )
    assert run.parent is not None and enqueue.context is not None
    assert run.parent.span_id == enqueue.context.span_id
    assert run.attributes is not None
    assert run.attributes["segue.task_id"] == h.id
    assert run.attributes["segue.end"] == "failed"
    assert not run.status.is_ok
    assert [e.name for e in run.events] == ["exception"]


def _scrape(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            body: bytes = reply.read()
            return body
    except OSError:
        return b""


@pytest.mark.slow
async def test_a_worker_process_serves_its_metrics(segue_valkey: Any, queue_name: str) -> None:
    port = free_port()
    app = "tests.apps.procs:app"
    # the App's own lease, poll and grace: only the metrics port is the test's
    with Fleet(app, segue_valkey.url, queue_name, lease=None, poll=None, grace=None) as workers:
        workers.start(args=["--metrics-port", str(port)])

        async def served() -> bool:
            body = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
            return b"segue_runs_started" in body

        await eventually(served, timeout=15)
        workers.terminate_all(timeout=20)
