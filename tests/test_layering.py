"""The import graph of the tree: no cycle between modules and no arrow pointing up the layers.

Layers, lowest first: ``pruning`` (torch only), ``scoring`` (pure Python), ``visualizers``, the
model runtime (``app.runtime`` with the stdlib-only ``app.preflight``), ``scenes``, the rest of
``app`` (the page, the analysis CLI, calibration), then ``benchmarks``. A module may import from its
own layer or any layer below. Imports inside functions count: hiding one there does not undo a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pruning", "scoring", "visualizers", "scenes", "app", "benchmarks")
LAYERS = (
    ("pruning",),
    ("scoring",),
    ("visualizers",),
    ("app.preflight", "app.runtime"),
    ("scenes",),
    ("app",),
    ("benchmarks",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[module_name(path)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            # ``from pkg import mod`` imports pkg's __init__ too, but only names defined there count
            # as an arrow to it; submodules are arrows to themselves
            targets = submodules + ([base] if len(submodules) < len(node.names) else [])
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    assert best is not None, f"{name} is in no layer"
    return best


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{a} -> {b}"
        for a, targets in graph().items()
        for b in targets
        if layer(b) > layer(a) and not (b == "app" and a.startswith("app."))  # a package's own __init__
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_app_module_is_over_500_lines():
    long = {
        name: n
        for name, path in modules().items()
        if name.startswith("app")
        for n in [len(path.read_text().splitlines())]
        if n > 500
    }
    assert long == {}


def test_pruning_imports_only_torch_and_the_standard_library():
    """``pruning`` is usable wherever torch is: no third-party package but torch, anywhere in its body."""
    for name, path in modules().items():
        if not name.startswith("pruning"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root == "torch" or root in sys.stdlib_module_names, f"{name} imports {root}"
