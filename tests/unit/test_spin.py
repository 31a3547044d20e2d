"""
Tests for L{conchshare.spin} and L{conchshare.spinreactor}: the reactor
polls for a moment before it sleeps, only after activity and only while no
worker call runs; only conchshare's own reactor does, and only with the
switch C{CONCHSHARE_REACTOR_POLL} on.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare import spin
from conchshare.spin import ACTIVE, Spinner, spinBeforeSleeping, stopSpinning
from tests.support import CHECKOUT
from tests.support.engines import epollReactor, spinningReactor

#: The checkout the tests come from.
ROOT = CHECKOUT


class SteppingClock:
    """
    A clock that advances by C{step} seconds each time it is read, and
    counts the reads: what a reactor does with it does not depend on how
    busy the machine is.
    """

    def __init__(self, step: float = 2**-12) -> None:
        self.now = 1000.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


class Pair:
    """
    A connected socket pair: C{reader} is added to a reactor as a reader
    that records what it receives; C{send} writes to the other end.
    """

    def __init__(self, case: SynchronousTestCase, reactor: Any) -> None:
        left, right = socket.socketpair()
        case.addCleanup(left.close)
        case.addCleanup(right.close)
        self.received: list[bytes] = []
        received = self.received

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
        case.addCleanup(reactor.removeReader, reader)
        self.send: Callable[[bytes], int] = left.send


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

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        self.calls.append(timeout)
        self.clock[0] += self.step
        return self.script.pop(0) if self.script else []


class SpinnerTests(SynchronousTestCase):
    def build(
        self, script: list[list[tuple[int, int]]], busy: bool = False
    ) -> tuple[Spinner, FakePoller, list[float]]:
        clock = [100.0]
        fake = FakePoller(clock, script, step=0.00003)
        spinner = Spinner(lambda: busy, spin=0.0002, clock=lambda: clock[0])
        return spinner, fake, clock

    def test_idleSleepsAtOnce(self) -> None:
        """
        With no activity lately, a blocking poll blocks at once.
        """
        spinner, fake, _ = self.build([])
        self.assertEqual(spinner.poll(fake.poll, 5, 10), [])
        self.assertEqual(fake.calls, [5])

    def test_spinsAfterActivity(self) -> None:
        """
        Right after descriptors were ready, a blocking poll first polls
        without waiting until C{spin} seconds have passed, then blocks for
        what is left of its timeout.
        """
        spinner, fake, _ = self.build([[(3, select.EPOLLIN)]])
        self.assertEqual(spinner.poll(fake.poll, 5, 10), [(3, select.EPOLLIN)])
        fake.calls.clear()
        self.assertEqual(spinner.poll(fake.poll, 5, 10), [])
        zeros = fake.calls[:-1]
        self.assertEqual(set(zeros), {0})
        self.assertEqual(len(zeros), 7)  # 0.0002 s in steps of 0.00003 s
        self.assertAlmostEqual(fake.calls[-1], 5 - 7 * 0.00003)

    def test_noLimitStaysNoLimit(self) -> None:
        """
        A poll without a time limit (-1) blocks without one after polling.
        """
        spinner, fake, _ = self.build([[(3, select.EPOLLIN)]])
        spinner.poll(fake.poll, -1, 10)
        fake.calls.clear()
        spinner.poll(fake.poll, -1, 10)
        self.assertEqual(fake.calls, [0] * 7 + [-1])

    def test_eventsWhileSpinning(self) -> None:
        """
        Events found while polling are returned at once: no blocking poll.
        """
        spinner, fake, _ = self.build([[(3, select.EPOLLIN)], [], [], [(4, select.EPOLLOUT)]])
        spinner.poll(fake.poll, 5, 10)
        fake.calls.clear()
        self.assertEqual(spinner.poll(fake.poll, 5, 10), [(4, select.EPOLLOUT)])
        self.assertEqual(fake.calls, [0, 0, 0])

    def test_busySleepsAtOnce(self) -> None:
        """
        While worker calls run, the reactor does not poll: it would hold
        the interpreter lock they need.
        """
        spinner, fake, _ = self.build([[(3, select.EPOLLIN)]], busy=True)
        spinner.poll(fake.poll, 5, 10)
        fake.calls.clear()
        spinner.poll(fake.poll, 5, 10)
        self.assertEqual(fake.calls, [5])

    def test_activityAges(self) -> None:
        """
        Activity older than L{ACTIVE} seconds does not make it poll.
        """
        spinner, fake, clock = self.build([[(3, select.EPOLLIN)]])
        spinner.poll(fake.poll, 5, 10)
        clock[0] += ACTIVE
        fake.calls.clear()
        spinner.poll(fake.poll, -1, 10)
        self.assertEqual(fake.calls, [-1])

    def test_nonBlockingPassesThrough(self) -> None:
        """
        A poll that does not block is made as it is, once.
        """
        spinner, fake, _ = self.build([[(3, select.EPOLLIN)]])
        spinner.poll(fake.poll, 5, 10)
        fake.calls.clear()
        self.assertEqual(spinner.poll(fake.poll, 0, 10), [])
        self.assertEqual(fake.calls, [0])


class SpinningReactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(spin, "worthSpinning", lambda: True)

    def test_deliversEvents(self) -> None:
        """
        conchshare's reactor, made to poll by L{spinBeforeSleeping}, still
        delivers events; its epoll object is its own, never replaced.
        """
        reactor = spinningReactor(self)
        epoll = reactor._poller
        spinner = spinBeforeSleeping(reactor, lambda: False)
        self.assertIsInstance(spinner, Spinner)
        self.assertIs(reactor.spinner, spinner)
        self.assertIs(reactor._poller, epoll)
        pair = Pair(self, reactor)
        pair.send(b"ping")
        reactor.doIteration(1)
        self.assertEqual(pair.received, [b"ping"])
        pair.send(b"pong")
        reactor.doIteration(1)
        self.assertEqual(pair.received, [b"ping", b"pong"])

    def test_spinsAfterActivity(self) -> None:
        """
        After it handled a descriptor, the reactor's next iteration that
        may wait polls without waiting for C{spin} seconds first (its clock
        read at each poll), and an idle one does not.
        """
        reactor = spinningReactor(self)
        # Steps and spin exact in binary: 8 steps are the spin exactly.
        clock = SteppingClock(step=2**-12)
        reactor.pollBeforeSleeping(lambda: False, 2**-9, clock)
        pair = Pair(self, reactor)
        reactor.doIteration(0)  # nothing ready: no activity
        reactor.doIteration(0.001)
        self.assertEqual(clock.reads, 1)  # the start only: no poll before
        pair.send(b"ping")
        reactor.doIteration(1)
        self.assertEqual(pair.received, [b"ping"])
        clock.reads = 0
        reactor.doIteration(0.01)
        # The start, then one read after each of the 8 polls; the blocking
        # poll finds nothing.
        self.assertEqual(clock.reads, 9)

    def test_eventsEndPolling(self) -> None:
        """
        What gets ready while the reactor polls is handled at once, and the
        iteration ends then (not after the polling time).
        """
        reactor = spinningReactor(self)
        clock = SteppingClock()
        reactor.pollBeforeSleeping(lambda: False, 30.0, clock)
        pair = Pair(self, reactor)
        pair.send(b"ping")
        reactor.doIteration(1)
        pair.send(b"pong")
        clock.reads = 0
        reactor.doIteration(30)
        self.assertEqual(pair.received, [b"ping", b"pong"])
        self.assertEqual(clock.reads, 2)  # the start; the first poll found it

    def test_stopSpinning(self) -> None:
        """
        L{stopSpinning} makes the reactor sleep at once again: its spinner
        is gone and it never polls first.
        """
        reactor = spinningReactor(self)
        clock = SteppingClock()
        reactor.pollBeforeSleeping(lambda: False, 0.002, clock)
        stopSpinning(reactor)
        self.assertIsNone(reactor.spinner)
        pair = Pair(self, reactor)
        pair.send(b"ping")
        reactor.doIteration(1)
        reactor.doIteration(0.001)
        self.assertEqual((pair.received, clock.reads), ([b"ping"], 0))

    def test_switchOff(self) -> None:
        """
        With C{CONCHSHARE_REACTOR_POLL=0}, L{spinBeforeSleeping} leaves even
        conchshare's reactor as it is: it never polls first.
        """
        self.patch(os, "environ", {**os.environ, "CONCHSHARE_REACTOR_POLL": "0"})
        reactor = spinningReactor(self)
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        self.assertIsNone(reactor.spinner)

    def test_oneCPU(self) -> None:
        """
        Where the process may run on one CPU only, the reactor is left as
        it is: polling would take the CPU from the client.
        """
        self.patch(spin, "worthSpinning", lambda: False)
        reactor = spinningReactor(self)
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        self.assertIsNone(reactor.spinner)

    def test_twistedEpollLeftAlone(self) -> None:
        """
        Twisted's own epoll reactor is left as it is (its private poller is
        not replaced), with a warning that says how to poll instead.
        """
        reactor = epollReactor(self)
        epoll = reactor._poller
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        self.assertIs(reactor._poller, epoll)
        [warning] = self.flushWarnings([self.test_twistedEpollLeftAlone])
        self.assertEqual(warning["category"], DeprecationWarning)
        self.assertIn("conchshare.spinreactor.install()", warning["message"])
        self.assertIn("--reactor=conchshare-epoll", warning["message"])

    def test_otherReactor(self) -> None:
        """
        Any other reactor is left as it is, without a warning.
        """
        reactor = MemoryReactorClock()
        self.assertIsNone(spinBeforeSleeping(reactor, lambda: False))
        stopSpinning(reactor)
        self.assertFalse(hasattr(reactor, "_poller"))
        self.assertEqual(self.flushWarnings(), [])


class WorthSpinningTests(SynchronousTestCase):
    def test_worthSpinning(self) -> None:
        """
        Polling can pay where the process may run on several CPUs.
        """
        self.assertEqual(spin.worthSpinning(), len(os.sched_getaffinity(0)) > 1)


# Prints the type of the reactor the commands get, in a fresh interpreter.
_COMMAND_REACTOR = r"""
import sys
if sys.argv[1:] == ["preinstalled"]:
    from twisted.internet import selectreactor
    selectreactor.install()
from conchshare.command import commandReactor
print(type(commandReactor()).__name__)
"""


class CommandReactorTests(SynchronousTestCase):
    def commandReactor(self, *args: str, **environ: str) -> str:
        env = dict(os.environ, PYTHONPATH=ROOT, **environ)
        done = subprocess.run(
            [sys.executable, "-c", _COMMAND_REACTOR, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        return done.stdout.strip()

    def setUp(self) -> None:
        if not spin.worthSpinning():
            raise SkipTest("One CPU: the commands never poll here")
        try:
            import conchshare.spinreactor  # noqa: F401
        except ImportError:
            raise SkipTest("No epoll reactor here")

    def test_commands(self) -> None:
        """
        The commands install conchshare's polling reactor.
        """
        self.assertEqual(self.commandReactor(), "SpinningEPollReactor")

    def test_switchOff(self) -> None:
        """
        With C{CONCHSHARE_REACTOR_POLL=0}, they get Twisted's default
        reactor.
        """
        self.assertEqual(
            self.commandReactor(CONCHSHARE_REACTOR_POLL="0"),
            "EPollReactor",
        )

    def test_installedAlready(self) -> None:
        """
        A reactor installed already is the one they get.
        """
        self.assertEqual(self.commandReactor("preinstalled"), "SelectReactor")
