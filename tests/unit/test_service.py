"""
Tests for L{conchshare.service}: options, and the service's behaviour
before and without any connection (no network, a memory reactor).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from conchshare import ShareOptions as ExportedOptions
from conchshare import ShareService as ExportedService
from conchshare.errors import ConnectionFailed, UsageError
from conchshare.service import ForwardSpec, ShareOptions, ShareService, asConchShareError


class OptionsTests(SynchronousTestCase):
    def test_exported(self) -> None:
        """
        The public API is re-exported from C{conchshare}.
        """
        self.assertIs(ExportedService, ShareService)
        self.assertIs(ExportedOptions, ShareOptions)

    def test_contradictions(self) -> None:
        for bad in (
            ShareOptions(mode="carrier"),
            ShareOptions(mountVia="pigeon"),
            ShareOptions(mode="raw", authorizedKeys="k"),
            ShareOptions(mode="raw", sessionKey=True),
            ShareOptions(umask=0o1000),
        ):
            self.assertRaises(UsageError, bad.check)

    def test_forwards(self) -> None:
        self.assertEqual(ShareOptions().forwards(), [ForwardSpec("127.0.0.1", 0)])
        self.assertEqual(
            ShareOptions(remoteListen=[("::1", 5)], remoteSocket="").forwards(),
            [ForwardSpec("::1", 5), ForwardSpec(socket="")],
        )


class ServiceWithoutConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.share = os.path.abspath(self.mktemp())
        os.makedirs(self.share)
        self.events: list[dict[str, Any]] = []

    def service(self, destination: str = "me@example.org", **kw: Any) -> ShareService:
        service = ShareService(
            destination, [self.share], reactor=self.reactor, configFile="none", **kw
        )
        service.addObserver(self.events.append)
        return service

    def test_badShare(self) -> None:
        """
        A share that does not exist: L{UsageError} at construction.
        """
        error = self.assertRaises(
            UsageError, ShareService, "h", [os.path.join(self.share, "nope")], reactor=self.reactor
        )
        self.assertIn("nope", str(error))

    def test_keywordOptions(self) -> None:
        """
        L{ShareOptions} fields can be given as keywords, over an options
        object.
        """
        service = ShareService(
            "h", [self.share], ShareOptions(mode="raw", umask=0o077), umask=0o027
        )
        self.assertEqual((service.options.mode, service.options.umask), ("raw", 0o027))

    def test_statusBeforeStart(self) -> None:
        status = self.service().status()
        self.assertEqual(
            {
                k: status[k]
                for k in ("state", "paused", "channels", "bytes_in", "bytes_out", "listeners")
            },
            {
                "state": "stopped",
                "paused": False,
                "channels": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "listeners": [],
            },
        )

    def test_pauseWithoutConnection(self) -> None:
        """
        Pausing before any connection is remembered and reported with 0
        channels.
        """
        service = self.service()
        self.assertEqual(service.pause(), 0)
        self.assertTrue(service.status()["paused"])
        self.assertEqual(service.resume(), 0)
        self.assertEqual(
            [(e["event"], e["channels"]) for e in self.events], [("paused", 0), ("resumed", 0)]
        )

    def test_stopBeforeStart(self) -> None:
        """
        Stopping a service never started: C{stopped}, and the Deferreds fire
        at once; whenForwarding fails.
        """
        service = self.service()
        self.successResultOf(service.stopService())
        self.assertEqual(self.events[-1]["event"], "stopped")
        self.assertIsNone(self.successResultOf(service.whenStopped()))
        self.failureResultOf(service.whenForwarding(), ConnectionFailed)
        self.assertEqual(service.status()["state"], "stopped")

    def test_badDestinationIsFatal(self) -> None:
        """
        A destination that cannot be parsed stops the service at start with
        an C{error} event; whenStopped fails with the L{UsageError}.
        """
        service = self.service("bad host name")
        stopped = service.whenStopped()
        service.startService()
        failure = self.failureResultOf(stopped, UsageError)
        self.assertEqual(failure.value.exitCode, 2)
        self.assertEqual([e["event"] for e in self.events], ["error", "stopped"])
        self.assertEqual(self.events[0]["message"], str(failure.value))
        self.assertEqual(service.status()["error"], str(failure.value))

    def test_connectingThenStop(self) -> None:
        """
        Right after start the state is C{connecting} and an attempt is under
        way; stopping cancels it and fires.
        """
        service = self.service("me@127.0.0.1:2222")
        service.startService()
        self.assertEqual(service.status()["state"], "connecting")
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 2222))
        d = service.stopService()
        self.reactor.advance(30)
        self.successResultOf(d)
        self.assertEqual(self.events[-1]["event"], "stopped")

    def test_firstConnectionRefusedIsFatal(self) -> None:
        """
        When the very first connection fails there is nothing to reconnect
        to: an C{error} event with ssh's sentence, C{stopped}, no
        C{reconnecting}; whenStopped fails with L{ConnectionFailed} (exit 3).
        """
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        service = self.service("me@127.0.0.1:2222")
        stopped = service.whenStopped()
        forwarding = service.whenForwarding()
        service.startService()
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.reactor.advance(1)
        failure = self.failureResultOf(stopped, ConnectionFailed)
        self.assertEqual(failure.value.exitCode, 3)
        self.assertIn("Connection refused", str(failure.value))
        self.failureResultOf(forwarding, ConnectionFailed)
        self.assertEqual([e["event"] for e in self.events], ["error", "stopped"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_errorTranslation(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        error = asConchShareError(ConnectionRefusedError())
        self.assertIsInstance(error, ConnectionFailed)
        self.assertTrue(str(error).endswith("."))


class NoReactorInstalledTests(SynchronousTestCase):
    """
    Building a L{ShareService} with no reactor installs none: a program
    embedding it may still install the reactor it wants until it starts
    the service.
    """

    def test_buildingInstallsNoReactor(self) -> None:
        import subprocess
        import sys

        folder = self.mktemp()
        os.mkdir(folder)
        code = (
            "import sys\n"
            "from conchshare import ShareService\n"
            f"ShareService('me@example.invalid', [{folder!r}], mode='raw')\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "False\n", ""))
