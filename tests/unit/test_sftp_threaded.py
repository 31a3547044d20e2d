"""
Tests for L{conchshare.sftp.threaded}: the engine of C{conchshare
sftp-server}, on real pipes and the real share avatar, in-process.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from conchshare.fs import ConfinedFile
from conchshare.sftp import threaded, wire
from conchshare.sftp.threaded import SLOW, SPIN, ThreadedServer
from tests.support.engines import TIMEOUT, Served
from tests.support.wire import NO_ATTRS, READ, ok, request, s, u32


def rid(body: bytes) -> int:
    (requestId,) = struct.unpack(">I", body[:4])
    return requestId


class ThreadedServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.served = Served(os.path.realpath(self.mktemp()))
        self.addCleanup(self.served.stop)

    def test_answersAndEndsWithInput(self) -> None:
        """
        Requests are answered; once the input ends, the files left open are
        closed and serving ends.
        """
        served = self.served
        served.send(request(7, 1, s(b"/s/f")))
        kind, body = served.receive()
        self.assertEqual((kind, rid(body)), (wire.FXP_ATTRS, 1))
        served.send(request(3, 2, s(b"/s/f") + u32(READ) + NO_ATTRS))
        kind, body = served.receive()
        self.assertEqual((kind, rid(body)), (wire.FXP_HANDLE, 2))
        core = served.engine.core
        assert core is not None
        [opened] = core._files.values()
        self.assertTrue(served.stop())
        self.assertTrue(opened.confined.closed)

    def test_pipelinedInOrder(self) -> None:
        """
        Many requests sent at once get one reply each; those on one file
        apply in order (a READ after a WRITE sees it).
        """
        served = self.served
        served.send(request(3, 1, s(b"/s/f") + u32(READ | 2) + NO_ATTRS))
        kind, body = served.receive()
        handle = body[8 : 8 + struct.unpack(">I", body[4:8])[0]]
        burst = b"".join(
            request(6, 10 + n, s(handle) + struct.pack(">Q", 0) + s(b"%d" % n)) for n in range(10)
        )
        burst += request(5, 99, s(handle) + struct.pack(">QI", 0, 1))
        served.send(burst)
        replies = dict(
            (rid(body), (kind, body)) for kind, body in (served.receive() for _ in range(11))
        )
        self.assertEqual(sorted(replies), [*range(10, 20), 99])
        for n in range(10):
            self.assertEqual(replies[10 + n], (wire.FXP_STATUS, ok(10 + n)[5:]))
        kind, body = replies[99]
        self.assertEqual((kind, body[4:]), (wire.FXP_DATA, s(b"9")))

    def test_slowCallDoesNotStallOthers(self) -> None:
        """
        While one call is held up (a slow disk), other requests that only
        look are still read and answered: sent after it, or together with
        it.  (A request that changes something waits for it: see
        L{conchshare.sftp.ordering}.)
        """
        served = self.served
        served.settle()
        release = served.hold("realPath")
        try:
            served.send(request(16, 1, s(b"/s/f")))
            # Sent once the REALPATH is held up, in the thread that read it.
            self.assertTrue(served.held.wait(TIMEOUT))
            served.send(request(17, 2, s(b"/s/f")))
            kind, body = served.receive(timeout=1)
            self.assertEqual((kind, rid(body)), (wire.FXP_ATTRS, 2))
            served.send(request(16, 3, s(b"/s/f")) + request(17, 4, s(b"/s/f")))
            kind, body = served.receive(timeout=1)
            self.assertEqual((kind, rid(body)), (wire.FXP_ATTRS, 4))
        finally:
            release.set()
        replies = sorted(rid(body) for _, body in (served.receive(), served.receive()))
        self.assertEqual(replies, [1, 3])

    def test_heldWriteKeepsItsData(self) -> None:
        """
        A WRITE's data waits in the buffer it was read into while the
        write is held up (a slow disk); the requests read meanwhile go to
        another buffer (the next WRITE waits for the first: a writer), and
        each file gets exactly its data.
        """
        served = self.served
        served.settle()
        handles = []
        for n, name in enumerate((b"/s/a", b"/s/b"), 1):
            served.send(request(3, n, s(name) + u32(2 | 8) + NO_ATTRS))
            kind, body = served.receive()
            self.assertEqual(kind, wire.FXP_HANDLE)
            handles.append(body[8 : 8 + struct.unpack(">I", body[4:8])[0]])
        release = threading.Event()
        held = threading.Event()
        write = ConfinedFile.write

        def slow(confined: ConfinedFile, offset: int, data: bytes) -> None:
            if confined.virtualPath == b"/s/a":
                held.set()
                release.wait(TIMEOUT)
            write(confined, offset, data)

        ConfinedFile.write = slow  # type: ignore[method-assign]
        self.addCleanup(setattr, ConfinedFile, "write", write)
        first, second = b"A" * 30000, b"B" * 30000
        try:
            served.send(request(6, 3, s(handles[0]) + struct.pack(">Q", 0) + s(first)))
            self.assertTrue(held.wait(TIMEOUT))
            # Then a request the core answers itself: once answered, the
            # second WRITE was read too.
            served.send(
                request(6, 4, s(handles[1]) + struct.pack(">Q", 0) + s(second))
                + request(200, 5, s(b"limits@openssh.com"))
            )
            kind, body = served.receive()
            self.assertEqual((kind, rid(body)), (wire.FXP_EXTENDED_REPLY, 5))
        finally:
            release.set()
        replies = sorted(rid(body) for _, body in (served.receive(), served.receive()))
        self.assertEqual(replies, [3, 4])
        base = served.avatar.shares.shares[0].path
        for name, data in (("a", first), ("b", second)):
            with open(os.path.join(base, name), "rb") as f:
                self.assertEqual(f.read(), data)

    def test_oversizedPacketEnds(self) -> None:
        """
        A packet over the limit ends the session: serving stops without
        waiting for the input to end.
        """
        served = self.served
        served.send(u32(wire.MAX_PACKET_LENGTH + 1) + b"\x11")
        served.thread.join(TIMEOUT)
        self.assertFalse(served.thread.is_alive())

    def test_clientGone(self) -> None:
        """
        When nobody reads the replies any more, serving ends.
        """
        served = self.served
        os.close(served.fromServer[0])
        served.send(request(7, 1, s(b"/s/f")))
        served.thread.join(TIMEOUT)
        self.assertFalse(served.thread.is_alive())


class SpinTests(SynchronousTestCase):
    def test_defaultSpin(self) -> None:
        """
        By default the reading thread polls for L{SPIN} seconds before it
        blocks where the process may run on several CPUs, and not at all
        on one.
        """
        for worth, expected in ((True, SPIN), (False, 0.0)):
            self.patch(threaded, "worthSpinning", lambda worth=worth: worth)
            self.assertEqual(ThreadedServer(0, 1)._spin, expected)
        self.assertEqual(ThreadedServer(0, 1, spin=0.5)._spin, 0.5)

    def zeroPolls(self) -> int:
        """
        Serve a STAT; how often the reading thread polled stdin without
        waiting meanwhile.
        """
        self.patch(threaded, "worthSpinning", lambda: True)
        polls: list[CountingPoll] = []
        real = select.poll

        class CountingPoll:
            """
            C{select.poll}, counting the polls that do not wait.
            """

            def __init__(self) -> None:
                self.poller = real()
                self.zeros = 0
                polls.append(self)

            def register(self, fd: int, mask: int) -> None:
                self.poller.register(fd, mask)

            def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
                if timeout == 0:
                    self.zeros += 1
                return self.poller.poll(timeout)

        self.patch(select, "poll", CountingPoll)
        served = Served(os.path.realpath(self.mktemp()))
        self.addCleanup(served.stop)
        served.send(request(7, 1, s(b"/s/f")))
        kind, _ = served.receive()
        self.assertEqual(kind, wire.FXP_ATTRS)
        [poll] = polls
        return poll.zeros

    def test_spins(self) -> None:
        """
        By default the reading thread polls stdin before it reads.
        """
        self.assertGreater(self.zeroPolls(), 0)

    def test_switchOff(self) -> None:
        """
        With C{CONCHSHARE_THREADED_WAIT=0} the reading thread never polls
        stdin before it reads: it blocks in read at once.
        """
        self.patch(os, "environ", {**os.environ, "CONCHSHARE_THREADED_WAIT": "0"})
        self.assertEqual(self.zeroPolls(), 0)
        self.assertEqual(ThreadedServer(0, 1)._spin, 0.0)

    def test_spinByTheClock(self) -> None:
        """
        The reading thread polls stdin until its injected clock says the
        spin is over: with a clock that jumps past it, one poll, however
        long the spin (an hour here).
        """
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        readings = iter([0.0, 7200.0])
        server = ThreadedServer(readEnd, writeEnd, spin=3600.0, clock=lambda: next(readings))
        started = time.monotonic()
        server._await()
        self.assertLess(time.monotonic() - started, 60.0)
        self.assertEqual(list(readings), [])


class BackpressureTests(SynchronousTestCase):
    def test_stopsReadingPastTheBound(self) -> None:
        """
        Past C{maxInFlight} requests in flight the server reads no more;
        it reads on once they are answered.
        """
        served = Served(os.path.realpath(self.mktemp()), maxInFlight=4)
        self.addCleanup(served.stop)
        release = served.holdMakeDirectory()
        served.send(b"".join(request(14, n, s(b"/s/d%d" % n) + NO_ATTRS) for n in range(4)))
        served.send(request(17, 99, s(b"/s/f")))
        time.sleep(20 * SLOW)
        core = served.engine.core
        assert core is not None
        self.assertEqual(core.inFlight, 4)
        self.assertRaises(AssertionError, served.receive, 0.1)
        release.set()
        replies = sorted(rid(body) for _, body in (served.receive() for _ in range(5)))
        self.assertEqual(replies, [0, 1, 2, 3, 99])
