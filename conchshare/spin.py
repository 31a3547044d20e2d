"""
Polling the reactor's descriptors for a moment before it sleeps.

An sshfs client creating files waits for each reply before it sends the
next request (LOOKUP, OPEN, FSTAT, WRITE, SETSTAT, ...), and the next one
comes back through the tunnel a few hundred microseconds later.  A reactor
that blocked in C{epoll_wait} meanwhile is woken by the kernel, which on a
virtual machine means waking an idle virtual CPU and reloading the
interpreter's caches (figures: C{bench/README.md}).

The reactor polls only while a filesystem call it handed to a worker
thread is not running: a reactor thread spinning for Python's global
interpreter lock would slow down the very call it waits for.  And only
right after activity (L{ACTIVE}): an idle tunnel's reactor sleeps as usual.
The cost is at most L{SPIN} of CPU time per wake-up of the reactor.  Only
where the process may run on two CPUs or more (L{worthSpinning}): on one,
polling takes the CPU from the client's side of the round trip.

The reactor that does it is L{conchshare.spinreactor.SpinningEPollReactor}
(Twisted's epoll reactor with its public C{doPoll} overridden), installed
by the C{conchshare} commands (L{conchshare.command.commandReactor}), by
C{twistd --reactor=conchshare-epoll}, or by an embedding program with
L{conchshare.spinreactor.install}.  L{spinBeforeSleeping} turns it on for a
service; any other reactor is left as it is.  The switch
C{CONCHSHARE_REACTOR_POLL=0} (L{conchshare.switches}) turns it off.

This module imports no Twisted (C{conchshare sftp-server} reads
L{worthSpinning} from it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol, runtime_checkable

from conchshare.switches import switchedOn

__all__ = [
    "ACTIVE",
    "SPIN",
    "Spinner",
    "PollingReactor",
    "isSpinningReactor",
    "spinBeforeSleeping",
    "stopSpinning",
    "worthSpinning",
]

#: How long (seconds) to poll before sleeping.
SPIN = 0.0002

#: Poll only if descriptors were ready this recently (seconds).
ACTIVE = 0.01

#: The switch of L{conchshare.switches} that governs this module.
SWITCH = "CONCHSHARE_REACTOR_POLL"


def worthSpinning() -> bool:
    """
    Whether polling before sleeping can pay: this process may run on two
    CPUs or more, so that the client's side of a round trip runs on
    another one meanwhile.
    """
    try:
        return len(os.sched_getaffinity(0)) > 1
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) > 1


class Spinner:
    """
    When to poll without waiting before a blocking poll: for up to C{spin}
    seconds, when descriptors were ready lately and C{busy()} is false.
    Pure policy: the polling itself is a function it is given.
    """

    def __init__(
        self,
        busy: Callable[[], bool],
        spin: float = SPIN,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """
        @param busy: whether work handed to other threads is running (then
            sleep at once: they need the interpreter lock).
        @param spin: how long to poll before sleeping (seconds).
        @param clock: a monotonic clock.
        """
        self._busy = busy
        self._spin = spin
        self._clock = clock
        self._lastReady = float("-inf")

    def poll(
        self, poll: Callable[[float, int], list[tuple[int, int]]], timeout: float, maxevents: int
    ) -> list[tuple[int, int]]:
        """
        Like C{poll(timeout, maxevents)} (C{select.epoll.poll}: a negative
        C{timeout} waits without limit, 0 does not wait), which it calls:
        after recent activity, and while not busy, a poll that may wait is
        first made with timeout 0 until something is ready or C{spin}
        seconds have passed, then with what is left of C{timeout}.

        @return: what the last C{poll} call returned.
        """
        clock = self._clock
        if timeout != 0:
            started = clock()
            if started - self._lastReady < ACTIVE and not self._busy():
                deadline = started + self._spin
                now = started
                while now < deadline:
                    events = poll(0, maxevents)
                    if events:
                        self._lastReady = clock()
                        return events
                    now = clock()
                if timeout > 0:
                    timeout = max(0.0, timeout - (now - started))
        events = poll(timeout, maxevents)
        if events:
            self._lastReady = clock()
        return events


@runtime_checkable
class PollingReactor(Protocol):
    """
    A reactor that can poll before it sleeps: conchshare's
    (L{conchshare.spinreactor.SpinningEPollReactor}).  A protocol, so that
    this module need not import the reactor (nor Twisted).
    """

    def pollBeforeSleeping(
        self, busy: Callable[[], bool], spin: float = ..., clock: Callable[[], float] = ...
    ) -> Spinner:
        """
        Poll for C{spin} seconds before sleeping, while C{busy()}.
        """

    def sleepAtOnce(self) -> None:
        """
        Sleep at once again.
        """


def isSpinningReactor(reactor: object) -> bool:
    """
    Whether C{reactor} is conchshare's polling reactor
    (L{conchshare.spinreactor.SpinningEPollReactor}).
    """
    return isinstance(reactor, PollingReactor)


def spinBeforeSleeping(
    reactor: Any, busy: Callable[[], bool], spin: float = SPIN
) -> Spinner | None:
    """
    Make C{reactor}, if it is conchshare's polling reactor (see the module
    docstring), poll for C{spin} seconds before it sleeps.  Call it before
    the reactor runs, in a program that owns its reactor.

    Twisted's own epoll reactor is no longer changed (that wrote one of its
    private attributes): it is left as it is, with a C{DeprecationWarning}
    that says how to install conchshare's instead.

    @param busy: see L{Spinner}.
    @return: the L{Spinner} now in use, or L{None} if the reactor is
        another, polling cannot pay here (L{worthSpinning}), or the switch
        C{CONCHSHARE_REACTOR_POLL} is off.
    """
    if not switchedOn(SWITCH) or not worthSpinning():
        return None
    if isSpinningReactor(reactor):
        spinner: Spinner = reactor.pollBeforeSleeping(busy, spin)
        return spinner
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return None
    if isinstance(reactor, EPollReactor):
        warnings.warn(
            "conchshare.spin.spinBeforeSleeping no longer changes Twisted's own "
            "epoll reactor, which now sleeps at once: install conchshare's with "
            "conchshare.spinreactor.install() before twisted.internet.reactor is "
            "imported (twistd: --reactor=conchshare-epoll)",
            DeprecationWarning,
            stacklevel=2,
        )
    return None


def stopSpinning(reactor: Any) -> None:
    """
    Undo L{spinBeforeSleeping}: C{reactor} sleeps at once again.
    """
    if isSpinningReactor(reactor):
        reactor.sleepAtOnce()
