"""No import cycles: the registry imports nothing from ``exaslide.models``, builders
register into it, the factory sits on top and the checkpoint module on the factory
(timm's ``_registry`` / ``_factory`` shape).

The graph is built statically over ``src/exaslide``: every ``import exaslide.x`` and
``from exaslide.x import y`` statement, at module level or inside a function (a lazy
import is still a dependency), but not under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import exaslide

SRC = Path(exaslide.__file__).resolve().parent
MODELS = "exaslide.models"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Import statements of ``tree``, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _targets(node, here: str, is_package: bool, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            package = here if is_package else here.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}".rstrip(".")
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:  # import a.b.c of a module a.b
            name = name.rpartition(".")[0]
        if name.startswith("exaslide"):
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over every module of ``src/exaslide``."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _targets(node, name, path.name == "__init__.py", modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]], among: str = "") -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), restricted to
    modules whose name starts with ``among``; a package's ``__init__`` importing its own
    submodules is not a cycle unless a submodule imports the package back."""
    nodes = {n for n in graph if n.startswith(among)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v] & nodes):
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_models():
    graph = import_graph()
    assert cycles(graph, MODELS) == []
    assert {MODELS + m for m in (".registry", ".zoo", ".factory", ".checkpoint")} <= set(graph)


def test_registry_imports_nothing_from_models():
    graph = import_graph()
    assert graph[f"{MODELS}.registry"] <= {"exaslide.errors"}
    assert f"{MODELS}.registry" in graph[f"{MODELS}.zoo"]
    assert f"{MODELS}.factory" in graph[f"{MODELS}.checkpoint"]
    assert f"{MODELS}.checkpoint" not in graph[f"{MODELS}.factory"]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph(), "exaslide")
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("name", ["registry", "zoo", "features", "weights", "factory",
                                  "checkpoint", ""])
def test_each_module_imports_alone_without_torch(name):
    """In a fresh interpreter, each module imports on its own and does not import torch
    (torch is imported when a model is built)."""
    module = f"{MODELS}.{name}".rstrip(".")
    code = (f"import sys, {module}; import exaslide.models as m; "
            "assert 'small-cnn' in m.available_models(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
