"""
Polling the reactor's descriptors for a moment before it sleeps.

An sshfs client creating files waits for each reply before it sends the
next request (LOOKUP, OPEN, FSTAT, WRITE, SETSTAT, ...), and the next one
comes back through the tunnel a few hundred microseconds later.  A reactor
that blocked in C{epoll_wait} meanwhile is woken by the kernel, which on a
virtual machine means waking an idle virtual CPU and reloading the
interpreter's caches: measured on a two-CPU VM, an sshfs untar of 2,000
files through a raw-mode tunnel took 3.8 s with a reactor that sleeps at
once and 2.1-2.9 s with one that polls for 100-200 µs first (OpenSSH's
reference: 1.3-1.7 s in the same runs).

The reactor polls only while a filesystem call it handed to a worker
thread is not running: a reactor thread spinning for Python's global
interpreter lock would slow down the very call it waits for (measured:
polling regardless made the same untar slower, 5.1 s).  And only right
after activity (L{ACTIVE}): an idle tunnel's reactor sleeps as usual.  The
cost is at most L{SPIN} of CPU time per wake-up of the reactor.

Only the C{epoll} reactor (Linux) is changed; any other is left as it is;
and only where the process may run on two CPUs or more: on one, polling
takes the CPU from the client's side of the round trip (the same untar,
everything on one CPU: 1.26 s sleeping at once, 1.54 s polling).
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from time import monotonic
from typing import Any

__all__ = [
    "ACTIVE",
    "SPIN",
    "SpinningPoller",
    "spinBeforeSleeping",
    "stopSpinning",
    "worthSpinning",
]

#: How long (seconds) to poll before sleeping.
SPIN = 0.0002

#: Poll only if descriptors were ready this recently (seconds).
ACTIVE = 0.01


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


class SpinningPoller:
    """
    An C{epoll} object whose blocking L{poll} first polls without waiting,
    for up to C{spin} seconds, when descriptors were ready lately and
    C{busy()} is false.  Everything else goes to the wrapped object.
    """

    def __init__(
        self,
        poller: Any,
        busy: Callable[[], bool],
        spin: float = SPIN,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """
        @param poller: the reactor's C{select.epoll}.
        @param busy: whether work handed to other threads is running (then
            sleep at once: they need the interpreter lock).
        @param spin: how long to poll before sleeping (seconds).
        @param clock: a monotonic clock.
        """
        self.poller = poller
        self._busy = busy
        self._spin = spin
        self._clock = clock
        self._lastReady = float("-inf")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> Any:
        """
        Like C{select.epoll.poll}.
        """
        poll = self.poller.poll
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
                if timeout is not None and timeout > 0:
                    timeout = max(0.0, timeout - (now - started))
        events = poll(timeout, maxevents)
        if events:
            self._lastReady = clock()
        return events


def spinBeforeSleeping(
    reactor: Any, busy: Callable[[], bool], spin: float = SPIN
) -> SpinningPoller | None:
    """
    Make C{reactor}, if it is Twisted's C{epoll} reactor, poll for C{spin}
    seconds before it sleeps (see the module docstring).  Call it before
    the reactor runs, in a program that owns its reactor (the C{conchshare}
    command, not a library user's program).

    @param busy: see L{SpinningPoller}.
    @return: the poller now in use, or L{None} if the reactor is another
        (or polling cannot pay here: L{worthSpinning}).
    """
    poller = getattr(reactor, "_poller", None)
    epoll = getattr(select, "epoll", None)
    if epoll is None or not isinstance(poller, epoll) or not worthSpinning():
        return None
    spinning = SpinningPoller(poller, busy, spin)
    reactor._poller = spinning
    return spinning


def stopSpinning(reactor: Any) -> None:
    """
    Undo L{spinBeforeSleeping}: C{reactor} sleeps at once again.
    """
    poller = getattr(reactor, "_poller", None)
    if isinstance(poller, SpinningPoller):
        reactor._poller = poller.poller
