"""
The process' io_uring ring of a reactor (L{ringFor}): its completions are
delivered on the reactor thread when the reactor sees the ring's eventfd
readable.

The eventfd is watched (C{addReader}) only while operations are in flight
(L{conchshare.fs.ring.Ring.busy}), and no longer once the last completion
is delivered: an idle ring leaves nothing in the reactor, so that a
reactor's C{removeAll} (its shutdown, a program's clean-up, trial's
check for a dirty reactor) finds nothing of it, through public API only.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from conchshare.fs.ring import Ring, usable, whyUnusable

__all__ = ["ringFor"]

_log = Logger()

# The ring of each reactor that asked for one.
_rings: weakref.WeakKeyDictionary[Any, Ring] = weakref.WeakKeyDictionary()


@implementer(IReadDescriptor)
class RingReader:
    """
    The ring's eventfd as a reactor's reader, added while operations are
    in flight.
    """

    def __init__(self, reactor: Any, ring: Ring) -> None:
        self._reactor = reactor
        self.ring = ring

    def busy(self, inFlight: bool) -> None:
        """
        Watch the eventfd while operations are in flight (see
        L{Ring.busy}, which calls this only when that changes).
        """
        if inFlight:
            self._reactor.addReader(self)
        else:
            self._reactor.removeReader(self)

    def fileno(self) -> int:
        return self.ring.fileno()

    def doRead(self) -> None:
        self.ring.doRead()

    def logPrefix(self) -> str:
        return "io_uring"

    def connectionLost(self, reason: object) -> None:
        pass


def _pollingReactors() -> tuple[type, ...]:
    """
    The reactor classes whose completions the ring is used with: those
    that poll descriptors with epoll or poll (and their subclasses, such
    as conchshare's own).
    """
    found: list[type] = []
    try:
        from twisted.internet.epollreactor import EPollReactor

        found.append(EPollReactor)
    except ImportError:
        pass
    try:
        from twisted.internet.pollreactor import PollReactor

        found.append(PollReactor)
    except ImportError:
        pass
    return tuple(found)


def logFailure(message: str) -> None:
    """
    What the reactor's ring does when a completion's callback raised
    (L{Ring.logFailure}): log the exception being handled, to Twisted's
    log.
    """
    _log.failure(message)


def ringFor(reactor: Any) -> Ring | None:
    """
    C{reactor}'s ring, its completions delivered when the reactor sees its
    eventfd readable (call it from the reactor thread, which must be the
    one submitting); L{None} if io_uring is not usable (see
    L{conchshare.fs.ring.usable}), or C{reactor} is not one that polls
    file descriptors (a test's fake reactor).
    """
    if not isinstance(reactor, _pollingReactors()):
        return None
    ring = _rings.get(reactor)
    if ring is None:
        if not usable():
            _log.debug("io_uring not used: {why}", why=whyUnusable())
            return None
        try:
            ring = Ring()
        except OSError as e:
            _log.warn("io_uring not used: {error}", error=e)
            return None
        ring.logFailure = logFailure
        ring.busy = RingReader(reactor, ring).busy
        _rings[reactor] = ring
    return ring
