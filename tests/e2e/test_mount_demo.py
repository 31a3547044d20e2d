"""
The README's "run the main job" command, C{demo/run-demo.sh}, run as a
user would (without its install step: the tests' set-up installed
everything already).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from tests.support import CHECKOUT
from tests.support.mounting import mountSkipReason

DEMO = os.path.join(CHECKOUT, "demo", "run-demo.sh")


class DemoTests(unittest.TestCase):
    """
    C{demo/run-demo.sh} mounts a sample folder on a throwaway sshd, reads
    and writes through the mount from the remote side, stops and cleans up.
    """

    skip = mountSkipReason()

    def runDemo(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CONCHSHARE_DEMO_NO_INSTALL="1")
        # The demo uses "python3"; make it the interpreter running the tests.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return subprocess.run(
            ["bash", DEMO, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )

    def test_passive(self) -> None:
        """
        The default demo exits 0 after showing the remote side list, read
        and write, and the file written remotely arrives locally.
        """
        result = self.runDemo()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        out = result.stdout
        self.assertIn("Hello from the local machine.", out)
        self.assertIn("Written on the remote host.", out)
        self.assertIn('"event": "mounted"', out)
        self.assertIn('"event": "unmounted"', out)
        self.assertIn("Demo passed", out)
        # Everything it made is gone.
        tempDirs = [line for line in out.splitlines() if "Starting a throwaway sshd" in line]
        self.assertEqual(len(tempDirs), 1)
        directory = tempDirs[0].rsplit(" in ", 1)[1]
        self.assertFalse(os.path.exists(directory))
