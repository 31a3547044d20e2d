"""
The layout of the tests (ARCHITECTURE.rst, "Tests"): every test module is a
unit test (C{tests/unit}) or an end-to-end test (C{tests/e2e}), so that
C{python -m twisted.trial tests.unit} is the whole fast subset, and what
test modules share lives in C{tests/support}, never in another test module.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.support import CHECKOUT

TESTS = os.path.join(CHECKOUT, "tests")


def testModules() -> dict[str, str]:
    """
    Every C{test_*.py} below C{tests/}: its dotted module name and path.
    """
    found = {}
    for folder, dirnames, filenames in os.walk(TESTS):
        dirnames[:] = [d for d in dirnames if not d.startswith(("_", "."))]
        for name in filenames:
            if name.startswith("test_") and name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, CHECKOUT)[: -len(".py")]
                found[relative.replace(os.sep, ".")] = path
    return found


def importedModules(path: str) -> set[str]:
    """
    The modules that the file at C{path} imports (at any depth in it).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


class LayoutTests(SynchronousTestCase):
    def test_everyTestModuleIsUnitOrEndToEnd(self) -> None:
        """
        Test modules live in C{tests/unit} or C{tests/e2e}, nowhere else: a
        module left in C{tests/} would run in neither pass of
        C{run-tests.sh}.
        """
        modules = testModules()
        self.assertGreater(len(modules), 40)
        misplaced = sorted(
            name for name in modules if not name.startswith(("tests.unit.", "tests.e2e."))
        )
        self.assertEqual(misplaced, [])

    def test_noTestModuleImportsAnother(self) -> None:
        """
        No test module imports another test module (what two of them need
        is in C{tests.support}): importing one would also collect its tests
        and tie the two modules' set-ups together.
        """
        modules = testModules()
        imports = {
            name: sorted(
                other
                for other in importedModules(path)
                if other.rsplit(".", 1)[-1].startswith("test_")
                or ".test_" in other
                or other in modules
            )
            for name, path in modules.items()
        }
        self.assertEqual({name: found for name, found in imports.items() if found}, {})

    def test_supportHoldsNoTests(self) -> None:
        """
        C{tests/support} holds helpers only: no C{test_*} module.
        """
        support = os.listdir(os.path.join(TESTS, "support"))
        self.assertEqual(sorted(n for n in support if n.startswith("test_")), [])
