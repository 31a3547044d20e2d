"""
Tests for L{conchshare.spin}: the reactor polls for a moment before it
sleeps, only after activity and only while no worker call runs.
"""

from __future__ import annotations

import os
import select
import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from conchshare import spin
from conchshare.spin import ACTIVE, SpinningPoller, spinBeforeSleeping
from tests.support.engines import epollReactor


class FakePoller:
    """
    An epoll stand-in: each poll advances the clock by C{step} and returns
    the next scripted result (no events once the script is spent).
    """

    def __init__(self, clock: list[float], script: list[list[tuple[int, int]]], step: float):
        self.clock = clock
        self.script = script
        self.step = step
        self.calls: list[float] = []
        self.registered: list[int] = []

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.calls.append(timeout)
        self.clock[0] += self.step
        return self.script.pop(0) if self.script else []

    def register(self, fd: int, mask: int) -> None:
        self.registered.append(fd)


class SpinningPollerTests(SynchronousTestCase):
    def build(
        self, script: list[list[tuple[int, int]]], busy: bool = False
    ) -> tuple[SpinningPoller, FakePoller, list[float]]:
        clock = [100.0]
        fake = FakePoller(clock, script, step=0.00003)
        spinning = SpinningPoller(fake, lambda: busy, spin=0.0002, clock=lambda: clock[0])
        return spinning, fake, clock

    def test_idleSleepsAtOnce(self) -> None:
        """
        With no activity lately, a blocking poll blocks at once.
        """
        spinning, fake, _ = self.build([])
        self.assertEqual(spinning.poll(5, 10), [])
        self.assertEqual(fake.calls, [5])

    def test_spinsAfterActivity(self) -> None:
        """
        Right after descriptors were ready, a blocking poll first polls
        without waiting until C{spin} seconds have passed, then blocks for
        what is left of its timeout.
        """
        spinning, fake, _ = self.build([[(3, select.EPOLLIN)]])
        self.assertEqual(spinning.poll(5, 10), [(3, select.EPOLLIN)])
        fake.calls.clear()
        self.assertEqual(spinning.poll(5, 10), [])
        zeros = fake.calls[:-1]
        self.assertEqual(set(zeros), {0})
        self.assertEqual(len(zeros), 7)  # 0.0002 s in steps of 0.00003 s
        self.assertAlmostEqual(fake.calls[-1], 5 - 7 * 0.00003)

    def test_eventsWhileSpinning(self) -> None:
        """
        Events found while polling are returned at once: no blocking poll.
        """
        spinning, fake, _ = self.build([[(3, select.EPOLLIN)], [], [], [(4, select.EPOLLOUT)]])
        spinning.poll(5, 10)
        fake.calls.clear()
        self.assertEqual(spinning.poll(5, 10), [(4, select.EPOLLOUT)])
        self.assertEqual(fake.calls, [0, 0, 0])

    def test_busySleepsAtOnce(self) -> None:
        """
        While worker calls run, the reactor does not poll: it would hold
        the interpreter lock they need.
        """
        spinning, fake, _ = self.build([[(3, select.EPOLLIN)]], busy=True)
        spinning.poll(5, 10)
        fake.calls.clear()
        spinning.poll(5, 10)
        self.assertEqual(fake.calls, [5])

    def test_activityAges(self) -> None:
        """
        Activity older than L{ACTIVE} seconds does not make it poll.
        """
        spinning, fake, clock = self.build([[(3, select.EPOLLIN)]])
        spinning.poll(5, 10)
        clock[0] += ACTIVE
        fake.calls.clear()
        spinning.poll(-1, 10)
        self.assertEqual(fake.calls, [-1])

    def test_nonBlockingPassesThrough(self) -> None:
        """
        A poll that does not block is made as it is, once.
        """
        spinning, fake, _ = self.build([[(3, select.EPOLLIN)]])
        spinning.poll(5, 10)
        fake.calls.clear()
        self.assertEqual(spinning.poll(0, 10), [])
        self.assertEqual(fake.calls, [0])

    def test_delegates(self) -> None:
        """
        Everything but poll goes to the wrapped object.
        """
        spinning, fake, _ = self.build([])
        spinning.register(7, select.EPOLLIN)
        self.assertEqual(fake.registered, [7])


class InstallTests(SynchronousTestCase):
    def test_epollReactor(self) -> None:
        """
        On Twisted's epoll reactor, the poller is replaced and the reactor
        still delivers events.
        """
        reactor = epollReactor(self)
        self.patch(spin, "worthSpinning", lambda: True)
        spinning = spinBeforeSleeping(reactor, lambda: False)
        self.assertIsInstance(spinning, SpinningPoller)
        self.assertIs(reactor._poller, spinning)

        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        received: list[bytes] = []

        class Reader:
            def fileno(self) -> int:
                return right.fileno()

            def doRead(self) -> None:
                received.append(right.recv(100))

            def logPrefix(self) -> str:
                return "Reader"

            def connectionLost(self, reason: object) -> None:
                pass

        reader = Reader()
        reactor.addReader(reader)
        self.addCleanup(reactor.removeReader, reader)
        left.send(b"ping")
        reactor.doIteration(1)
        self.assertEqual(received, [b"ping"])
        left.send(b"pong")
        reactor.doIteration(1)
        self.assertEqual(received, [b"ping", b"pong"])

    def test_oneCPU(self) -> None:
        """
        Where the process may run on one CPU only, the reactor is left as
        it is: polling would take the CPU from the client.
        """
        reactor = epollReactor(self)
        epoll = reactor._poller
        self.patch(spin, "worthSpinning", lambda: False)
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        self.assertIs(reactor._poller, epoll)

    def test_worthSpinning(self) -> None:
        """
        Polling can pay where the process may run on several CPUs.
        """
        self.assertEqual(spin.worthSpinning(), len(os.sched_getaffinity(0)) > 1)

    def test_otherReactor(self) -> None:
        """
        Any other reactor is left as it is.
        """
        reactor = MemoryReactorClock()
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        self.assertFalse(hasattr(reactor, "_poller"))
