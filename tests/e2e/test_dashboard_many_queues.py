"""The dashboard reads a server with many queues (more than redis-py's pool of 100
connections could read at once, three reads per queue)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from segue import App
from tests.e2e.conftest import dashboard


async def test_metrics_cover_a_server_with_many_queues(
    make_dash_app: Callable[..., App], queue_name: str
) -> None:
    app = make_dash_app()
    names = [f"{queue_name}_{i}" for i in range(60)]
    async with app, dashboard(app, sign_in=False) as client:
        broker = await app._client.broker()
        for name in names:
            await broker.register_queue(name)
        response = await client.get("/metrics")
        samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
        assert [s.value for s in samples if s.name == "segue_up"] == [1.0]
        shown = {s.labels["queue"] for s in samples if s.name == "segue_queue_paused"}
        assert set(names) <= shown
