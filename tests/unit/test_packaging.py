"""
What C{pip install .} installs: every package of the source tree.
"""

from __future__ import annotations

import os
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from tests.support import CHECKOUT


class PackagesTests(SynchronousTestCase):
    def test_everyPackageInstalled(self) -> None:
        """
        Every folder of C{conchshare} with an C{__init__.py} is listed in
        C{pyproject.toml}'s packages (a package left out installs without
        error, and the installed command then fails on its first import).
        """
        with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
            listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
        found = set()
        top = os.path.join(CHECKOUT, "conchshare")
        for folder, _, files in os.walk(top):
            if "__init__.py" in files:
                relative = os.path.relpath(folder, CHECKOUT)
                found.add(relative.replace(os.sep, "."))
        self.assertEqual(sorted(found - listed), [])
