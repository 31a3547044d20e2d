"""
The import graph of conchshare has no circles: each module imports only
modules below it (ARCHITECTURE.rst, "Layers").

Imports are read from the source with L{ast}, not by importing: an import
at module level and one inside a function both count (a function-level
import is still a dependency, only a later one).  Imports under
C{if TYPE_CHECKING:} do not count: they are never executed.  An import of
C{a.b.c} is an edge to C{a.b.c} alone, not to its parent packages (that
Python runs a package's C{__init__} first is not a dependency between the
modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import conchshare

PACKAGE = Path(conchshare.__file__).parent


def moduleName(path: Path, root: Path) -> str:
    """
    The dotted name of the module file C{path} of the package at C{root}.
    """
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _isTypeChecking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, name: str, isPackage: bool, modules: set[str]) -> set[str]:
    """
    The conchshare modules that the module C{name} imports, wherever in it
    (outside C{if TYPE_CHECKING:} blocks).
    """
    found: set[str] = set()
    package = name if isPackage else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _isTypeChecking(node.test):
            for statement in node.orelse:
                visit(statement)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # "from a import b" imports the module a.b if there is one.
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def importGraph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """
    Every conchshare module and the conchshare modules it imports.
    """
    files = {moduleName(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    return {
        name: _imports(
            ast.parse(path.read_text(encoding="utf-8"), str(path)),
            name,
            path.name == "__init__.py",
            modules,
        )
        for name, path in files.items()
    }


def findCircles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The circles of C{graph}: one per strongly connected component of more
    than one module (or a module importing itself), as a path that starts
    and ends at its smallest name.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    components: list[set[str]] = []

    def strongConnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                strongConnect(target)
                low[node] = min(low[node], low[target])
            elif target in onStack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongConnect(node)

    circles = []
    for component in components:
        start = min(component)
        # A shortest way back to the start, inside the component.
        paths = {start: [start]}
        frontier = [start]
        circle: list[str] | None = None
        while frontier and circle is None:
            nextFrontier = []
            for node in frontier:
                for target in sorted(graph[node] & component):
                    if target == start:
                        circle = paths[node] + [start]
                        break
                    if target not in paths:
                        paths[target] = paths[node] + [target]
                        nextFrontier.append(target)
                if circle is not None:
                    break
            frontier = nextFrontier
        circles.append(circle or sorted(component))
    return sorted(circles)


class ImportGraphTests(SynchronousTestCase):
    """
    Tests for L{importGraph} and L{findCircles}, and the package's graph.
    """

    def test_noCircles(self) -> None:
        """
        No conchshare module imports, directly or through others, a module
        that imports it back.
        """
        circles = findCircles(importGraph())
        self.assertEqual([" -> ".join(c) for c in circles], [])

    def test_findsCircles(self) -> None:
        """
        L{findCircles} reports a circle of two, a longer one and a module
        importing itself; an acyclic graph has none.
        """
        graph = {
            "a": {"b"},
            "b": {"a"},
            "c": {"d"},
            "d": {"e"},
            "e": {"c", "f"},
            "f": set(),
            "g": {"g"},
        }
        self.assertEqual(findCircles(graph), [["a", "b", "a"], ["c", "d", "e", "c"], ["g", "g"]])
        self.assertEqual(findCircles({"a": {"b"}, "b": {"c"}, "c": set()}), [])

    def test_functionLevelImportsCount(self) -> None:
        """
        An import inside a function is an edge; one under
        C{if TYPE_CHECKING:} is not; relative and C{from package import
        module} forms name the module.
        """
        root = Path(self.mktemp())
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "__init__.py").write_text("")
        (root / "pkg" / "a.py").write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg import c\n"
            "def f():\n    from pkg.b import x\n"
        )
        (root / "pkg" / "b.py").write_text("from . import a\nx = 1\n")
        (root / "pkg" / "c.py").write_text("import pkg.a\n")
        graph = importGraph(root / "pkg")
        self.assertEqual(
            graph, {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
        )
        self.assertEqual(findCircles(graph), [["pkg.a", "pkg.b", "pkg.a"]])
