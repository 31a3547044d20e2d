"""
Tests for C{twistd conchshare}: the plugin, C{makeService} without a
reactor, and twistd started as a real process against a throwaway sshd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from conchshare import spin
from conchshare.command import Options, makeService, makeTwistdService
from conchshare.control import ControlService
from conchshare.service import ShareService
from conchshare.spin import SpinningPoller
from tests.support import CHECKOUT
from tests.support.command import WAIT, Running, _Base, rawSftp, sshArgs
from tests.support.engines import epollReactor

#: The checkout the tests come from.
ROOT = CHECKOUT

#: twistd, run by this Python, with this checkout last on its path: twistd
#: finds plugins by scanning sys.path for twisted/plugins directories, where
#: a real install puts ours (and is found first) but an editable one does not.
TWISTD = [
    sys.executable,
    "-c",
    f"import sys; sys.path.append({ROOT!r});"
    " from twisted.scripts.twistd import run; sys.exit(run())",
]


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.share = os.path.abspath(self.mktemp())
        os.makedirs(self.share)

    def test_pluginFound(self) -> None:
        """
        twistd finds the C{conchshare} service maker.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("conchshare", makers)
        self.assertIs(makers["conchshare"].options, Options)

    def test_makeService(self) -> None:
        """
        C{makeService} builds, without starting anything or touching a
        reactor, a collection holding the share service (with the command's
        options) and its control socket service.
        """
        control = os.path.abspath(self.mktemp())
        options = Options()
        options.parseOptions(
            ["share", "--mode", "raw", "--control", control, "me@example.org:2222", self.share]
        )
        service = makeService(options)
        self.assertTrue(IServiceCollection.providedBy(service))
        share = IService(service).getServiceNamed("conchshare")  # type: ignore[attr-defined]
        self.assertIsInstance(share, ShareService)
        self.assertEqual(share.destination, "me@example.org:2222")
        self.assertEqual(share.options.mode, "raw")
        controls = [s for s in service if isinstance(s, ControlService)]
        self.assertEqual([c.path for c in controls], [control])
        self.assertFalse(service.running)
        self.assertFalse(os.path.exists(control))
        self.assertEqual(share.status()["state"], "stopped")

    def test_mount(self) -> None:
        options = Options()
        options.parseOptions(["mount", "--via", "ssh", "host", self.share, "--at", "mnt"])
        share = makeService(options).getServiceNamed("conchshare")
        self.assertEqual((share.options.mountAt, share.options.mountVia), ("mnt", "ssh"))

    def test_spinWhileRunning(self) -> None:
        """
        The service twistd runs makes its epoll reactor poll before it
        sleeps while it runs, and undoes that when it stops.
        """
        reactor = epollReactor(self)
        epoll = reactor._poller
        self.patch(spin, "worthSpinning", lambda: True)
        options = Options()
        options.parseOptions(["share", "--mode", "raw", "h", self.share])
        top = makeTwistdService(options, reactor, spin=True)
        self.assertIs(reactor._poller, epoll)
        spinners = [s for s in top if type(s).__name__ == "_SpinWhileRunning"]
        self.assertEqual(len(spinners), 1)
        spinners[0].startService()
        self.assertIsInstance(reactor._poller, SpinningPoller)
        self.assertIs(reactor._poller.poller, epoll)
        spinners[0].stopService()
        self.assertIs(reactor._poller, epoll)
        # Without spin (embedding programs, tests): nothing of the kind.
        self.assertFalse(
            [
                s
                for s in makeTwistdService(options, reactor)
                if type(s).__name__ == "_SpinWhileRunning"
            ]
        )

    def test_usageErrors(self) -> None:
        """
        Bad options are twistd usage errors with the command's sentence.
        """
        for argv in (
            [],
            ["share"],
            ["share", "--mode", "x", "h", self.share],
            ["frobnicate"],
        ):
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)
        options = Options()
        options.parseOptions(["share", "h", os.path.join(self.share, "missing")])
        error = self.assertRaises(usage.UsageError, makeService, options)
        self.assertIn("missing", str(error))

    def test_help(self) -> None:
        """
        C{twistd conchshare --help} lists the subcommands.
        """
        # twistd of the Python running the tests (the one on PATH may be
        # another installation's).
        result = subprocess.run(
            TWISTD + ["conchshare", "--help"], capture_output=True, text=True, timeout=WAIT
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"(?m)^\s+share\s+share folders")
        self.assertRegex(result.stdout, r"(?m)^\s+mount\s+share folders and mount them")
        result = subprocess.run(
            TWISTD + ["conchshare", "share", "--help"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertIn("--remote-listen", result.stdout)


class TwistdProcessTests(_Base):
    def test_twistd(self) -> None:
        """
        C{twistd -n conchshare share ...} as a real process: the forward comes
        up (seen through C{conchshare ctl status}), sftp works through it,
        ctl pauses, events are logged, SIGTERM stops it cleanly and removes
        the control socket.
        """
        running = Running(
            self,
            ["-n", "--pidfile=", "conchshare", "share", "--mode", "raw", *sshArgs(self.sshd)]
            + ["--control", self.control, self.sshd.destination(), self.share],
            command=TWISTD,
        )
        deadline = time.monotonic() + WAIT
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                self.fail(f"twistd exited {running.process.returncode}: {running.stderr}")
            if os.path.exists(self.control):
                reply = self.ctl("--json", "status")
                if reply.returncode == 0:
                    status = json.loads(reply.stdout)["status"]
                    if status["state"] == "forwarding":
                        break
            time.sleep(0.1)
        self.assertEqual(status.get("state"), "forwarding", status)
        port = status["listeners"][0]["port"]  # type: ignore[index]
        result = rawSftp(port, "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        self.assertEqual(self.ctl("pause").returncode, 0)
        self.assertTrue(json.loads(self.ctl("--json", "status").stdout)["status"]["paused"])
        self.assertEqual(self.ctl("resume").returncode, 0)
        running.signal(signal.SIGTERM)
        code = running.wait()
        log = "".join(running.rest())
        # twistd ends a clean SIGTERM shutdown by re-raising the signal.
        self.assertIn(code, (0, -signal.SIGTERM), log)
        self.assertIn("Server Shut Down.", log)
        self.assertIn(f"Forwarding 127.0.0.1:{port} on the remote host", log)
        self.assertIn("Paused (0 channels).", log)
        self.assertIn("Stopped", log)
        self.assertFalse(os.path.exists(self.control))
        # No dependency's warning in the log (cryptography >= 51 warned
        # "DSA is deprecated" from Conch's key code for every key).
        self.assertNotIn("Warning", log)

    def test_twistdFatalError(self) -> None:
        """
        A fatal error (unknown host key) under twistd: logged as one
        sentence, and twistd exits instead of running on.
        """
        empty = os.path.join(self.tmp, "known_hosts")
        open(empty, "w").close()
        running = Running(
            self,
            ["-n", "--pidfile=", "conchshare", "share", "--mode", "raw", "-F", "none"]
            + ["-i", self.sshd.clientKeyPath, "--known-hosts", empty]
            + ["--control", self.control, self.sshd.destination(), self.share],
            command=TWISTD,
        )
        running.wait()
        log = "".join(running.rest())
        self.assertIn("can't be established", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback (most recent call last)", log)
