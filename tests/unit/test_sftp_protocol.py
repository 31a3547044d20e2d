"""
Tests for L{conchshare.sftp.protocol}: the core on a Twisted transport.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from conchshare.sftp import wire
from conchshare.sftp.avatar import ShareSFTPServer
from conchshare.sftp.engine import Fed, OrderedEngine
from conchshare.sftp.protocol import SFTPServerFactory, SFTPServerProtocol, subsystemFactory
from conchshare.shares import ShareSet
from tests.support.sftpfake import FakeSFTPServer
from tests.support.wire import INIT, NO_ATTRS, READ, name1, ok, packets, request, s, u32


def connect(avatar: FakeSFTPServer, **options: int) -> tuple[SFTPServerProtocol, StringTransport]:
    protocol = SFTPServerProtocol(avatar, **options)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(INIT)
    transport.clear()
    return protocol, transport


class ProtocolTests(SynchronousTestCase):
    def test_serves(self) -> None:
        """
        Requests fed to the protocol are answered on its transport.
        """
        protocol, transport = connect(FakeSFTPServer())
        protocol.dataReceived(request(16, 1, s(b"/a/..")))
        self.assertEqual(transport.value(), name1(1, b"/"))

    def test_feedsThroughTheEngine(self) -> None:
        """
        With an avatar that names its engine (L{IEngineAvatar}), every
        chunk received is fed to the core through the engine's
        L{ICallEngine.feed} (which holds wake-ups and may wait briefly),
        marked small below 64 KiB.
        """
        fed: list[tuple[int, bool]] = []

        class RecordingEngine(OrderedEngine):
            def feed(self, core: Fed, data: bytes, small: bool) -> None:
                fed.append((len(data), small))
                super().feed(core, data, small)

        base = self.mktemp()
        os.makedirs(os.path.join(base, "s"))
        avatar = ShareSFTPServer(ShareSet.fromSpecs(["s"], cwd=base), engine=RecordingEngine())
        protocol = SFTPServerProtocol(avatar)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(INIT)
        big = request(16, 1, s(b"/" * 70000))
        protocol.dataReceived(big)
        self.assertEqual(fed, [(len(INIT), True), (len(big), False)])
        self.assertIn(b"\x00\x00\x00\x01", transport.value())

    def test_slowCallDoesNotStallOtherConnection(self) -> None:
        """
        A deliberately slow avatar call on one connection does not delay
        another connection's requests, even with the same avatar.
        """
        avatar = FakeSFTPServer()
        avatar.create(b"/f")
        slow, slowTransport = connect(avatar)
        fast, fastTransport = connect(avatar)
        gate: Deferred[None] = Deferred()
        avatar.gates["makeDirectory"] = gate
        slow.dataReceived(request(14, 1, s(b"/d") + NO_ATTRS))
        del avatar.gates["makeDirectory"]
        fast.dataReceived(request(16, 2, s(b"/x")) + request(14, 3, s(b"/e") + NO_ATTRS))
        self.assertEqual(fastTransport.value(), name1(2, b"/x") + ok(3))
        self.assertEqual(slowTransport.value(), b"")
        gate.callback(None)
        self.assertEqual(slowTransport.value(), ok(1))

    def test_backpressurePausesTransport(self) -> None:
        """
        Past the bound of requests in flight the transport is paused (no
        more reading); it resumes once they are answered.
        """
        avatar = FakeSFTPServer()
        avatar.create(b"/f")
        protocol, transport = connect(avatar, maxInFlight=8)
        gate: Deferred[None] = Deferred()
        avatar.gates["getAttrs"] = gate
        protocol.dataReceived(b"".join(request(17, rid, s(b"/f")) for rid in range(20)))
        self.assertEqual(transport.producerState, "paused")
        del avatar.gates["getAttrs"]
        gate.callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(packets(transport.value())), 20)

    def test_consumerFullPausesReading(self) -> None:
        """
        The protocol is a streaming producer for its transport: when the
        transport's write buffer is full, nothing new is dispatched and
        reading is paused.
        """
        protocol, transport = connect(FakeSFTPServer())
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(request(16, 1, s(b"/")))
        self.assertEqual(transport.value(), b"")
        protocol.resumeProducing()
        self.assertEqual(
            (transport.value(), transport.producerState), (name1(1, b"/"), "producing")
        )

    def test_oversizedPacketDisconnects(self) -> None:
        """
        A packet over the advertised limit closes the connection cleanly.
        """
        protocol, transport = connect(FakeSFTPServer())
        protocol.dataReceived(u32(wire.MAX_PACKET_LENGTH + 1) + b"\x06" + b"x" * 100)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_connectionLostClosesHandles(self) -> None:
        """
        Files and directories left open are closed when the connection is
        lost; whenClosed fires after that.
        """
        avatar = FakeSFTPServer()
        avatar.create(b"/f")
        protocol, transport = connect(avatar)
        protocol.dataReceived(
            request(3, 1, s(b"/f") + u32(READ) + NO_ATTRS) + request(11, 2, s(b"/"))
        )
        self.assertEqual((len(avatar.openFiles), len(avatar.openDirectories)), (1, 1))
        closed = protocol.whenClosed()
        gate: Deferred[None] = Deferred()
        avatar.gates["close"] = gate
        protocol.connectionLost()
        self.assertNoResult(closed)
        self.assertIsNone(transport.producer)
        gate.callback(None)
        self.successResultOf(closed)
        self.assertEqual((avatar.openFiles, avatar.openDirectories), ([], []))
        self.successResultOf(protocol.whenClosed())

    def test_readConnectionLost(self) -> None:
        """
        When the client closes its side, requests in flight are answered
        before the connection is closed.
        """
        avatar = FakeSFTPServer()
        protocol, transport = connect(avatar)
        gate: Deferred[None] = Deferred()
        avatar.gates["realPath"] = gate
        protocol.dataReceived(request(16, 1, s(b"/")))
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        gate.callback(None)
        self.assertEqual(transport.value(), name1(1, b"/"))
        self.assertTrue(transport.disconnecting)

    def test_factories(self) -> None:
        """
        SFTPServerFactory and subsystemFactory build protocols serving the
        given avatar.
        """
        avatar = FakeSFTPServer()
        protocol = SFTPServerFactory(avatar, maxInFlight=3).buildProtocol(None)
        self.assertIs(protocol.avatar, avatar)
        # Conch calls subsystem factories as factory(data, avatar=user).
        built = subsystemFactory(avatar)(b"\x00\x00\x00\x04sftp", avatar=object())
        self.assertIs(built.avatar, avatar)
        transport = StringTransport()
        built.makeConnection(transport)
        built.dataReceived(INIT)
        self.assertEqual(transport.value()[4], 2)
