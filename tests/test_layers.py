"""The layers read top-down: every import points to an earlier layer, and no modules import
each other in a circle (README "Layers").

Imports are read from the source (every `import` in a file, including those inside functions and
under `TYPE_CHECKING`), so a circle cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "simulators", "toolspecs", "filters", "pipelines")
MODEL_LAYER = (
    "presets",
    "errors",
    "http",
    "config",
    "toolcall",
    "base",
    "scripted",
    "embedded",
    "engines",
    "openai_backend",
    "engine_server",
    "server_backend",
    "vllm_backend",
    "faults",
    "registry",
)
"""simulators/llm/ top-down: each module imports only modules listed before it."""
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Our modules that `path` imports (`from a import b` counts as a.b when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _rank(module: str) -> tuple[int, int]:
    """(layer, place inside the model layer); a package's `__init__` ranks first in it."""
    package = module.split(".")[0]
    if package == "schemas":
        return 0, 0
    if module == "simulators.llm":
        return 1, -1
    if module.startswith("simulators.llm."):
        return 1, MODEL_LAYER.index(module.split(".")[2])
    if package == "simulators":
        return 2, 0
    if package in ("toolspecs", "filters"):
        return 3, 0
    return 4, 0


def test_every_model_layer_module_has_a_place() -> None:
    modules = {p.stem for p in (ROOT / "simulators" / "llm").glob("*.py")} - {"__init__"}
    assert modules == set(MODEL_LAYER), "place new simulators/llm modules in MODEL_LAYER"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_to_earlier_layers(module: str) -> None:
    """Within the model layer each import points strictly up the list; elsewhere a package may
    import itself and any earlier layer, never a later one or a sibling (toolspecs vs filters)."""
    rank, package = _rank(module), module.split(".")[0]
    wrong = []
    for target in sorted(GRAPH[module]):
        target_rank = _rank(target)
        same_package = target.split(".")[0] == package and rank[0] != 1
        if target_rank < rank or (target_rank[0] == rank[0] and same_package):
            continue
        wrong.append(target)
    assert not wrong, f"{MODULES[module].relative_to(ROOT)} imports a later layer: {wrong}"


def test_beam_only_in_pipelines() -> None:
    users = [
        name
        for name, path in MODULES.items()
        if not name.startswith("pipelines")
        and any(
            (isinstance(n, ast.Import) and any(a.name.startswith("apache_beam") for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("apache_beam"))
            for n in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert not users


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(frozenset(group))
    return found


def test_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]


def test_no_import_circles() -> None:
    circles = [sorted(c) for c in _circles(GRAPH) if c not in KNOWN_CIRCLES]
    assert not circles
