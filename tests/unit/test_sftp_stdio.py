"""
Tests for C{conchshare sftp-server} (L{conchshare.sftp.stdio}) that need no
OpenSSH: its command line, and the memory its packets reuse.  The server
driven by OpenSSH's C{sftp} and by raw requests is tested in
L{tests.e2e.test_sftp_stdio}.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

from conchshare.sftp.stdio import main
from tests.support import CHECKOUT

ROOT = CHECKOUT

_CHURN = """
import resource, sys
from collections import deque
from conchshare.sftp.stdio import keepFreedMemory
tuned = keepFreedMemory()
def churn():
    # Packets of 256 KiB, up to 64 alive at once, freed oldest first: a
    # bulk upload's allocations.
    live = deque()
    for i in range(1000):
        live.append(bytes(bytearray(262170)))
        if len(live) > 64:
            live.popleft()
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


class CommandLineTests(TestCase):
    def run_main(self, argv: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        return main(argv, stderr=err), err.getvalue()

    def test_badOption(self) -> None:
        """
        An unknown option: one sentence on stderr, exit 2.
        """
        code, err = self.run_main(["--bogus"])
        self.assertEqual(code, 2)
        self.assertEqual(
            err,
            "conchshare sftp-server: Option --bogus not recognized. "
            "See 'conchshare sftp-server --help'.\n",
        )

    def test_badUmaskAndLevel(self) -> None:
        """
        A umask that is not octal, or an unknown log level: exit 2.
        """
        code, err = self.run_main(["--umask", "9"])
        self.assertEqual(code, 2)
        self.assertIn("The umask '9' is not an octal number.", err)
        code, err = self.run_main(["-l", "LOUD"])
        self.assertEqual(code, 2)
        self.assertIn("Unknown log level 'LOUD'", err)
        self.assertEqual(err.count("\n"), 1)

    def test_badShare(self) -> None:
        """
        A share whose folder is missing: one sentence, exit 2.
        """
        missing = os.path.join(self.mktemp(), "missing")
        code, err = self.run_main(["--share", "docs=" + missing])
        self.assertEqual(code, 2)
        self.assertTrue(err.startswith("conchshare sftp-server: "), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn("Traceback", err)


class MemoryTests(TestCase):
    def test_freedPacketsReused(self) -> None:
        """
        With glibc, once an upload's packets have been allocated, freeing
        and allocating more of them costs no page faults: the memory is
        kept for reuse, not given back to the kernel and faulted in again.
        """
        try:
            glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))
        except ValueError:
            glibc = False
        if not glibc:
            raise SkipTest("Not glibc")
        result = subprocess.run(
            [sys.executable, "-c", _CHURN],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
            check=True,
        )
        tuned, faults = result.stdout.split()
        self.assertEqual(tuned, b"True")
        # Without: thousands (each packet's 64 pages, whenever the heap's
        # top was trimmed meanwhile).
        self.assertLess(int(faults), 100)
