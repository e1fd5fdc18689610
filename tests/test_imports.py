"""The import graph of src/lowbit: no cycles, and every import points to the module's own layer or below.

The graph is built with ``ast`` from the source, without importing anything. Module-level imports and imports
inside functions both count; imports under ``if TYPE_CHECKING:`` do not. A package's ``__init__.py`` is a module
of its own (``lowbit.calibration``); ``from pkg import name`` where ``pkg.name`` is a module is an edge to that
module, otherwise to ``pkg``. Importing ``a.b.c`` is an edge to ``a.b.c`` only (not to the parents that Python
also initialises), so a package ``__init__`` that re-exports its submodules is not, by that alone, a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Layer of each module or package (the longest matching dotted prefix wins). A module may import modules of its
# own layer or below. The same table is in ARCHITECTURE.md; a new top-level module needs a row here.
LAYERS: dict[str, int] = {
    "lowbit._version": 0, "lowbit.errors": 0, "lowbit.utils": 0, "lowbit.qtypes": 0, "lowbit.config": 0,
    "lowbit.data": 0,
    "lowbit.formats": 1, "lowbit.archs": 1,
    "lowbit.kernels": 2,
    "lowbit.nn": 3,
    "lowbit.quantizer": 4, "lowbit.registry": 4, "lowbit.calibration": 4,  # the package __init__ and the
    "lowbit.calibration.method": 4, "lowbit.calibration.balance": 4,       # block-by-block building blocks
    "lowbit.calibration.inputs": 4, "lowbit.calibration.data": 4,
    "lowbit.training": 4, "lowbit.training.lora": 4, "lowbit.training.trainable": 4,  # merge: above loading
    "lowbit.methods": 5, "lowbit.foreign": 5,
    "lowbit.loading": 6,
    "lowbit.calibration.runner": 7, "lowbit.eval": 7, "lowbit.training.merge": 7, "lowbit.fitting": 7,
    "lowbit.api": 8, "lowbit.exports": 8, "lowbit.cli": 8, "lowbit.commands": 8, "lowbit.demo": 8, "lowbit.realmodels": 8, "lowbit.hf": 8, "lowbit": 8,
    "lowbit.textgen": 8, "lowbit.generation": 8, "lowbit.decode_cpu": 8, "lowbit.stepping": 8,
    "lowbit.__main__": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "lowbit").rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:`` (their ``else:`` still counts)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports_of(child)
            continue
        yield from _imports_of(node)


def _imports_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    yield from _imports(node)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: set[str]) -> list[tuple[str, str]]:
    """(imported module, imported name or "") pairs of one import statement, restricted to lowbit's modules."""
    if isinstance(node, ast.Import):
        return [(alias.name, "") for alias in node.names if alias.name in known]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join([*package, *([base] if base else [])])
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            out.append((sub, ""))
        elif base in known:
            out.append((base, alias.name))
    return out


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module → modules it imports, [(importer, module, name)] for each ``from m import _name`` across packages)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[tuple[str, str, str]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _imports(tree):
            for target, imported in _targets(node, name, path.name == "__init__.py", known):
                if target != name:
                    graph[name].add(target)
                if imported.startswith("_") and not imported.startswith("__") and _package(target) != _package(name):
                    private.append((name, target, imported))
    return graph, private


def _package(module: str) -> str:
    """The first-level package (or module) a module belongs to: lowbit.loading.convert → lowbit.loading."""
    return ".".join(module.split(".")[:2])


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(one cycle, all its modules) for each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_in(graph, set(c)), c) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest cycle through the component's first module, as [a, b, ..., a]."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()[0]


def test_graph_sees_the_package(graph):
    """The builder finds the modules and the edges it should (a guard against a graph that is empty by mistake)."""
    assert {"lowbit", "lowbit.api", "lowbit.calibration", "lowbit.calibration.runner", "lowbit.cli"} <= set(graph)
    assert "lowbit.errors" in graph["lowbit.cli"]
    assert "lowbit.registry" in graph["lowbit"] and "lowbit.loading.pipeline" in graph["lowbit.api"]


def test_no_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        f"  {' -> '.join(c)}  (modules on a cycle with it: {', '.join(sorted(members))})" for c, members in cycles)


def test_every_module_has_a_layer(graph):
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, f"modules without a layer: {missing}; add them to LAYERS in {Path(__file__).name}"


def test_imports_point_down(graph):
    upward = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                    for m, targets in graph.items() for t in targets
                    if None not in (layer_of(m), layer_of(t)) and layer_of(t) > layer_of(m))
    assert not upward, "imports pointing up:\n" + "\n".join("  " + line for line in upward)


def test_no_private_names_across_packages():
    private = sorted(import_graph()[1])
    assert not private, "private names imported from another package:\n" + "\n".join(
        f"  {m} imports {name} from {t}" for m, t, name in private)


def test_cycle_finder_on_a_known_graph():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(g) == [(["a", "b", "c", "a"], ["a", "b", "c"])]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_and_lazy_imports():
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    import lowbit.api\n"
                     "def f():\n    import lowbit.cli\n")
    names = [a.name for node in _imports(tree) if isinstance(node, ast.Import) for a in node.names]
    assert names == ["lowbit.cli"]
