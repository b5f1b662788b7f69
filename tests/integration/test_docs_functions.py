"""The complete example of docs/functions.md runs as written, against a real server."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[2] / "docs" / "functions.md"


def example() -> str:
    text = DOC.read_text()
    section = text.split("## A complete example", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


async def test_the_order_example_runs_as_written(segue_engine: Any, queue_name: str) -> None:
    module = types.ModuleType("docs_functions_example")
    sys.modules[module.__name__] = module  # annotations resolve against its globals
    try:
        exec(compile(example(), str(DOC), "exec"), module.__dict__)
        app = module.__dict__["app"]
        app.settings = app.settings.replace(
            redis_url=segue_engine.url, queue=queue_name, poll_seconds=0.1
        )
        await module.__dict__["test_the_order_reminds_after_three_days"]()
        local = await module.__dict__["place_order"].run("o-2", 0)
        assert local == "not charged: ValueError: nothing to charge"
    finally:
        del sys.modules[module.__name__]
