"""
Tests for C{twistd conchshare}: the plugin, and C{makeService} without a
reactor.  twistd started as a real process against a throwaway sshd is
tested in L{tests.e2e.test_plugin}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.reactors import IReactorInstaller
from twisted.application.service import IService, IServiceCollection, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from conchshare import spin
from conchshare.command import Options, makeService, makeTwistdService
from conchshare.control import ControlService
from conchshare.service import ShareService
from conchshare.spin import Spinner
from tests.support import CHECKOUT
from tests.support.command import TWISTD, WAIT
from tests.support.engines import epollReactor, spinningReactor

#: The checkout the tests come from.
ROOT = CHECKOUT


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
        The service twistd runs makes conchshare's reactor (C{twistd
        --reactor=conchshare-epoll}) poll before it sleeps while it runs,
        and undoes that when it stops.
        """
        reactor = spinningReactor(self)
        self.patch(spin, "worthSpinning", lambda: True)
        options = Options()
        options.parseOptions(["share", "--mode", "raw", "h", self.share])
        top = makeTwistdService(options, reactor, spin=True)
        self.assertIsNone(reactor.spinner)
        spinners = [s for s in top if type(s).__name__ == "_SpinWhileRunning"]
        self.assertEqual(len(spinners), 1)
        spinners[0].startService()
        self.assertIsInstance(reactor.spinner, Spinner)
        spinners[0].stopService()
        self.assertIsNone(reactor.spinner)
        # Without spin (embedding programs, tests): nothing of the kind.
        self.assertFalse(
            [
                s
                for s in makeTwistdService(options, reactor)
                if type(s).__name__ == "_SpinWhileRunning"
            ]
        )

    def test_twistdDefaultReactorLeftAlone(self) -> None:
        """
        twistd's default (Twisted's epoll) reactor is left as it is, without
        a warning.
        """
        reactor = epollReactor(self)
        epoll = reactor._poller
        self.patch(spin, "worthSpinning", lambda: True)
        options = Options()
        options.parseOptions(["share", "--mode", "raw", "h", self.share])
        top = makeTwistdService(options, reactor, spin=True)
        [spinner] = [s for s in top if type(s).__name__ == "_SpinWhileRunning"]
        spinner.startService()
        spinner.stopService()
        self.assertIs(reactor._poller, epoll)
        self.assertEqual(self.flushWarnings(), [])

    def test_reactorPlugin(self) -> None:
        """
        twistd finds the C{conchshare-epoll} reactor, and installing it (as
        C{twistd --reactor=conchshare-epoll} does) installs conchshare's
        polling reactor.
        """
        installers = {p.shortName: p for p in getPlugins(IReactorInstaller)}
        self.assertIn("conchshare-epoll", installers)
        self.assertEqual(installers["conchshare-epoll"].moduleName, "conchshare.spinreactor")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.append({ROOT!r});"
                " from twisted.application.reactors import installReactor;"
                " print(type(installReactor('conchshare-epoll')).__name__)",
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual((result.stdout, result.stderr), ("SpinningEPollReactor\n", ""))

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
