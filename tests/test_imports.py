"""The import graph of ``src/geofm``: no circle, and arrows that point one way (cli -> tasks/infer -> models, data).

The graph is read from the source with :mod:`ast`, so imports inside functions (the lazy ones that keep
``geofm --help`` fast) count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import geofm

SRC = Path(geofm.__file__).resolve().parent


def modules(root: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is_package) of every module under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the geofm modules it imports (anywhere in its body; ``from . import x`` resolved)."""
    mods = modules(root)

    def known(name: str) -> str | None:  # the module itself, or the package holding the imported name
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
            else:
                continue
            deps |= {m for t in targets if t.split(".")[0] == root.name and (m := known(t))}
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "geofm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from geofm.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom .c import g\n")
    (pkg / "sub" / "c.py").write_text("import os\n")
    graph = import_graph(pkg)
    assert graph["geofm.a"] == {"geofm.sub.b"}
    assert graph["geofm.sub"] == {"geofm.sub.b"}
    assert graph["geofm.sub.b"] == {"geofm.a", "geofm.sub.c"}
    assert find_cycle(graph) == ["geofm.a", "geofm.sub.b", "geofm.a"]
    assert find_cycle({k: v - {"geofm.a"} for k, v in graph.items()}) is None


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50 and "geofm.models.vit" in graph["geofm.models.mae"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_arrows_point_one_way():
    """models and data import no task, inference or command code; models never import data; tasks and
    infer do not import each other (a command module ``*_cli`` may import another command's options)."""
    forbidden = {"models": ("data", "tasks", "infer", "cli", "demo"), "data": ("models", "tasks", "infer", "cli", "demo"),
                 "tasks": ("infer", "cli", "demo"), "infer": ("tasks", "cli", "demo")}
    wrong = []
    for name, deps in import_graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in forbidden:
            continue
        for dep in deps:
            if dep.split(".")[1] in forbidden[parts[1]]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))
