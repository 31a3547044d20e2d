"""
Tests for C{twistd conchshare}: the plugin, and C{makeService} without a
reactor.  twistd started as a real process against a throwaway sshd is
tested in L{tests.e2e.test_plugin}.
"""

from __future__ import annotations

import os
import subprocess

from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from conchshare import spin
from conchshare.command import Options, makeService, makeTwistdService
from conchshare.control import ControlService
from conchshare.service import ShareService
from conchshare.spin import SpinningPoller
from tests.support.command import TWISTD, WAIT
from tests.support.engines import epollReactor


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
