"""Imports run one way through the house (front ends -> pipeline -> steps -> ground): no module of
ragqa may reach, through any chain of imports, back to itself. Lazy imports inside functions count
(they are cycles waiting for the first call); ``if TYPE_CHECKING:`` imports do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ragqa

PACKAGE = Path(ragqa.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The ragqa modules ``path`` imports anywhere in its code, TYPE_CHECKING blocks left out.

    ``from ragqa.store import base`` counts as importing ragqa.store.base; ``from ragqa.store import
    open_kb`` as importing ragqa.store. A relative import is resolved against the module's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
                elif alias.name.startswith("ragqa."):  # import ragqa.a.b -> the deepest module that exists
                    name = alias.name
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    if name:
                        found.add(name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base in modules:
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(here)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imported_modules(path, modules) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_lazy_imports() -> None:
    """The walker itself: a lazy import inside a function is an edge, a TYPE_CHECKING one is not."""
    graph = import_graph()
    assert "ragqa.pipeline" in graph["ragqa.cli"]  # cli imports the pipeline inside its commands
    assert "ragqa.config" not in graph["ragqa.store"]  # store/__init__ names Settings for type checking only


def test_cycles_are_found(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_ragqa() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (each list is one strongly connected set of modules): " + "; ".join(
        " <-> ".join(c) for c in found)


# what each layer may import: a module of a layer imports only its own layer's modules or lower ones
LAYERS = [
    ("front ends", {"ragqa.cli", "ragqa.web", "ragqa.api", "ragqa.vectorstores", "ragqa.__main__"}),
    ("pipeline", {"ragqa.pipeline", "ragqa.evaluation", "ragqa.watch"}),
]


def test_front_ends_are_above_the_pipeline() -> None:
    """No step or ground module imports a front end or the pipeline (imports run downward)."""
    graph = import_graph()
    upper = {m for _, names in LAYERS for m in names}
    upper |= {m for m in graph if any(m.startswith(n + ".") for n in upper)}
    wrong = {m: sorted(graph[m] & upper) for m in graph if m not in upper and m != "ragqa" and graph[m] & upper}
    assert wrong == {}, f"steps or ground importing upward: {wrong}"
