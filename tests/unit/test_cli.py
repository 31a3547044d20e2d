"""
Tests for L{conchshare.cli}: the C{conchshare} command's dispatch, run as a
user runs it (C{python -m conchshare}).
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from conchshare import __version__


def conchshare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conchshare", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


class CommandLineTests(SynchronousTestCase):
    def test_version(self) -> None:
        """
        C{conchshare --version} prints the version and exits 0.
        """
        for flag in ("--version", "-V"):
            done = conchshare(flag)
            self.assertEqual((done.returncode, done.stdout), (0, f"conchshare {__version__}\n"))

    def test_help(self) -> None:
        """
        C{--help} lists every command; no argument at all prints the same
        usage but exits 2.
        """
        done = conchshare("--help")
        self.assertEqual(done.returncode, 0)
        for command in ("share", "mount", "ctl", "sftp-server"):
            self.assertIn(f"  {command} ", done.stdout)
        self.assertEqual(conchshare().returncode, 2)

    def test_unknownCommand(self) -> None:
        """
        An unknown command: one sentence on stderr, exit 2, no traceback.
        """
        done = conchshare("frobnicate")
        self.assertEqual(done.returncode, 2)
        self.assertEqual(
            done.stderr, "conchshare: unknown command 'frobnicate'; try 'conchshare --help'.\n"
        )
        self.assertEqual(done.stdout, "")
