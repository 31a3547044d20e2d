"""
What runs where, end to end: a stop with a call in flight (C{conchshare
share} against a throwaway sshd) and copy-data in steps driven by OpenSSH's
C{sftp}.  The in-process tests are in L{tests.unit.test_runtime}.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import CHECKOUT
from tests.support.sharetree import read, write
from tests.support.wire import INIT, request, s, usersGroups

#: Runs conchshare (the arguments after the first two) with a blocking fake
#: name service: looking up uid HELD_UID creates the file named by the
#: second argument, then waits until the one named by the first exists.
HELD_UID = 4242421
_HELD_COMMAND = f"""
import os, pwd, sys, time
latch, entered = sys.argv.pop(1), sys.argv.pop(1)
real = pwd.getpwuid
def held(uid):
    if uid == {HELD_UID}:
        open(entered, "w").close()
        while not os.path.exists(latch):
            time.sleep(0.01)
    return real(uid)
pwd.getpwuid = held
from conchshare.cli import run
run()
"""


class StopEndToEndTests(TestCase):
    """
    C{conchshare share} stopped by SIGTERM while a request's call is held
    in a worker: a clean stop, exit 0, no traceback.
    """

    timeout = 90

    def test_sigtermWithCallInFlight(self) -> None:
        """
        SIGTERM while users-groups-by-id waits for the name service (and
        while it ends during the stop): C{stopped}, exit 0, nothing on
        stderr but what a clean stop prints.
        """
        import socket

        from tests.support.command import Running, shortTempDir, sshArgs
        from tests.support.sshd import startForTest

        sshd = startForTest(self, needs=("socat",))
        tmp = shortTempDir(self)
        share = os.path.join(tmp, "docs")
        os.mkdir(share)
        latch, entered = os.path.join(tmp, "latch"), os.path.join(tmp, "entered")
        args = ["share", *sshArgs(sshd), "--control", os.path.join(tmp, "ctl.sock"), "--json"]
        running = Running(
            self,
            args + ["--mode", "raw", sshd.destination(), share],
            command=[sys.executable, "-c", _HELD_COMMAND, latch, entered],
        )
        port = running.event("forwarding")["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(INIT)
            client.recv(65536)  # VERSION
            client.sendall(usersGroups(1, [HELD_UID], [0]) + request(17, 2, s(b"/")))
            deadline = time.monotonic() + 30
            while not os.path.exists(entered):
                self.assertLess(time.monotonic(), deadline, "the lookup was never made")
                time.sleep(0.01)
            running.signal(signal.SIGTERM)
            write(latch, b"")  # the call ends during the stop
            stopped = running.event("stopped")
        self.assertIn("SIGTERM", stopped["reason"])
        self.assertEqual(running.wait(), 0)
        self.assertNotIn("Traceback", running.stderr)
        self.assertNotIn("stopped", running.stderr.lower())


class CopyDataOpenSSHTests(SynchronousTestCase):
    """
    OpenSSH's C{sftp} C{cp} (copy-data) of a file of several steps, served
    by C{conchshare sftp-server}.
    """

    def test_copyOfThreeSteps(self) -> None:
        """
        A copy of 20 MB (three steps of 8 MiB at most) keeps every byte.
        """
        import shlex
        import shutil
        import subprocess

        sftp = shutil.which("sftp")
        if sftp is None:
            raise SkipTest("OpenSSH's sftp client is not installed")
        base = os.path.realpath(self.mktemp())
        share = os.path.join(base, "share")
        os.makedirs(share)
        data = os.urandom(20_000_000)
        write(os.path.join(share, "big"), data)
        server = shlex.join([sys.executable, "-m", "conchshare", "sftp-server", "docs=" + share])
        root = CHECKOUT
        done = subprocess.run(
            [sftp, "-q", "-b", "-", "-D", server],
            input="cp /docs/big /docs/copy\n",
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=root),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(read(os.path.join(share, "copy")), data)
