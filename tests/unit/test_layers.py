"""The package's imports form layers with no cycle (docs/architecture.md).

Every import counts: at module level, inside a function, and under TYPE_CHECKING (a cycle
there still ties the modules together for whoever reads or changes them). Imports point
from surfaces to runtime to storage to base, never back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import segue

ROOT = Path(segue.__file__).parent

# Each module (or package) of segue in its layer; a new module must be placed here.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": (
        *("_errors", "_keys", "_codec", "_settings", "_options", "_state", "_clock"),
        *("_faults", "_logging", "_versions", "_lifespan", "_cancel", "_wire", "_services"),
        "_outcome",
        "_redact",
        "_eventloop",
        "_blobs",
        "_shards",
    ),
    "storage": (
        *(
            "_scripts",
            "_fastconn",
            "_clusterconn",
            "_sentinel",
            "_tls",
            "_broker",
            "_pubsub",
            "_durability",
        ),
        *("_lease", "_embedded", "_client", "_calls", "_transport", "_queries"),
        *("_ops_reads", "_ops_actions", "_offload", "_shardmap"),
    ),
    "runtime": (
        *(
            "_info",
            "_handle",
            "_events",
            "_queue",
            "_run_control",
            "_context",
            "_sync_context",
            "_task",
            "_hooks",
            "_cron",
            "_registry",
        ),
        *("_workflow", "_enqueue", "_runner", "_scheduler", "_reconcile", "_forward"),
        *("_heartbeat", "_connect", "_worker", "_control", "_waker", "_schedule_handle", "_app"),
        *("_journal", "_query", "_migrate", "_output", "_signals", "_send", "_procpool"),
        "_offload_runs",
        "_shard_worker",
        "_finish_batch",
    ),
    "surface": (
        *("__init__", "__main__", "_cli", "_cli_common", "_cli_inspect", "_cli_ops", "_demo"),
        *("_demo_durable", "_demo_flows"),
        *("_reload", "_supervisor"),
        *("dashboard", "metrics", "testing", "_display", "web"),
    ),
}
ORDER = list(LAYERS)

# Imports that point up or close a cycle today, each with why it is left. Empty is the goal.
KNOWN: dict[tuple[str, str], str] = {
    # Settings checks a sentinel URL when built; the parser lives with the sentinel clients
    ("_settings", "_sentinel"): "URL check at Settings time",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def _short(target: str) -> str:
    return target.removeprefix("segue").removeprefix(".") or "__init__"


def _imports() -> dict[str, set[str]]:
    """Each module's imports of other segue modules, by their name under segue."""
    names = {_module_name(p) for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".") if package and package != "__init__" else []
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(["segue", *base, *([module] if module else [])])
                # `from segue import _broker` imports the module _broker, not segue's face
                targets = [
                    f"{module}.{a.name}" if _short(f"{module}.{a.name}") in names else module
                    for a in node.names
                ]
            for target in targets:
                if target != "segue" and not target.startswith("segue."):
                    continue
                short = _short(target)
                while short and short not in names:
                    short = short.rpartition(".")[0]
                if short and short != name:
                    found.add(short)
        graph[name] = found
    return graph


def _layer(module: str) -> str:
    head = module.split(".")[0]
    for layer, members in LAYERS.items():
        if head in members:
            return layer
    raise AssertionError(f"module segue.{module} is in no layer: add it to LAYERS in {__file__}")


def _key(a: str, b: str) -> tuple[str, str]:
    return a.split(".")[0], b.split(".")[0]


def test_every_module_has_a_layer_and_no_import_points_up() -> None:
    up = []
    for module, targets in sorted(_imports().items()):
        for target in sorted(targets):
            above = ORDER.index(_layer(target)) > ORDER.index(_layer(module))
            if above and _key(module, target) not in KNOWN:
                up.append(f"{module} ({_layer(module)}) -> {target} ({_layer(target)})")
    assert up == [], "imports that point up a layer:\n" + "\n".join(up)


def test_no_import_cycle() -> None:
    graph = {m: {t for t in ts if _key(m, t) not in KNOWN} for m, ts in _imports().items()}
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_every_kind_of_import() -> None:
    # the three ways a cycle hides: a local import, one under TYPE_CHECKING, a relative one
    graph = _imports()
    assert "_cli_inspect" in graph["_cli"]  # imported inside main()
    assert "_broker" in graph["_client"]
    assert "_handle" in graph["_task"]  # under TYPE_CHECKING only
    assert "dashboard._views" in graph["dashboard._app"] or "dashboard" in graph["dashboard._app"]
