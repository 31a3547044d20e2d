"""
End to end: L{conchshare.service.ShareService} in this process (trial's
reactor) against a throwaway OpenSSH sshd: forwarding, status, pause,
reconnect, stop, fatal errors.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from conchshare.errors import HostKeyUnknown
from conchshare.service import ShareService
from tests.support.sshd import portOpen, startForTest

WAIT = 30.0


class EventLog:
    """
    Collects a service's events; L{next} waits for one by name.
    """

    def __init__(self, service: ShareService) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiting: list[tuple[str, Deferred[dict[str, Any]]]] = []
        self._seen = 0
        service.addObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for name, d in list(self._waiting):
            if event["event"] == name:
                self._waiting.remove((name, d))
                d.callback(event)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def next(self, name: str) -> Deferred[dict[str, Any]]:
        """
        The next C{name} event from now on.
        """
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((name, d))
        return d.addTimeout(WAIT, reactor)


def sftp(port: int, batch: str) -> Deferred[tuple[bytes, bytes, int]]:
    return getProcessOutputAndValue(  # type: ignore[no-any-return]
        "sftp",
        ["-b", "-", "-D", f"socat STDIO TCP:127.0.0.1:{port}"],
        env=dict(os.environ),
        stdinBytes=batch.encode(),
    )


class ServiceEndToEndTests(TestCase):
    timeout = 60
    sshdConfig: list[str] = []

    def setUp(self) -> None:
        self.sshd = startForTest(self, self.sshdConfig, needs=("socat", "sftp"))
        self.share = os.path.abspath(self.mktemp())
        os.makedirs(self.share)
        with open(os.path.join(self.share, "a.txt"), "w") as f:
            f.write("content of a\n")

    def makeService(self, knownHosts: str | None = None, **kw: Any) -> ShareService:
        service = ShareService(
            self.sshd.destination(),
            [f"docs={self.share}"],
            mode="raw",
            identities=[self.sshd.clientKeyPath],
            knownHosts=knownHosts or self.sshd.knownHostsPath,
            configFile="none",
            sshOptions=["IdentitiesOnly=yes", "BatchMode=yes"],
            reactor=reactor,
            retryInitialDelay=0.2,
            **kw,
        )
        self.addCleanup(service.stopService)
        return service

    async def test_forwardStatusPauseStop(self) -> None:
        """
        whenForwarding gives the allocated port; sftp works through it; the
        status counts the bytes; pause is reflected; stop cancels the
        forward and emits C{stopped}.
        """
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        listeners = await service.whenForwarding()
        [(address, port)] = listeners
        self.assertEqual(address, "127.0.0.1")
        self.assertTrue(portOpen(port))
        self.assertEqual(log.names(), ["connected", "forwarding"])
        self.assertEqual(log.events[1]["port"], port)
        status = service.status()
        self.assertEqual((status["state"], status["mode"]), ("forwarding", "raw"))
        self.assertEqual(
            status["listeners"], [{"mode": "raw", "address": "127.0.0.1", "port": port}]
        )
        out, err, code = await sftp(port, "get /docs/a.txt -\n")
        self.assertEqual(code, 0, err)
        # The probe of portOpen() and the sftp session each had a channel;
        # their channel-closed events may come in either order.
        for _ in range(500):
            if service.status()["channels"] == 0:
                break
            await deferLater(reactor, 0.02)
        self.assertIn("channel-closed", log.names())
        status = service.status()
        self.assertGreater(status["bytes_out"], len("content of a\n"))
        self.assertGreater(status["bytes_in"], 0)
        self.assertEqual(status["channels"], 0)
        self.assertEqual(service.pause(), 0)
        self.assertTrue(service.status()["paused"])
        self.assertEqual(service.resume(), 0)
        self.assertEqual(await service.whenForwarding(), listeners)
        await service.stopService()
        self.assertEqual(log.events[-1]["event"], "stopped")
        self.assertEqual(service.status()["state"], "stopped")
        self.assertFalse(portOpen(port))
        self.assertIsNone(await service.whenStopped())

    async def test_pauseResumeDuringTransfer(self) -> None:
        """
        Pause while sftp downloads a large file: the download stops making
        progress; resume: it completes intact.
        """
        import hashlib

        data = os.urandom(64 * 1024 * 1024)
        with open(os.path.join(self.share, "big"), "wb") as f:
            f.write(data)
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        [(_, port)] = await service.whenForwarding()
        target = os.path.abspath(self.mktemp())
        opened = log.next("channel-opened")
        client = sftp(port, f"get /docs/big {target}\n")
        await opened
        for _ in range(500):  # until the download has started
            if os.path.exists(target) and os.path.getsize(target) > 0:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(service.pause(), 1)
        await deferLater(reactor, 0.5)
        size = os.path.getsize(target) if os.path.exists(target) else 0
        await deferLater(reactor, 1.0)
        stalled = os.path.getsize(target) if os.path.exists(target) else 0
        self.assertEqual(stalled, size)
        self.assertLess(stalled, len(data))
        self.assertEqual(service.resume(), 1)
        out, err, code = await client.addTimeout(WAIT, reactor)
        self.assertEqual(code, 0, err)
        with open(target, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())

    async def test_stopWhilePausedWithOpenChannel(self) -> None:
        """
        Stop while paused with a client connected and waiting: stop finishes
        (no hang) and the client sees an error, not a hang.
        """
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        [(_, port)] = await service.whenForwarding()
        service.pause()
        opened = log.next("channel-opened")
        client = sftp(port, "get /docs/a.txt -\n")
        await opened
        self.assertEqual(service.status()["channels"], 1)
        await service.stopService()
        out, err, code = await client.addTimeout(WAIT, reactor)
        self.assertNotEqual(code, 0)
        self.assertIn("stopped", log.names())

    async def test_reconnect(self) -> None:
        """
        The connection drops: C{reconnecting} (attempt, delay, reason), state
        C{reconnecting}, then connected and forwarding again on the same
        port, and sftp works.
        """
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        [(_, port)] = await service.whenForwarding()
        reconnecting = log.next("reconnecting")
        again = log.next("forwarding")
        self.sshd.killSessions()
        event = await reconnecting
        self.assertEqual(event["attempt"], 1)
        self.assertGreater(event["delay"], 0)
        self.assertIsInstance(event["reason"], str)
        self.assertEqual(service.status()["state"], "reconnecting")
        self.assertIsNotNone(service.status()["retry_in"])
        self.assertEqual((await again)["port"], port)
        self.assertEqual(await service.whenForwarding(), [("127.0.0.1", port)])
        out, err, code = await sftp(port, "ls /\n")
        self.assertEqual(code, 0, err)

    async def test_reconnectPortTaken(self) -> None:
        """
        If the port allocated before is taken when reconnecting, the forward
        is requested again on any port, and reported.
        """
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        [(_, port)] = await service.whenForwarding()
        reconnecting = log.next("reconnecting")
        again = log.next("forwarding")
        self.sshd.killSessions()
        await reconnecting
        squatter = None
        for _ in range(100):  # the dead session's listener goes away
            try:
                squatter = socket.create_server(("127.0.0.1", port))
                break
            except OSError:
                await deferLater(reactor, 0.02)
        self.assertIsNotNone(squatter)
        assert squatter is not None
        self.addCleanup(squatter.close)
        newPort = (await again)["port"]
        self.assertNotEqual(newPort, port)
        self.assertEqual(await service.whenForwarding(), [("127.0.0.1", newPort)])
        out, err, code = await sftp(newPort, "ls /\n")
        self.assertEqual(code, 0, err)

    async def test_reconnectWhilePaused(self) -> None:
        """
        Paused stays paused across a reconnect.
        """
        service = self.makeService()
        log = EventLog(service)
        service.startService()
        await service.whenForwarding()
        service.pause()
        again = log.next("forwarding")
        self.sshd.killSessions()
        await again
        self.assertTrue(service.status()["paused"])
        self.assertTrue(service._connection.group.paused)

    async def test_unknownHostKey(self) -> None:
        """
        An unknown host key at the first connection is fatal: C{error},
        C{stopped}, whenStopped and whenForwarding fail with
        L{HostKeyUnknown} (exit code 5), no reconnect.
        """
        empty = os.path.abspath(self.mktemp())
        open(empty, "w").close()
        service = self.makeService(knownHosts=empty)
        log = EventLog(service)
        forwarding = service.whenForwarding()
        stopped = service.whenStopped()
        service.startService()
        with self.assertRaises(HostKeyUnknown) as caught:
            await stopped
        self.assertEqual(caught.exception.exitCode, 5)
        with self.assertRaises(HostKeyUnknown):
            await forwarding
        self.assertEqual(log.names(), ["error", "stopped"])
        self.assertIn("SHA256:", log.events[0]["message"])
        self.assertEqual(service.status()["state"], "stopped")
