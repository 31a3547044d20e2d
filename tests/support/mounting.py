"""
C{conchshare mount} as a real process against a throwaway sshd, and what a
user of the remote host does with the mount (through child processes with
timeouts, so that a hung mount fails a test instead of hanging it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.support.command import WAIT, Running, shortTempDir, sshArgs
from tests.support.sshd import ThrowawaySSHD, available
from tests.support.workload import FUSERMOUNT, inMountTable, sshfsAvailable


def forceUnmount(path: str) -> None:
    """
    Detach every mount at C{path} (a cleanup: never leave a mount behind).
    """
    for _ in range(10):
        if not inMountTable(path):
            return
        subprocess.run(
            [FUSERMOUNT, "-u", "-z", "--", path],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=WAIT,
        )


def waitFor(condition: Any, what: str, timeout: float = WAIT) -> None:
    """
    Poll C{condition()} until it is true; fail saying C{what} otherwise.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def remote(*argv: str) -> subprocess.CompletedProcess[str]:
    """
    Run a command "on the remote host" (here), never for longer than
    L{WAIT}: files on a FUSE mount are only touched from child processes.
    """
    return subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT
    )


def readRemote(path: str) -> str:
    result = remote("cat", "--", path)
    if result.returncode != 0:
        raise AssertionError(f"cat {path!r} failed: {result.stderr}")
    return result.stdout


def writeRemote(path: str, text: str) -> None:
    result = remote("sh", "-c", 'printf %s "$2" > "$1"', "sh", path, text)
    if result.returncode != 0:
        raise AssertionError(f"writing {path!r} failed: {result.stderr}")


def listRemote(path: str) -> list[str]:
    result = remote("ls", "-A", "--", path)
    if result.returncode != 0:
        raise AssertionError(f"ls {path!r} failed: {result.stderr}")
    return sorted(result.stdout.splitlines())


def readLocal(path: str) -> str:
    with open(path) as f:
        return f.read()


def writeLocal(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def mountSkipReason() -> str | None:
    """
    Why a remote sshfs mount cannot be tested here (no sshd, sshfs or
    FUSE), or L{None} if it can.
    """
    return available() or sshfsAvailable()


class _MountBase(TestCase):
    timeout = 120
    #: sshd_config lines of the throwaway sshd.
    sshdConfig: list[str] = []

    def setUp(self) -> None:
        reason = mountSkipReason()
        if reason is not None:
            raise SkipTest(reason)
        self.tmp = shortTempDir(self)
        self.sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=self.configure())
        self.addCleanup(self.sshd.stop)
        self.share = os.path.join(self.tmp, "docs")
        os.mkdir(self.share)
        writeLocal(os.path.join(self.share, "hello.txt"), "hello from the local side\n")
        self.control = os.path.join(self.tmp, "ctl.sock")

    def configure(self) -> list[str]:
        return list(self.sshdConfig)

    def mountArgs(self, at: str, *shares: str, json_: bool = True) -> list[str]:
        args = ["mount", *sshArgs(self.sshd), "--control", self.control]
        if json_:
            args.append("--json")
        return args + [self.sshd.destination(), *(shares or (self.share,)), "--at", at]

    def mount(self, at: str, *shares: str) -> Running:
        """
        Start C{conchshare mount --json ... --at AT}; whatever happens, the
        cleanups kill it and then detach anything left mounted at C{at}.
        """
        self.addCleanup(forceUnmount, at)
        return Running(self, self.mountArgs(at, *shares))

    def stopped(self, running: Running, at: str) -> dict[str, Any]:
        """
        SIGTERM: C{unmounted} for C{at}, C{stopped}, exit 0, no traceback.

        @return: the C{unmounted} event.
        """
        running.signal(signal.SIGTERM)
        unmounted = running.event("unmounted")
        self.assertEqual(unmounted["remote_path"], at)
        self.assertIn("SIGTERM", running.event("stopped")["reason"])
        self.assertEqual(running.wait(), 0, running.stderr)
        self.assertEqual(running.rest(), [])
        self.assertNotIn("Traceback", running.stderr)
        return unmounted
