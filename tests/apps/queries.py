"""An App whose task answers queries while it runs, for worker subprocesses.

`queries.crawl` registers a "progress" query, then goes through `pages` pages, one each
`pause` seconds, so a test finds it RUNNING for as long as it needs.
"""

from __future__ import annotations

import asyncio

from segue import App, Context

app = App("queries")


@app.task(name="queries.crawl")
async def crawl(ctx: Context, pages: int, pause: float) -> int:
    page = 0
    ctx.on_query("progress", lambda: {"page": page, "of": pages})
    while page < pages:
        await asyncio.sleep(pause)
        page += 1
    return page
