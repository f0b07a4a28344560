"""The package's import graph: no loops in the core, each floor imports only below it.

Every import counts: at module level, under ``if TYPE_CHECKING:`` and inside
functions (a deferred import is still a dependency). See the "Layers" part of
the style guide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pachinko

PACKAGE = Path(pachinko.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The pachinko modules ``path`` imports, wherever the import statement is."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _core(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Everything but the package's lazy re-exports and the declarative layer."""
    return {
        m: {t for t in targets if t != "pachinko" and not t.startswith("pachinko.config")}
        for m, targets in graph.items()
        if m != "pachinko" and not m.startswith("pachinko.config")
    }


def test_the_core_has_no_import_loops() -> None:
    assert _cycles(_core(import_graph())) == []


def test_the_connection_and_the_wire_encoding_are_leaves() -> None:
    graph = import_graph()
    assert graph["pachinko.connection"] == set()
    assert graph["pachinko._wire"] == set()


def test_connections_do_not_import_dispatch_or_runtime() -> None:
    graph = import_graph()
    above = {"pachinko.resource", "pachinko._serve", "pachinko.app", "pachinko.router"}
    for module in ("pachinko.manager", "pachinko._outbox", "pachinko.connection"):
        assert graph[module] & above == set(), module


def test_the_runtime_imports_neither_config_nor_the_faces() -> None:
    graph = import_graph()
    faces = ("pachinko.config", "pachinko.cli", "pachinko.asyncapi", "pachinko.testing")
    for module in ("pachinko._serve", "pachinko.app", "pachinko.workers", "pachinko.server"):
        assert [t for t in graph[module] if t.startswith(faces)] == [], module


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    # The checks above are only as good as this reader: module level,
    # TYPE_CHECKING and function-level imports, relative and absolute.
    graph = import_graph()
    assert "pachinko.cli" in graph["pachinko.__main__"]  # module level, relative
    assert "pachinko.manager" in graph["pachinko.resource"]  # under TYPE_CHECKING
    assert "pachinko.manager" in graph["pachinko.testing.simulator"]  # in a function
    assert "pachinko.backends.base" in graph["pachinko.backends.redis"]  # from .base


def test_runtime_and_connections_do_not_import_metrics_or_tracing() -> None:
    # They report to an Observer (pachinko.observe, a leaf) and never import
    # what implements it: an app without the extras pays nothing for them.
    graph = import_graph()
    observers = {"pachinko.metrics", "pachinko.tracing", "pachinko.logs"}
    below = (
        "pachinko._serve",
        "pachinko.app",
        "pachinko.workers",
        "pachinko.server",
        "pachinko.manager",
        "pachinko._outbox",
        "pachinko.connection",
        "pachinko.backends.base",
        "pachinko.backends.redis",
        "pachinko.backends.inprocess",
    )
    for module in below:
        assert graph[module] & observers == set(), module
    assert graph["pachinko.observe"] <= {"pachinko.connection"}
