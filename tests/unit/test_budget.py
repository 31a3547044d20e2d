"""
The process-wide memory budget (L{conchshare.budget}): SFTP requests in
flight shared by servers, large packets and waiting replies within their
shares, giving memory back once traffic stops.
"""

from __future__ import annotations

import os
import struct

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from conchshare.budget import LARGEST_REQUEST, PACKET_WAIT, MemoryBudget, trimMemory
from conchshare.sftp import wire
from conchshare.sftp.core import SFTPServerCore
from conchshare.sftp.protocol import SFTPServerProtocol
from tests.support.sftpfake import FakeSFTPServer


class InFlightTests(unittest.SynchronousTestCase):
    def test_aloneKeepsItsBound(self) -> None:
        """
        One server alone keeps its own bound: one client is served as
        before.
        """
        budget = MemoryBudget(replies=4 * LARGEST_REQUEST)
        server = SFTPServerProtocol(FakeSFTPServer(), memoryBudget=budget)
        server.makeConnection(StringTransport())
        assert server.core is not None
        self.assertEqual(server.core._maxInFlight, 64)

    def test_shared(self) -> None:
        """
        Several servers share the reply budget, at least one request each;
        when they end, the others get their share back.
        """
        budget = MemoryBudget(replies=4 * LARGEST_REQUEST)
        servers = [SFTPServerProtocol(FakeSFTPServer(), memoryBudget=budget) for _ in range(8)]
        for server in servers:
            server.makeConnection(StringTransport())
        limits = {server.core._maxInFlight for server in servers if server.core}
        self.assertEqual(limits, {1})
        for server in servers[2:]:
            server.connectionLost(None)
        limits = {server.core._maxInFlight for server in servers[:2] if server.core}
        self.assertEqual(limits, {2})
        servers[1].connectionLost(None)
        assert servers[0].core is not None
        self.assertEqual(servers[0].core._maxInFlight, 64)

    def test_neverAboveItsOwnBound(self) -> None:
        """
        A server made with a lower C{maxInFlight} keeps it.
        """
        budget = MemoryBudget()
        server = SFTPServerProtocol(FakeSFTPServer(), maxInFlight=4, memoryBudget=budget)
        server.makeConnection(StringTransport())
        assert server.core is not None
        self.assertEqual(server.core._maxInFlight, 4)


class TrimTests(unittest.SynchronousTestCase):
    def test_trimOnceAfterTraffic(self) -> None:
        """
        Memory is given back once, at the first check that finds no traffic
        since the one before; not again until traffic comes back.
        """
        trims: list[None] = []
        budget = MemoryBudget(trim=lambda: trims.append(None))
        self.addCleanup(budget.stop)
        self.assertFalse(budget.checkIdle())
        budget._moved += 1  # as touch() does, without its thread
        self.assertFalse(budget.checkIdle())  # traffic since the last check
        self.assertTrue(budget.checkIdle())
        self.assertFalse(budget.checkIdle())
        self.assertEqual(len(trims), 1)
        budget._moved += 1
        budget.checkIdle()
        self.assertTrue(budget.checkIdle())
        self.assertEqual(len(trims), 2)

    def test_trimMemory(self) -> None:
        """
        On glibc, free memory can be given back.
        """
        import platform

        if platform.libc_ver()[0] != "glibc":
            raise unittest.SkipTest("not glibc")
        self.assertTrue(trimMemory())


class _Client:
    """
    One SFTP core with its own in-memory avatar, sharing C{budget}'s packet
    share; records what it writes and whether its reading is paused.
    """

    def __init__(self, budget: MemoryBudget) -> None:
        self.avatar = FakeSFTPServer()
        self.out = bytearray()
        self.paused = False
        self.core = SFTPServerCore(
            self.avatar,
            self.out.extend,
            pauseReading=self._pause,
            resumeReading=self._resume,
            memory=budget,
        )
        self.core.dataReceived(_packet(wire.FXP_INIT, _u32(3)))
        self.core.dataReceived(
            _request(
                wire.FXP_OPEN,
                1,
                _s(b"/f") + _u32(wire.FXF_WRITE | wire.FXF_CREAT) + _u32(0),
            )
        )
        self.handle = self.replies()[-1][9:]

    def _pause(self) -> None:
        self.paused = True

    def _resume(self) -> None:
        self.paused = False

    def replies(self) -> list[bytes]:
        """
        The packets written since the last call.
        """
        out = bytes(self.out)
        self.out.clear()
        packets = []
        while out:
            (length,) = struct.unpack(">I", out[:4])
            packets.append(out[4 : 4 + length])
            out = out[4 + length :]
        return packets

    def write(self, data: bytes) -> bytes:
        """
        The bytes of a WRITE request of C{data} at offset 0, id 2.
        """
        return _request(wire.FXP_WRITE, 2, _s(self.handle) + struct.pack(">Q", 0) + _s(data))

    def written(self) -> bytes:
        return bytes(self.avatar.lookup(b"/f").data)


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _s(b: bytes) -> bytes:
    return _u32(len(b)) + b


def _packet(kind: int, body: bytes) -> bytes:
    return _u32(len(body) + 1) + bytes([kind]) + body


def _request(kind: int, rid: int, body: bytes) -> bytes:
    return _packet(kind, _u32(rid) + body)


class PacketShareTests(unittest.SynchronousTestCase):
    """
    Large packets (WRITE data) of every SFTP server together stay within
    the budget's packet share: a server whose packet does not fit waits,
    reading paused, holding only what arrived, until another's packet is
    answered.
    """

    data = os.urandom(64 * 1024)

    def test_waitsForAnother(self) -> None:
        """
        The second client's WRITE waits, holding only the bytes that
        arrived, while the first one's is held by a slow write; once that
        is answered, the second is read and written.
        """
        budget = MemoryBudget(packets=100 * 1024, clock=Clock())
        first, second = _Client(budget), _Client(budget)
        gate: Deferred[None] = Deferred()
        first.avatar.gates["writeChunk"] = gate
        one, two = first.write(self.data), second.write(self.data)
        first.core.dataReceived(one[:1000])
        second.core.dataReceived(two[:1000])
        self.assertFalse(first.paused)
        self.assertTrue(second.paused)
        self.assertIsNone(second.core.receiveBuffer())  # nothing allocated
        self.assertEqual(second.core.buffered, 1000)
        first.core.dataReceived(one[1000:])
        self.assertTrue(second.paused)
        self.assertEqual(first.replies(), [])  # the write is held
        gate.callback(None)
        self.assertEqual(first.replies()[0][0], wire.FXP_STATUS)
        self.assertEqual(first.written(), self.data)
        self.assertFalse(second.paused)
        second.core.dataReceived(two[1000:])
        self.assertEqual(second.replies()[0][:9], bytes([wire.FXP_STATUS]) + _u32(2) + _u32(0))
        self.assertEqual(second.written(), self.data)
        self.assertEqual(budget.packetsHeld, 0)

    def test_lostGivesBack(self) -> None:
        """
        A client whose connection is lost part way into a large packet
        gives its share back (the next waiting client goes on), and one
        lost while waiting stops waiting.
        """
        budget = MemoryBudget(packets=100 * 1024, clock=Clock())
        first, second, third = _Client(budget), _Client(budget), _Client(budget)
        first.core.dataReceived(first.write(self.data)[:1000])
        second.core.dataReceived(second.write(self.data)[:1000])
        third.core.dataReceived(third.write(self.data)[:1000])
        self.assertEqual((second.paused, third.paused), (True, True))
        second.core.connectionLost()
        first.core.connectionLost()
        self.assertFalse(third.paused)
        third.core.dataReceived(third.write(self.data)[1000:])
        self.assertEqual(third.written(), self.data)
        self.assertEqual(budget.packetsHeld, 0)

    def test_alwaysOne(self) -> None:
        """
        A packet larger than the share is still granted when no other is
        held; later ones wait in the order they came.
        """
        budget = MemoryBudget(packets=10, clock=Clock())
        granted: list[str] = []
        self.assertTrue(budget.takePacket(100, lambda: granted.append("first")))
        self.assertFalse(budget.takePacket(5, lambda: granted.append("second")))
        self.assertFalse(budget.takePacket(5, lambda: granted.append("third")))
        budget.releasePacket(100)
        self.assertEqual(granted, ["second", "third"])
        self.assertEqual(budget.packetsHeld, 10)

    def test_stalledHolderDoesNotStarveOthers(self) -> None:
        """
        Clients that begin large packets and never finish them hold the
        whole share: another client's WRITE waits at most L{PACKET_WAIT}
        seconds, then is granted over the share, read and written.
        """
        clock = Clock()
        budget = MemoryBudget(packets=100 * 1024, clock=clock)
        stalled, other = _Client(budget), _Client(budget)
        stalled.core.dataReceived(stalled.write(self.data)[:1000])  # and no more
        two = other.write(self.data)
        other.core.dataReceived(two[:1000])
        self.assertTrue(other.paused)
        clock.advance(PACKET_WAIT - 0.01)
        self.assertTrue(other.paused)
        clock.advance(0.01)
        self.assertFalse(other.paused)
        other.core.dataReceived(two[1000:])
        self.assertEqual(other.replies()[0][:9], bytes([wire.FXP_STATUS]) + _u32(2) + _u32(0))
        self.assertEqual(other.written(), self.data)
        stalled.core.connectionLost()
        self.assertEqual(budget.packetsHeld, 0)

    def test_grantedInTimeNotAgain(self) -> None:
        """
        A packet granted when another's is given back is not granted a
        second time when its wait would have run out.
        """
        clock = Clock()
        budget = MemoryBudget(packets=10, clock=clock)
        granted: list[str] = []
        self.assertTrue(budget.takePacket(10, lambda: granted.append("first")))
        self.assertFalse(budget.takePacket(10, lambda: granted.append("second")))
        budget.releasePacket(10)
        clock.advance(PACKET_WAIT)
        self.assertEqual(granted, ["second"])
        self.assertEqual(budget.packetsHeld, 10)
        self.assertEqual(clock.getDelayedCalls(), [])


class _Queue:
    """
    A channel as the budget sees it: bytes waiting to be sent, and a note
    when it is told there is room.
    """

    def __init__(self, budget: MemoryBudget, pending: int = 0) -> None:
        self.pendingOutput = pending
        self.rooms = 0
        budget.addChannel(self)
        budget.addReplyChannel(self)

    def outputRoom(self) -> None:
        self.rooms += 1


class OutputShareTests(unittest.SynchronousTestCase):
    """
    Replies waiting in channels, all together, within the reply share.
    """

    def test_alone(self) -> None:
        """
        One channel alone is never held by the share.
        """
        budget = MemoryBudget(replies=LARGEST_REQUEST)
        _Queue(budget, 10 * LARGEST_REQUEST)
        self.assertFalse(budget.outputFull())

    def test_oneServerAlone(self) -> None:
        """
        One SFTP server alone is never held either, though two channels
        carry its replies (in ssh mode, its own and the one that carries
        its nested SSH connection); with a second server the share holds.
        """

        class Server:
            def setMaxInFlight(self, limit: int) -> None:
                pass

        budget = MemoryBudget(replies=LARGEST_REQUEST)
        channels = [_Queue(budget, 10 * LARGEST_REQUEST) for _ in range(2)]
        first = Server()
        budget.addServer(first)
        self.assertFalse(budget.outputFull())
        second = Server()
        budget.addServer(second)
        self.assertTrue(budget.outputFull())
        self.assertEqual(len(channels), 2)

    def test_fullThenRoom(self) -> None:
        """
        With several channels, the share is full once one more reply would
        not fit; channels that waited are told of room first come first,
        as many as it fits.
        """
        budget = MemoryBudget(replies=4 * LARGEST_REQUEST)
        busy = _Queue(budget, 3 * LARGEST_REQUEST + 1)
        waiting = [_Queue(budget) for _ in range(3)]
        self.assertTrue(budget.outputFull())
        for channel in waiting:
            budget.waitForOutput(channel)
        budget.outputSent()
        self.assertEqual([c.rooms for c in waiting], [1, 0, 0])
        busy.pendingOutput = LARGEST_REQUEST
        self.assertFalse(budget.outputFull())
        budget.outputSent()
        self.assertEqual([c.rooms for c in waiting], [1, 1, 1])
