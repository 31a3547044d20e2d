"""
Tests for the endpoint wiring shared by C{share} and C{mount}
(L{conchshare.serving.ForwardServer}), the proxies that report a lost
connection (L{conchshare.reporting}) and L{ShareConnection.isOpen}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from conchshare.errors import UsageError
from conchshare.reporting import LossReportingFactory, LossReportingProtocol
from conchshare.serving import ForwardServer
from conchshare.tunnel.connection import ShareConnection
from conchshare.tunnel.nested import NestedServerTransport, loadOrCreateHostKey
from conchshare.tunnel.sessionkey import generateSessionKey

ADDRESS = IPv4Address("TCP", "127.0.0.1", 22)


class Session(Protocol):
    """
    What serves one SFTP session in these tests.
    """


def _login(server: ForwardServer, key: Key | None) -> Deferred[Any]:
    assert server.nested is not None and key is not None
    data = b"session data"
    creds = SSHPrivateKey(b"anyone", b"ssh-ed25519", key.public().blob(), data, key.sign(data))
    login: Deferred[Any] = server.nested.portal.login(creds, None, IConchUser)
    return login


class ForwardServerTests(unittest.SynchronousTestCase):
    """
    L{ForwardServer}: what a channel arriving on a forward meets.
    """

    def test_rawSessions(self) -> None:
        """
        In C{raw} mode each channel gets a session of its own, and the
        listeners to request are TCP or a Unix socket in that mode.
        """
        server = ForwardServer("raw", Session)
        one, two = server.buildProtocol(), server.buildProtocol()
        self.assertIsInstance(one, Session)
        self.assertIsNot(one, two)
        self.assertIsNone(server.nested)
        self.assertIsNone(server.sessionKey)
        tcp = server.listener(address="::1", port=2222)
        self.assertEqual((tcp.mode, tcp.describe(), tcp.isUnix), ("raw", "[::1]:2222", False))
        self.assertIsInstance(tcp.protocolFactory(), Session)
        unix = server.listener(socketPath="/tmp/s", streamlocal=True)
        self.assertEqual((unix.mode, unix.describe(), unix.isUnix), ("raw", "/tmp/s", True))
        with self.assertRaises(ValueError):
            server.installSessionKey(ShareConnection(reactor=MemoryReactorClock()), 22, "u")

    def test_sshWithSessionKey(self) -> None:
        """
        In C{ssh} mode each channel gets a nested SSH server transport; the
        server logs in whoever holds the session key or an authorized key,
        and nobody else.
        """
        authorized = generateSessionKey()
        server = ForwardServer(
            "ssh",
            Session,
            authorizedKeys=[authorized.public()],
            withSessionKey=True,
            reactor=MemoryReactorClock(),
        )
        self.assertIsInstance(server.buildProtocol(), NestedServerTransport)
        self.assertEqual(server.listener().mode, "ssh")
        self.assertIsNotNone(server.sessionKey)
        self.successResultOf(_login(server, server.sessionKey))
        self.successResultOf(_login(server, authorized))
        self.failureResultOf(_login(server, generateSessionKey()), UnauthorizedLogin)

    def test_sshNeedsAKey(self) -> None:
        """
        C{ssh} mode with no key to accept is a usage error, not a server
        nobody can log in to.
        """
        with self.assertRaises(UsageError):
            ForwardServer("ssh", Session)

    def test_fromFiles(self) -> None:
        """
        L{ForwardServer.fromFiles} creates the host key where it is asked
        to and uses the same one the next time; it accepts the keys of the
        authorized keys file.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        hostKeyPath = os.path.join(directory, "host_key")
        authorizedPath = os.path.join(directory, "authorized_keys")
        authorized = generateSessionKey()
        with open(authorizedPath, "wb") as f:
            f.write(authorized.public().toString("openssh") + b" someone\n")
        first = ForwardServer.fromFiles(
            "ssh",
            Session,
            hostKeyPath=hostKeyPath,
            authorizedKeysPath=authorizedPath,
            withSessionKey=False,
        )
        second = ForwardServer.fromFiles(
            "ssh", Session, hostKeyPath=hostKeyPath, authorizedKeysPath=None, withSessionKey=True
        )
        assert first.nested is not None and second.nested is not None
        self.assertEqual(first.nested.hostKey, loadOrCreateHostKey(hostKeyPath))
        self.assertEqual(second.nested.hostKey, first.nested.hostKey)
        self.assertIsNone(first.sessionKey)
        self.successResultOf(_login(first, authorized))
        self.failureResultOf(_login(second, authorized), UnauthorizedLogin)
        raw = ForwardServer.fromFiles(
            "raw", Session, hostKeyPath=None, authorizedKeysPath=None, withSessionKey=False
        )
        self.assertIsNone(raw.nested)


class Recording(Protocol):
    """
    A protocol that records what it saw.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.answer = 42

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.seen.append("lost")


class LossReportingTests(unittest.SynchronousTestCase):
    """
    L{LossReportingFactory} and L{LossReportingProtocol}.
    """

    def test_reportsAfterTheProtocol(self) -> None:
        """
        The loss is reported with the wrapped protocol, after that protocol
        saw it; the proxy passes the transport and attribute reads on.
        """
        reports: list[tuple[object, str]] = []

        def lost(protocol: Recording, reason: Failure) -> None:
            reports.append((protocol, ",".join(protocol.seen)))

        factory = LossReportingFactory(Factory.forProtocol(Recording), lost)
        proxy = factory.buildProtocol(ADDRESS)
        assert isinstance(proxy, LossReportingProtocol)
        verifyObject(IProtocol, proxy)
        transport = StringTransport()
        proxy.makeConnection(transport)
        self.assertIs(proxy.wrapped.transport, transport)
        self.assertEqual(proxy.answer, 42)
        proxy.connectionLost(Failure(Exception("gone")))
        self.assertEqual(reports, [(proxy.wrapped, "lost")])

    def test_noProtocol(self) -> None:
        """
        A factory that builds no protocol builds no proxy either.
        """

        class Refusing(Factory):
            def buildProtocol(self, addr: object) -> None:
                return None

        factory: LossReportingFactory[Protocol] = LossReportingFactory(
            Refusing(), lambda p, r: None
        )
        self.assertIsNone(factory.buildProtocol(ADDRESS))


class IsOpenTests(unittest.SynchronousTestCase):
    """
    L{ShareConnection.isOpen}: whether a command or a forward can still be
    sent, what L{conchshare.mount.RemoteMount} asks before each.
    """

    def test_openUntilLost(self) -> None:
        """
        Not open before it has a connected SSH transport; open while it has
        one; not open once the connection service stopped, though Conch
        keeps its transport set.
        """
        connection = ShareConnection(reactor=MemoryReactorClock())
        self.assertFalse(connection.isOpen())

        class SSHTransport:
            transport = StringTransport()

        connection.transport = SSHTransport()
        self.assertTrue(connection.isOpen())
        connection.serviceStopped()
        self.assertIsNotNone(connection.transport)
        self.assertFalse(connection.isOpen())

    def test_socketClosed(self) -> None:
        """
        A transport whose socket is no longer connected is not open.
        """
        connection = ShareConnection(reactor=MemoryReactorClock())
        tcp = StringTransport()
        tcp.connected = False

        class SSHTransport:
            transport = tcp

        connection.transport = SSHTransport()
        self.assertFalse(connection.isOpen())
