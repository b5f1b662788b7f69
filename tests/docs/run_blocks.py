"""Run the Python blocks of one Markdown page in order, as a reader pasting them into one
asyncio REPL would, with a worker for every queue of every App they define.

    python tests/docs/run_blocks.py PAGE.md

Top-level `await` is allowed (the docs' fragments use it), `asyncio.run(main())` runs
`main()` on the loop that already runs, and a block whose first line is `# path.py` is also
written to that file of the current directory, so a later block can import it. Prints one
line per failed block and exits 1 if any failed.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
FILE = re.compile(r"# ([\w/]+\.py)\b.*")
BLOCK_SECONDS = 60.0


class RunOnThisLoop(ast.NodeTransformer):
    """`asyncio.run(x)` as a statement becomes `await x`: the loop is already running."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr:
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "run"
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "asyncio"
            and call.args
        ):
            return ast.copy_location(ast.Expr(ast.Await(call.args[0])), node)
        return node


def write_example_file(block: str) -> str:
    """Write a block that names its file (`# shop.py`) there; its first line."""
    first = block.split("\n", 1)[0]
    if match := FILE.fullmatch(first):
        path = Path(match.group(1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
    return first


async def run_page(name: str, blocks: list[str]) -> int:
    from segue import App

    namespace: dict[str, Any] = {"__name__": "__main__"}
    workers: dict[tuple[int, str], tuple[Any, asyncio.Task[Any]]] = {}

    served = os.environ.get("SEGUE_REDIS_URL")

    def serve_every_queue() -> None:
        for value in list(namespace.values()) + [
            getattr(m, "app", None) for m in list(sys.modules.values())
        ]:
            # an App of another server, or one asking an fsync or replicas of it (the test
            # server has neither), is an example of configuration, not one to serve
            if not isinstance(value, App) or value.settings.redis_url != served:
                continue
            if value.settings.durability != "memory":
                continue
            queues = {t.queue for t in value.registry.values()} | {value.settings.queue}
            for queue in queues:
                if (id(value), queue) not in workers:
                    worker = value.worker(queues=[queue])
                    workers[id(value), queue] = (worker, asyncio.create_task(worker.run()))

    failed = 0
    loop = asyncio.get_running_loop()
    for n, block in enumerate(blocks, 1):
        first = write_example_file(block)
        try:
            tree = RunOnThisLoop().visit(ast.parse(block))
            ast.fix_missing_locations(tree)
            code = compile(tree, f"{name}, block {n}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                body = asyncio.ensure_future(result)
                deadline = loop.time() + BLOCK_SECONDS
                while not body.done():  # the Apps the block defines get their workers at once
                    serve_every_queue()
                    await asyncio.wait({body}, timeout=0.05)
                    if loop.time() > deadline:
                        body.cancel()
                        raise TimeoutError(f"still running after {BLOCK_SECONDS} s")
                body.result()
            serve_every_queue()
        except Exception as exc:
            failed += 1
            print(f"{name}, block {n} ({first!r}): {type(exc).__name__}: {exc}")
    for worker, _ in workers.values():
        worker.stop()
    for _, task in workers.values():
        try:
            await asyncio.wait_for(task, 15)
        except Exception as exc:
            failed += 1
            print(f"{name}: a worker did not stop cleanly: {type(exc).__name__}: {exc}")
    return failed


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    page = Path(sys.argv[1])
    sys.exit(1 if asyncio.run(run_page(page.name, BLOCK.findall(page.read_text()))) else 0)
