"""
L{ForwardedChannel} and L{ChannelGroup} on a L{ShareConnection} whose SSH
transport records packets: pausing keeps bytes and banks window credit,
holds writes, resumes in order.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

from twisted.conch.ssh import common
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_CLOSE,
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_OPEN_CONFIRMATION,
    MSG_CHANNEL_OPEN_FAILURE,
    MSG_CHANNEL_WINDOW_ADJUST,
)
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from conchshare.budget import LARGEST_REQUEST, MIN_WINDOW, MemoryBudget
from conchshare.tunnel.channels import (
    CARRIER,
    MAX_PACKET,
    OUTPUT_HIGH,
    TRANSPORT,
    WINDOW_SIZE,
    ChannelGroup,
    ForwardedChannel,
    GroupPressure,
)
from conchshare.tunnel.connection import Listener, ShareConnection
from conchshare.tunnel.nested import NestedConnection, NestedSessionChannel, _NestedUser


class RecordingProtocol(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class FakeSSHTransport:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def take(self, kind: int) -> list[bytes]:
        found = [p for k, p in self.packets if k == kind]
        self.packets = [(k, p) for k, p in self.packets if k != kind]
        return found


class Harness:
    """
    A ShareConnection with one TCP listener; the 'server' opens channels.
    """

    def __init__(
        self, protocolFactory: Any = RecordingProtocol, budget: MemoryBudget | None = None
    ) -> None:
        self.clock = Clock()
        self.conn = ShareConnection(reactor=self.clock, memoryBudget=budget or MemoryBudget())
        self.transport = FakeSSHTransport()
        self.conn.transport = self.transport
        self.protocols: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.conn.addObserver(self.events.append)

        def factory() -> Any:
            p = protocolFactory()
            self.protocols.append(p)
            return p

        self.listener = Listener("raw", factory, port=4000)
        self.conn.listeners.append(self.listener)
        self.conn._routes[self.listener.routeKey()] = self.listener
        self.nextRemote = 100

    def open(self, window: int = 1 << 30, port: int = 4000) -> ForwardedChannel | None:
        remote = self.nextRemote
        self.nextRemote += 1
        data = (
            common.NS(b"127.0.0.1")
            + struct.pack(">L", port)
            + common.NS(b"127.0.0.1")
            + struct.pack(">L", 5555)
        )
        self.conn.ssh_CHANNEL_OPEN(
            common.NS(b"forwarded-tcpip") + struct.pack(">3L", remote, window, MAX_PACKET) + data
        )
        if self.transport.take(MSG_CHANNEL_OPEN_FAILURE):
            return None
        (confirm,) = self.transport.take(MSG_CHANNEL_OPEN_CONFIRMATION)
        local = struct.unpack(">4L", confirm[:16])[1]
        channel: ForwardedChannel = self.conn.channels[local]
        return channel

    def send(self, channel: ForwardedChannel, data: bytes) -> None:
        for i in range(0, len(data), MAX_PACKET):
            chunk = data[i : i + MAX_PACKET]
            self.conn.ssh_CHANNEL_DATA(struct.pack(">L", channel.id) + common.NS(chunk))

    def credit(self) -> int:
        return sum(
            struct.unpack(">2L", p)[1] for p in self.transport.take(MSG_CHANNEL_WINDOW_ADJUST)
        )

    def sent(self) -> bytes:
        return b"".join(common.getNS(p[4:])[0] for p in self.transport.take(MSG_CHANNEL_DATA))


class ForwardedChannelTests(unittest.SynchronousTestCase):
    def test_interfaces(self) -> None:
        h = Harness()
        channel = h.open()
        assert channel is not None
        self.assertTrue(verifyObject(IPushProducer, channel))
        self.assertTrue(verifyObject(IConsumer, channel))
        self.assertEqual(channel.localWindowSize, WINDOW_SIZE)

    def test_deliversAndCreditsAfterConsumption(self) -> None:
        """
        Bytes reach the protocol; credit is granted only once half the
        window was consumed, for exactly what was consumed.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        h.send(channel, b"a" * (WINDOW_SIZE // 2 - MAX_PACKET))
        self.assertEqual(h.credit(), 0)
        h.send(channel, b"b" * MAX_PACKET)
        self.assertEqual(h.credit(), WINDOW_SIZE // 2)
        self.assertEqual(
            b"".join(h.protocols[0].received),
            b"a" * (WINDOW_SIZE // 2 - MAX_PACKET) + b"b" * MAX_PACKET,
        )

    def test_pausedKeepsBytesAndBanksCredit(self) -> None:
        """
        A paused channel hands nothing over and grants nothing; resume
        delivers in order and sends the banked credit.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        self.assertEqual(h.conn.pause(), 1)
        data = bytes(range(256)) * (WINDOW_SIZE // 256)
        h.send(channel, data)
        self.assertEqual(h.protocols[0].received, [])
        self.assertEqual(h.credit(), 0)
        self.assertEqual(channel.keptBytes, WINDOW_SIZE)
        self.assertEqual(channel.localWindowLeft, 0)
        self.assertEqual(h.conn.resume(), 1)
        # Delivery happens on the next reactor turn, never inside resume.
        self.assertEqual(h.protocols[0].received, [])
        h.clock.advance(0)
        self.assertEqual(b"".join(h.protocols[0].received), data)
        self.assertEqual(h.credit(), WINDOW_SIZE)
        self.assertEqual([e["event"] for e in h.events][-2:], ["paused", "resumed"])
        self.assertEqual(h.events[-1]["channels"], 1)

    def test_peerOverrunningWindowIsCut(self) -> None:
        """
        While paused a peer cannot make us keep more than one window.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        h.conn.pause()
        h.send(channel, b"x" * (WINDOW_SIZE + MAX_PACKET))
        self.assertLessEqual(channel.keptBytes, WINDOW_SIZE)

    def test_writesHeldWhilePaused(self) -> None:
        """
        Writes made while group-paused are sent on resume, in order.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        channel.write(b"one")
        # A write smaller than a packet is a whole message: sent at once.
        self.assertEqual(h.sent(), b"one")
        h.conn.pause()
        channel.write(b"two")
        channel.writeSequence([b"three", b"four"])
        self.assertEqual(h.sent(), b"")
        h.conn.resume()
        self.assertEqual(h.sent(), b"twothreefour")
        self.assertEqual(channel.bytesOut, len(b"onetwothreefour"))

    def test_writesHeldWhileTheTransportIsFull(self) -> None:
        """
        While the TCP send buffer is full, writes wait in the channel (where
        they count as pending output) instead of piling up in the socket's
        buffer; they are sent, in order, once it drains.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        pressure = GroupPressure(h.conn.group, TRANSPORT)
        pressure.pauseProducing()
        channel.write(b"one")
        channel.write(b"x" * (OUTPUT_HIGH + 1))
        self.assertEqual(h.sent(), b"")
        self.assertEqual(channel.pendingOutput, 3 + OUTPUT_HIGH + 1)
        self.assertTrue(channel.paused)
        pressure.resumeProducing()
        self.assertEqual(h.sent(), b"one" + b"x" * (OUTPUT_HIGH + 1))

    def test_writesPackedIntoFullPackets(self) -> None:
        """
        Writes bigger than a packet are sent as a stream of full packets:
        the partial tail of one waits for the next write or the end of the
        reactor turn (a reply header written with its data shares a packet
        with it).
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        data = [b"h" * 13, b"d" * MAX_PACKET] * 4
        for i in range(0, len(data), 2):
            channel.writeSequence(data[i : i + 2])
        packets = [common.getNS(p[4:])[0] for p in h.transport.take(MSG_CHANNEL_DATA)]
        self.assertEqual([len(p) for p in packets], [MAX_PACKET] * 4)
        h.clock.advance(0)
        packets += [common.getNS(p[4:])[0] for p in h.transport.take(MSG_CHANNEL_DATA)]
        self.assertEqual(b"".join(packets), b"".join(data))
        self.assertEqual([len(p) for p in packets], [MAX_PACKET] * 4 + [52])

    def test_smallWriteSentAtOnce(self) -> None:
        """
        A write smaller than a packet goes out at once, together with the
        partial tail of a bigger write before it, in order.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        channel.write(b"d" * (MAX_PACKET + 5))
        self.assertEqual(h.sent(), b"d" * MAX_PACKET)
        channel.write(b"reply")
        self.assertEqual(h.sent(), b"d" * 5 + b"reply")
        h.clock.advance(0)
        self.assertEqual(h.sent(), b"")

    def test_writesRespectRemoteWindow(self) -> None:
        """
        Nothing is sent beyond the peer's window; window adjustments send
        the rest.  Past OUTPUT_HIGH queued, the channel stops taking input
        and pauses the protocol's producer.
        """

        class Producer:
            paused = 0

            def pauseProducing(self) -> None:
                self.paused += 1

            def resumeProducing(self) -> None:
                self.paused -= 1

            def stopProducing(self) -> None:
                pass

        h = Harness()
        channel = h.open(window=1000)
        assert channel is not None
        producer = Producer()
        channel.registerProducer(producer, True)
        channel.write(b"x" * (OUTPUT_HIGH + 2000))
        self.assertEqual(len(h.sent()), 1000)
        self.assertEqual(producer.paused, 1)
        h.send(channel, b"request")
        self.assertEqual(h.protocols[0].received, [])
        h.conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", channel.id, OUTPUT_HIGH))
        self.assertEqual(len(h.sent()), OUTPUT_HIGH)
        self.assertEqual(producer.paused, 0)
        h.clock.advance(0)
        self.assertEqual(h.protocols[0].received, [b"request"])

    def test_protocolBackpressure(self) -> None:
        """
        pauseProducing by the protocol stops delivery and credit;
        resumeProducing restores both.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        channel.pauseProducing()
        h.send(channel, b"y" * WINDOW_SIZE)
        self.assertEqual((h.protocols[0].received, h.credit()), ([], 0))
        # Group pause and protocol pause are separate reasons.
        h.conn.pause()
        channel.resumeProducing()
        self.assertEqual(h.protocols[0].received, [])
        h.conn.resume()
        h.clock.advance(0)
        self.assertEqual(len(b"".join(h.protocols[0].received)), WINDOW_SIZE)
        self.assertEqual(h.credit(), WINDOW_SIZE)

    def test_openWhilePausedStartsPaused(self) -> None:
        h = Harness()
        h.conn.pause()
        channel = h.open()
        assert channel is not None
        h.send(channel, b"z")
        self.assertEqual(h.protocols[0].received, [])
        self.assertEqual(h.conn.resume(), 1)
        h.clock.advance(0)
        self.assertEqual(h.protocols[0].received, [b"z"])

    def test_noDeliveryInsideResumeProducing(self) -> None:
        """
        A protocol that resumes its transport from inside its own processing
        (as the SFTP server does when a request completes) is not re-entered
        with dataReceived; the kept bytes come on the next reactor turn.
        """

        class Busy(RecordingProtocol):
            processing = False
            reentered = False

            def dataReceived(self, data: bytes) -> None:
                self.reentered = self.reentered or self.processing
                super().dataReceived(data)
                self.transport.pauseProducing()

            def finish(self) -> None:
                self.processing = True
                self.transport.resumeProducing()
                self.processing = False

        h = Harness(Busy)
        channel = h.open()
        assert channel is not None
        h.send(channel, b"first")
        h.send(channel, b"second")
        protocol = h.protocols[0]
        self.assertEqual(protocol.received, [b"first"])
        protocol.finish()
        self.assertEqual(protocol.received, [b"first"])
        h.clock.advance(0)
        self.assertEqual(protocol.received, [b"first", b"second"])
        self.assertFalse(protocol.reentered)

    def test_unknownListenerRefused(self) -> None:
        h = Harness()
        self.assertIsNone(h.open(port=4001))
        self.assertEqual(h.protocols, [])

    def test_closeEvents(self) -> None:
        """
        Closing reports channel-closed with byte counts and tells the protocol.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        h.send(channel, b"abc")
        channel.write(b"de")
        h.conn.ssh_CHANNEL_CLOSE(struct.pack(">L", channel.id))
        self.assertTrue(h.transport.take(MSG_CHANNEL_CLOSE))
        self.assertIsNotNone(h.protocols[0].lost)
        self.assertEqual(
            [(e["event"], e.get("bytes_in"), e.get("bytes_out")) for e in h.events],
            [("channel-opened", None, None), ("channel-closed", 3, 2)],
        )
        self.assertEqual(h.events[0]["origin"], "127.0.0.1:5555")
        self.assertEqual(len(h.conn.group), 0)

    def test_peerCloseWithBlockedOutput(self) -> None:
        """
        When the peer closes while our output waits for window (or for a
        resume), the channel closes at once instead of waiting forever.
        """
        h = Harness()
        channel = h.open(window=10)
        assert channel is not None
        h.conn.pause()
        channel.write(b"more than ten bytes")
        h.conn.ssh_CHANNEL_CLOSE(struct.pack(">L", channel.id))
        self.assertEqual(len(h.transport.take(MSG_CHANNEL_CLOSE)), 1)
        self.assertTrue(channel.isClosed)
        self.assertEqual(len(h.conn.group), 0)

    def test_abortWhilePaused(self) -> None:
        """
        abort closes a paused channel with held writes at once.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        h.conn.pause()
        channel.write(b"held")
        channel.loseConnection()
        self.assertEqual(h.transport.take(MSG_CHANNEL_CLOSE), [])
        channel.abort()
        self.assertEqual(len(h.transport.take(MSG_CHANNEL_CLOSE)), 1)


class LargeReplyTests(unittest.SynchronousTestCase):
    def test_restNeverCopied(self) -> None:
        """
        A 16 MiB reply sent in 32 KiB packets, 1 MiB of window at a time,
        arrives whole and in order, and the part not yet sent is never
        copied: the memory allocated meanwhile stays far below the reply's
        size (before, every packet taken copied the rest of the reply: 8 GiB
        copied in all, 16 MiB more memory at once).
        """
        size = 16 << 20
        reply = bytes(range(256)) * (size // 256)
        h = Harness()
        channel = h.open(window=1 << 20)
        assert channel is not None
        h.sent()
        received = 0
        tracemalloc.start()
        try:
            channel.write(reply)
            while True:
                data = h.sent()
                if not data:
                    break
                self.assertEqual(data, reply[received : received + len(data)])
                received += len(data)
                h.conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", channel.id, 1 << 20))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(received, size)
        self.assertLess(peak, 4 << 20)

    def test_writesSplitAcrossPackets(self) -> None:
        """
        Writes of mixed sizes, sent in packets cut at odd places by the
        peer's window (parts of one write in several packets, several
        writes in one packet), arrive whole and in order.
        """
        h = Harness()
        channel = h.open(window=1000)
        assert channel is not None
        h.sent()
        writes = [b"a" * 50000, b"b" * 10, b"c" * 70000, b"d", b"e" * 40000]
        for data in writes:
            channel.write(data)
        received = h.sent()
        while len(received) < sum(map(len, writes)):
            h.conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", channel.id, 7777))
            h.clock.advance(0)
            received += h.sent()
        self.assertEqual(received, b"".join(writes))


class BudgetWindowTests(unittest.SynchronousTestCase):
    """
    The receive windows of all channels come from one budget.
    """

    def test_oneChannelGetsTheFullWindow(self) -> None:
        """
        A channel alone gets L{WINDOW_SIZE} and has it restored as it is
        consumed: one channel is as fast as before.
        """
        h = Harness()
        channel = h.open()
        assert channel is not None
        self.assertEqual(channel.localWindowSize, WINDOW_SIZE)
        h.send(channel, b"a" * (WINDOW_SIZE // 2))
        self.assertEqual(h.credit(), WINDOW_SIZE // 2)

    def test_windowsShareTheBudget(self) -> None:
        """
        Many channels, each sent as much as it may: the bytes the peer may
        have in flight toward us (window left plus kept) stay within the
        budget, never below L{MIN_WINDOW} a channel; a channel that closes
        gives its share back to the others.
        """
        h = Harness()
        budget = h.conn.memoryBudget
        channels = [h.open() for _ in range(16)]
        for channel in channels:
            assert channel is not None
            channel.pause("test")
        self.assertLessEqual(
            sum(c.localWindowSize for c in channels if c is not None),
            budget.receive + 16 * MIN_WINDOW,
        )
        # Each fills what it was given, then is resumed and consumes it.
        for channel in channels:
            assert channel is not None
            h.send(channel, b"x" * channel.localWindowLeft)
            channel.resume("test")
            h.clock.advance(0)
        h.credit()
        outstanding = sum(c.localWindowLeft + c.keptBytes for c in channels if c is not None)
        self.assertLessEqual(outstanding, budget.receive)
        for channel in channels:
            assert channel is not None
            self.assertGreaterEqual(channel.localWindowSize, MIN_WINDOW)
            self.assertLessEqual(channel.localWindowLeft, budget.receive // 16)
        for channel in channels[1:]:
            assert channel is not None
            channel.closed()
        first = channels[0]
        assert first is not None
        h.send(first, b"y" * first.localWindowLeft)
        self.assertEqual(first.localWindowSize, WINDOW_SIZE)
        self.assertGreater(first.localWindowLeft, WINDOW_SIZE // 2)

    def test_floor(self) -> None:
        """
        However many channels there are, a new one can take two packets.
        """
        budget = MemoryBudget(receive=1024)
        self.assertEqual(budget.window(), MIN_WINDOW)


class ChannelGroupTests(unittest.SynchronousTestCase):
    def test_counts(self) -> None:
        group = ChannelGroup()
        a, b = ForwardedChannel(), ForwardedChannel()
        group.add(a)
        self.assertEqual(group.pause(), 1)
        group.add(b)
        self.assertTrue(b.paused)
        self.assertEqual(group.pause(), 0)
        self.assertEqual(group.resume(), 2)
        self.assertFalse(a.paused or b.paused)
        self.assertEqual(group.resume(), 0)

    def test_otherReasons(self) -> None:
        """
        A reason set on the group (the TCP send buffer is full) applies to
        channels added while it is set, and clearing it resumes them.
        """
        group = ChannelGroup()
        a, b = ForwardedChannel(), ForwardedChannel()
        group.add(a)
        group.setReason("transport", True)
        group.add(b)
        self.assertTrue(a.paused and b.paused)
        group.setReason("transport", False)
        self.assertFalse(a.paused or b.paused)


@implementer(IPushProducer)
class Replier(Protocol):
    """
    What an SFTP server is to its channel: it joins the budget as a server,
    its channel carries replies, and it is the channel's producer (paused:
    it makes no more replies).
    """

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.paused = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.budget.addServer(self)
        transport.carriesReplies()
        transport.registerProducer(self, True)

    def setMaxInFlight(self, limit: int) -> None:
        pass

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class _CarriedTransport:
    """
    The nested SSH server transport as its connection sees it: packets go,
    as bytes, to the forwarded channel that carries it (its transport).
    """

    def __init__(self, carrier: ForwardedChannel, avatar: Any) -> None:
        self.transport = carrier
        self.avatar = avatar

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.transport.write(bytes((kind,)) + payload)


class Nested:
    """
    ssh mode on a L{Harness}: a nested SSH connection served on a forwarded
    channel (the carrier), its session channels each serving a L{Replier}.
    """

    def __init__(self, h: Harness, window: int = 1 << 30) -> None:
        budget = h.conn.memoryBudget
        carrier = h.open(window=window)
        assert carrier is not None
        self.carrier = carrier
        self.repliers: list[Replier] = []

        def sftp() -> Replier:
            replier = Replier(budget)
            self.repliers.append(replier)
            return replier

        self.conn = NestedConnection()
        self.conn.memoryBudget = budget  # type: ignore[attr-defined]
        self.conn.transport = _CarriedTransport(carrier, _NestedUser(sftp))
        self.conn.serviceStarted()

    def open(self) -> tuple[NestedSessionChannel, Replier]:
        """
        The nested client opens a session channel and starts C{sftp} on it.
        """
        self.conn.ssh_CHANNEL_OPEN(
            common.NS(b"session") + struct.pack(">3L", 7, 1 << 30, MAX_PACKET)
        )
        channel: NestedSessionChannel = self.conn.channels[self.conn.localChannelID - 1]
        self.assertRequest = channel.request_subsystem(common.NS(b"sftp"))
        return channel, self.repliers[-1]


class NestedConnectionTests(unittest.SynchronousTestCase):
    """
    ssh mode: the forwarded channel carries a nested SSH connection, whose
    session channels carry the SFTP replies.
    """

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IPushProducer, GroupPressure(ChannelGroup(), CARRIER)))

    def test_heldWhileTheCarrierCannotSend(self) -> None:
        """
        While the TCP connection to the SSH server is full, the servers of
        the nested channels make no more replies (before, they went on, and
        their replies piled up in the carrying channels: +23 MiB with 64
        clients); a reply already under way still goes to the carrier,
        where it waits, and a channel opened meanwhile starts held.  Once
        the connection drains, all of it is sent and the servers go on.
        """
        h = Harness()
        nested = Nested(h)
        inner, replier = nested.open()
        self.assertFalse(replier.paused)
        h.sent()
        tcp = GroupPressure(h.conn.group, TRANSPORT)
        tcp.pauseProducing()
        self.assertTrue(replier.paused)
        inner.write(b"r" * 100)
        self.assertEqual(h.sent(), b"")
        self.assertGreater(nested.carrier.pendingOutput, 100)
        _, later = nested.open()
        self.assertTrue(later.paused)
        tcp.resumeProducing()
        self.assertFalse(replier.paused or later.paused)
        self.assertIn(b"r" * 100, h.sent())

    def test_carrierCountsInTheReplyShare(self) -> None:
        """
        With several clients, the bytes waiting in a carrying channel (its
        peer's window is spent) count in the reply share: once they fill
        it, that nested connection's servers make no more replies, while
        the carrier still takes input (the nested channels' window credit
        comes that way); once they are sent, the servers go on.
        """
        h = Harness(budget=MemoryBudget(replies=2 * LARGEST_REQUEST))
        slow = Nested(h, window=1000)
        inner, replier = slow.open()
        _, other = Nested(h).open()
        h.sent()
        inner.write(b"r" * 2 * LARGEST_REQUEST)
        self.assertGreater(slow.carrier.pendingOutput, LARGEST_REQUEST)
        self.assertTrue(replier.paused)
        self.assertFalse(other.paused)
        self.assertFalse(slow.carrier.paused)
        h.send(slow.carrier, b"window credit")
        self.assertEqual(h.protocols[0].received, [b"window credit"])
        h.conn.ssh_CHANNEL_WINDOW_ADJUST(struct.pack(">2L", slow.carrier.id, 1 << 20))
        self.assertEqual(slow.carrier.pendingOutput, 0)
        h.clock.advance(0)
        self.assertFalse(replier.paused)

    def test_oneClientAloneNotHeld(self) -> None:
        """
        One client alone (its channel and the carrier of its nested
        connection) is never held by the reply share.
        """
        h = Harness(budget=MemoryBudget(replies=2 * LARGEST_REQUEST))
        nested = Nested(h, window=1000)
        inner, replier = nested.open()
        inner.write(b"r" * (4 * LARGEST_REQUEST))
        self.assertFalse(replier.paused)
