"""The package's shape, read from its source with ``ast``: no import cycles, no huge functions.

Nothing here imports the package's modules, so a cycle is found even where the import order
happens to make it work today.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "aevb"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: not inside functions, not under TYPE_CHECKING.

    Class bodies and top-level ``if``/``try``/``with`` blocks run at import time, so they count.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import | ast.ImportFrom):
                found.append(s)
            elif isinstance(s, ast.If):
                if not _is_type_checking(s.test):
                    visit(s.body)
                visit(s.orelse)
            elif isinstance(s, ast.Try | ast.TryStar):
                for block in (s.body, s.orelse, s.finalbody, *(h.body for h in s.handlers)):
                    visit(block)
            elif isinstance(s, ast.With | ast.AsyncWith | ast.For | ast.While):
                visit(s.body)
                visit(getattr(s, "orelse", []))
            elif isinstance(s, ast.ClassDef):
                visit(s.body)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at module level.

    ``from X import name`` points at ``X.name`` where that is a module, else at ``X``. Implicit
    imports of parent packages are left out (importing ``aevb.data.base`` also runs
    ``aevb/data/__init__.py``, but every module runs inside its own package's import anyway).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = here[: len(here) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                targets = []
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                # ``import aevb.x.y`` or a name inside a module: the deepest module it names
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected
    component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for comp in components:
        members = set(comp)
        # the shortest way back to the component's first module, by breadth-first search
        start = comp[0]
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while True:
            path.append(prev[path[-1]])
            if path[-1] == start:
                break
        cycles.append(path[::-1])
    return cycles


def test_the_import_graph_is_read():
    """The graph is not vacuous: known edges are there, imports inside functions are not."""
    graph = import_graph()
    assert {"aevb.latent", "aevb.families"} <= graph["aevb.distributions"]  # from .x import y
    assert "aevb.hmc" in graph["aevb.marginal"]  # from . import hmc: the module, not the package
    assert "aevb.errors" in graph["aevb.data.download"]  # from ..errors import ...
    assert "aevb.conv" not in graph["aevb.model"]  # imported inside a method only
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles at module level:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method longer than ``limit`` lines
    (from ``def`` to its last line; decorators not counted)."""
    out = []
    for path in _modules().values():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    rel = path.relative_to(SRC.parent).as_posix()
                    out.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return sorted(out)


def test_no_function_is_over_80_lines():
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)
