"""
The embedding example (C{examples/embed.py}) runs against a throwaway sshd.
"""

from __future__ import annotations

import os
import signal
import sys

from tests.support import CHECKOUT
from tests.support.command import Running, _Base, rawSftp

EXAMPLE = os.path.join(CHECKOUT, "examples", "embed.py")


class EmbedExampleTests(_Base):
    def test_example(self) -> None:
        """
        The example prints where the share is reachable, sftp works there,
        and SIGTERM stops it cleanly (exit 0, C{Stopped} printed).
        """
        running = Running(
            self,
            ["-i", self.sshd.clientKeyPath, "--known-hosts", self.sshd.knownHostsPath]
            + [self.sshd.destination(), self.share],
            command=[sys.executable, EXAMPLE],
        )
        while True:
            line = running.line()
            self.assertIsNotNone(line, running.stderr)
            assert line is not None
            if line.startswith("READY "):
                break
        _, address, port = line.split()
        self.assertEqual(address, "127.0.0.1")
        result = rawSftp(int(port), "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0, running.stderr)
        running.rest()
        self.assertIn("Stopped (stopped on request).\n", running.lines)
        self.assertNotIn("Traceback", running.stderr)
