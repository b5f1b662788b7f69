"""Prometheus metrics and OpenTelemetry spans for segue, as hooks (see `segue.Hook`).

    from segue.metrics import PrometheusHook, TracingHook
    app.add_hook(PrometheusHook())        # counters and a run-time histogram per task name
    app.add_hook(TracingHook())           # a span around each enqueue and each run

`segue worker APP --metrics-port 9100` adds the Prometheus hook and serves `/metrics` from
the worker process. The tracing hook needs `opentelemetry-api` (and an SDK configured by
the application to export the spans anywhere).
"""

from __future__ import annotations

import contextvars
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from segue._hooks import Hook

if TYPE_CHECKING:
    from segue._context import Context
    from segue._handle import TaskHandle
    from segue._hooks import RunResult
    from segue._task import Signature

__all__ = ["PrometheusHook", "TracingHook", "serve_metrics"]

_started: contextvars.ContextVar[float] = contextvars.ContextVar("segue_run_started")


class PrometheusHook(Hook):
    """Counts enqueues, starts and ends of runs (by task name, queue, and how they ended),
    records run durations, and counts the reconciler's repairs (by queue and kind) and the
    rollbacks it detected (by queue), in its own registry (or the one given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.enqueued = Counter(
            "segue_tasks_enqueued", "Tasks enqueued", ["task", "queue"], registry=self.registry
        )
        self.started = Counter(
            "segue_runs_started",
            "Runs started by this worker",
            ["task", "queue"],
            registry=self.registry,
        )
        self.ended = Counter(
            "segue_runs_ended",
            "Runs ended, by how they ended (succeeded, failed, retrying, paused, ...)",
            ["task", "queue", "end"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "segue_run_seconds", "Run durations", ["task", "queue"], registry=self.registry
        )
        self.repairs = Counter(
            "segue_reconcile_repairs",
            "Disagreements between task records and queue structures this worker repaired",
            ["queue", "kind"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "segue_rollbacks_detected",
            "Times this worker found a queue's data gone back in time",
            ["queue"],
            registry=self.registry,
        )

    async def after_enqueue(self, signature: Signature[Any], handle: TaskHandle[Any]) -> None:
        self.enqueued.labels(signature.task.name, handle.queue).inc()

    async def before_run(self, ctx: Context) -> None:
        _started.set(time.perf_counter())
        self.started.labels(ctx.name, ctx.queue).inc()

    async def after_run(self, ctx: Context, result: RunResult) -> None:
        self.ended.labels(ctx.name, ctx.queue, result.end).inc()
        began = _started.get(None)
        if began is not None:
            self.duration.labels(ctx.name, ctx.queue).observe(time.perf_counter() - began)

    async def on_repair(self, queue: str, kind: str, task_id: str) -> None:
        self.repairs.labels(queue, kind).inc()

    async def on_rollback(self, queue: str) -> None:
        self.rollbacks.labels(queue).inc()


def serve_metrics(hook: PrometheusHook, port: int, host: str = "127.0.0.1") -> None:
    """Serve the hook's registry at http://host:port/metrics (a daemon thread)."""
    start_http_server(port, addr=host, registry=hook.registry)


_span: contextvars.ContextVar[Any] = contextvars.ContextVar("segue_run_span")


class TracingHook(Hook):
    """An OpenTelemetry span around each enqueue (`segue.enqueue <task>`, a child of the
    caller's current span) and each run (`segue.run <task>`, a child of that enqueue span,
    in whatever process runs it: the trace context travels in the task's headers), with
    the task id, queue and try as attributes; a failed run records its exception and an
    error status."""

    def __init__(self, tracer: Any = None) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagate = propagate
        self._tracer = tracer or trace.get_tracer("segue")
        self._enqueues: dict[int, Any] = {}

    async def before_enqueue(self, signature: Signature[Any]) -> None:
        span = self._tracer.start_span(f"segue.enqueue {signature.task.name}")
        self._enqueues[id(signature)] = span
        self._propagate.inject(signature.headers, context=self._trace.set_span_in_context(span))

    async def after_enqueue(self, signature: Signature[Any], handle: TaskHandle[Any]) -> None:
        span = self._enqueues.pop(id(signature), None)
        if span is not None:
            span.set_attribute("segue.task_id", handle.id)
            span.set_attribute("segue.queue", handle.queue)
            span.end()

    async def before_run(self, ctx: Context) -> None:
        parent = self._propagate.extract(ctx.headers)
        span = self._tracer.start_span(f"segue.run {ctx.name}", context=parent)
        span.set_attribute("segue.task_id", ctx.task_id)
        span.set_attribute("segue.queue", ctx.queue)
        span.set_attribute("segue.try", ctx.tries)
        _span.set(span)

    async def after_run(self, ctx: Context, result: RunResult) -> None:
        span = _span.get(None)
        if span is None:
            return
        span.set_attribute("segue.end", result.end)
        if result.error is not None and result.end in ("failed", "retrying"):
            span.record_exception(result.error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(result.error)))
        span.end()
