"""The task page of a task whose arguments and result were offloaded (Settings.offload_bytes)
shows each as its size with a download link, and the link gives the stored JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

from segue import App
from tests.e2e.conftest import dashboard

MiB = 1024 * 1024


async def test_an_offloaded_value_is_shown_as_its_size_with_a_download_link(
    make_dash_app: Callable[..., App],
) -> None:
    app = make_dash_app(offload_bytes=256 * 1024)

    @app.task(name="dash.big")
    async def big(text: str) -> str:
        return text.upper()

    async with app:
        handle = await big.enqueue("q" * MiB)
        await app.drain()
        async with dashboard(app) as client:
            page = await client.get(f"/tasks/{handle.id}")
            assert page.status_code == 200
            html = page.text
            assert "Offloaded, 1.0 MiB" in html
            assert f"/download/args/{handle.id}" in html
            assert f"/download/result/{handle.id}" in html
            assert "q" * 1000 not in html  # not inline
            got = await client.get(f"/download/result/{handle.id}")
            assert got.status_code == 200
            assert "attachment" in got.headers["content-disposition"]
            assert json.loads(got.content) == "Q" * MiB
            args = await client.get(f"/download/args/{handle.id}")
            assert json.loads(args.content) == [["q" * MiB], {}]
            assert (await client.get(f"/download/state/{handle.id}")).status_code == 404
        async with dashboard(app, sign_in=False) as anonymous:
            refused = await anonymous.get(f"/download/result/{handle.id}")
            assert refused.status_code in (303, 401, 403)
