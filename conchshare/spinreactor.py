"""
conchshare's polling reactor: Twisted's epoll reactor that, once told to
(L{SpinningEPollReactor.pollBeforeSleeping}), polls its descriptors for a
moment before it sleeps (why, and when: L{conchshare.spin}).

It is installed by the C{conchshare} commands
(L{conchshare.command.commandReactor}), by C{twistd
--reactor=conchshare-epoll} (the reactor plugin in
C{twisted/plugins/conchshare_plugin.py}) and by an embedding program with
L{install}, before anything imports C{twisted.internet.reactor}.  Importing
this module fails with L{ImportError} where there is no epoll.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

from conchshare.spin import SPIN, Spinner

__all__ = ["SpinningEPollReactor", "install"]


class SpinningEPollReactor(EPollReactor):
    """
    Twisted's epoll reactor whose C{doPoll} (its one iteration: wait for
    descriptors, handle those ready) polls through a L{Spinner} once
    L{pollBeforeSleeping} was called: after recent activity it first polls
    without waiting.  Until then it is Twisted's epoll reactor unchanged.

    It writes none of the base class's attributes.  Its C{doPoll} reads
    what the base class's reads (C{_poller}, C{_selectables}) and hands
    each ready descriptor to C{_doReadOrWrite}, as the base class's does:
    the polling adds no Python call per iteration or descriptor to what
    the old C{SpinningPoller} cost.
    """

    def __init__(self) -> None:
        super().__init__()
        self._spinner: Spinner | None = None

    @property
    def spinner(self) -> Spinner | None:
        """
        The L{Spinner} in use (L{None}: the reactor sleeps at once).
        """
        return self._spinner

    def pollBeforeSleeping(
        self,
        busy: Callable[[], bool],
        spin: float = SPIN,
        clock: Callable[[], float] = monotonic,
    ) -> Spinner:
        """
        From now on, poll for up to C{spin} seconds before sleeping, after
        activity and while C{busy()} is false (see L{Spinner}).  Replaces an
        earlier call's settings.

        @return: the L{Spinner} now in use.
        """
        self._spinner = Spinner(busy, spin, clock)
        return self._spinner

    def sleepAtOnce(self) -> None:
        """
        Undo L{pollBeforeSleeping}: sleep at once, as Twisted's epoll
        reactor does.
        """
        self._spinner = None

    def doPoll(self, timeout: float | None) -> None:
        """
        One iteration: wait at most C{timeout} seconds (L{None}: no limit)
        for descriptors to be ready and handle those that are, polling first
        if L{pollBeforeSleeping} says so.
        """
        spinner = self._spinner
        if spinner is None:
            EPollReactor.doPoll(self, timeout)
            return
        selectables = self._selectables
        try:
            events = spinner.poll(
                self._poller.poll, -1 if timeout is None else timeout, len(selectables)
            )
        except InterruptedError:
            return
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                log.callWithLogger(selectable, handle, selectable, fd, event)

    doIteration = doPoll


def install() -> SpinningEPollReactor:
    """
    Install a L{SpinningEPollReactor} as Twisted's global reactor (also
    C{twistd --reactor=conchshare-epoll}).  It polls only once
    L{conchshare.spin.spinBeforeSleeping} (or its
    L{SpinningEPollReactor.pollBeforeSleeping}) is called.

    @raise twisted.internet.error.ReactorAlreadyInstalledError: a reactor
        is installed already.
    """
    from twisted.internet.main import installReactor

    reactor = SpinningEPollReactor()
    installReactor(reactor)
    return reactor
