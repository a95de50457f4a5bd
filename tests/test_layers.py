"""The package's import graph: no cycles (lazy imports included) and the engine imports no layer above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"curate": "datamill.curate", "filters": "datamill.filters", "synth": "datamill.synth",
            "train": "datamill.train", "recipes": "datamill.recipes"}


def module_files() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every datamill module `path` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from pkg import module` names a module
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_lazy_import_cycle(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer, may_import", [
    ("datamill.curate.engine", ("datamill.curate.engine", "datamill.recipes")),
    ("datamill.curate.models", ("datamill.curate.engine", "datamill.curate.models")),
])
def test_low_layers_import_nothing_above_them(layer, may_import):
    above = {name: sorted(t for t in targets if not t.startswith(may_import))
             for name, targets in import_graph().items() if name.startswith(layer)}
    assert {name: targets for name, targets in above.items() if targets} == {}


def test_no_executor_imports_another_executor():
    graph = import_graph()
    for name in ("datamill.curate.executors.local", "datamill.curate.executors.ray", "datamill.curate.executors.run"):
        others = {t for t in graph[name] if t.startswith("datamill.curate.executors.")}
        assert others <= {"datamill.curate.executors.run", "datamill.curate.executors.workers"}, name
    assert not graph["datamill.curate.executors.run"] & {"datamill.curate.executors.local",
                                                          "datamill.curate.executors.ray"}


def test_no_private_name_crosses_a_module():
    crossing = []
    modules = module_files()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("datamill"):
                crossing += [f"{name}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert crossing == []


def test_stage_families_import_no_executor_loop_or_cli():
    above = ("datamill.curate.executors", "datamill.curate.loop", "datamill.curate.cli")
    families = ("datamill.curate.sources", "datamill.curate.dedup", "datamill.curate.selection",
                "datamill.curate.report", "datamill.curate.export", "datamill.filters", "datamill.synth",
                "datamill.train")
    reaching_up = {name: sorted(t for t in targets if t.startswith(above))
                   for name, targets in import_graph().items() if name.startswith(families)}
    assert {name: targets for name, targets in reaching_up.items() if targets} == {}
