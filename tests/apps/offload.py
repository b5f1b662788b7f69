"""An App whose tasks carry payloads over offload_bytes, for worker subprocesses (the
workers get SEGUE_OFFLOAD_BYTES from the test)."""

from __future__ import annotations

from segue import App

app = App("offload")


@app.task(name="offload.bulk", ttl=60)
async def bulk(n: int) -> str:
    """Return `n` characters: a result stored by reference when over offload_bytes."""
    return "r" * n
