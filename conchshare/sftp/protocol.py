"""
The SFTP server as a Twisted protocol: L{SFTPServerCore} on a transport.

Use it wherever bytes of SFTP arrive: a forwarded SSH channel, the C{sftp}
subsystem of an SSH session (L{subsystemFactory}), stdin/stdout
(L{conchshare.sftp.stdio}) or a TCP port (L{SFTPServerFactory}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from conchshare.budget import MemoryBudget, processMemoryBudget
from conchshare.sftp.core import MAX_IN_FLIGHT, MAX_OPEN_HANDLES, SFTPServerCore
from conchshare.sftp.engine import ICallEngine
from conchshare.sftp.interfaces import IEngineAvatar

# Reads shorter than this wait briefly for the calls they handed over.
_WAIT_BELOW = 64 * 1024


def _nothing() -> None:
    pass


@implementer(IPushProducer, IHalfCloseableProtocol)
class SFTPServerProtocol(Protocol):
    """
    Serves SFTP v3 from an avatar to the peer of its transport.

    Backpressure goes both ways: past C{maxInFlight} requests in flight it
    pauses its transport (stops reading) -- fewer when many servers share
    the process's L{MemoryBudget}, so that the replies in flight stay
    within it whatever the number of clients; and it registers as a streaming
    producer with the transport, so when the transport's write buffer is
    full it dispatches nothing new and stops reading too.

    With an avatar that runs its calls in an engine (an L{IEngineAvatar},
    such as L{conchshare.sftp.avatar.ShareSFTPServer}), each feed is
    made through the engine's L{ICallEngine.holdingWakeups} (the calls one
    feed brings wait together, so a batch runs as one), and replies made
    while the engine delivers results go out together.  Latency: after a
    small feed of metadata requests it lets the engine wait briefly for
    their answers (L{ICallEngine.waitBriefly}: up to
    L{conchshare.sftp.workers.Workers.WAIT}) before returning to the
    reactor, which saves a wake-up per request.

    @ivar core: the L{SFTPServerCore}, once connected.
    """

    core: SFTPServerCore | None = None

    def __init__(
        self,
        avatar: object,
        *,
        maxInFlight: int = MAX_IN_FLIGHT,
        maxOpenHandles: int = MAX_OPEN_HANDLES,
        logRequests: bool = False,
        memoryBudget: MemoryBudget | None = None,
    ) -> None:
        """
        @param avatar: an L{ISFTPServer} (and, for OpenSSH's extensions,
            L{conchshare.sftp.interfaces.IShareSFTPServer}); one avatar may
            serve many connections.
        @param maxInFlight: requests in flight before reading pauses.
        @param maxOpenHandles: open handles allowed per connection.
        @param logRequests: log every request at debug level.
        @param memoryBudget: the budget whose reply share bounds the requests in
            flight (default: the process's, L{processMemoryBudget}).
        """
        self.avatar = avatar
        self._maxInFlight = maxInFlight
        self._maxOpenHandles = maxOpenHandles
        self._logRequests = logRequests
        self._closed: list[Deferred[None]] = []
        self._engine: ICallEngine | None = (
            avatar.engine if IEngineAvatar.providedBy(avatar) else None
        )
        self._finished = False
        self._producing = False
        self._memoryBudget = memoryBudget if memoryBudget is not None else processMemoryBudget()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        pauses = hasattr(transport, "pauseProducing")
        self.core = SFTPServerCore(
            self.avatar,
            transport.write,
            writeSequence=transport.writeSequence,
            # Wrappers such as Conch's session subsystem transport cannot
            # pause; serve without read backpressure there.
            pauseReading=getattr(transport, "pauseProducing", _nothing),
            resumeReading=getattr(transport, "resumeProducing", _nothing),
            disconnect=transport.loseConnection,
            maxInFlight=self._maxInFlight,
            maxOpenHandles=self._maxOpenHandles,
            logRequests=self._logRequests,
            # Large packets wait for the budget's packet share only where
            # waiting can stop the client's data (reading pauses).
            memory=self._memoryBudget if pauses else None,
            delivery=self._engine.delivery if self._engine is not None else None,
        )
        self._memoryBudget.addServer(self)
        carriesReplies = getattr(transport, "carriesReplies", None)
        if carriesReplies is not None:
            carriesReplies()
        if IConsumer.providedBy(transport):
            transport.registerProducer(self, True)
            self._producing = True

    def dataReceived(self, data: bytes) -> None:
        core = self.core
        if core is None:
            return
        engine = self._engine
        if engine is None:
            core.dataReceived(data)
            return
        # Threads are woken once the whole feed is dispatched, to find
        # every call it brought; after small requests the engine waits a
        # moment for their answers.
        engine.feed(core, data, len(data) < _WAIT_BELOW)

    def readConnectionLost(self) -> None:
        """
        The client closed its sending side: answer what is in flight, then
        close.
        """
        if self.core is None:
            return
        transport: Any = self.transport
        self.core.whenIdle().addCallback(lambda _: transport.loseConnection())

    def writeConnectionLost(self) -> None:
        """
        Nobody reads our replies any more: close.
        """
        transport: Any = self.transport
        transport.loseConnection()

    def setMaxInFlight(self, limit: int) -> None:
        """
        Keep at most C{limit} requests in flight from now on (never more
        than the C{maxInFlight} this server was made with); called by the
        budget as servers come and go.  Requests already in flight are
        answered; reading resumes at half the bound.
        """
        core = self.core
        if core is None:
            return
        core.limitInFlight(max(1, min(limit, self._maxInFlight)))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._memoryBudget.removeServer(self)
        if self._producing:
            self._producing = False
            transport: Any = self.transport
            unregister = getattr(transport, "unregisterProducer", None)
            if unregister is not None:
                unregister()
        if self.core is None:
            self._done(None)
            return
        self.core.connectionLost().addCallback(self._done)

    def _done(self, _: object) -> None:
        self._finished = True
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self) -> Deferred[None]:
        """
        @return: a Deferred firing with C{None} once the connection is lost
            and every file and directory it opened is closed.  It never
            fails.
        """
        waiter: Deferred[None] = Deferred()
        if self._finished:
            waiter.callback(None)
        else:
            self._closed.append(waiter)
        return waiter

    # IPushProducer: the transport's write buffer is full or has room.

    def pauseProducing(self) -> None:
        if self.core is not None:
            self.core.pauseOutput()

    def resumeProducing(self) -> None:
        core = self.core
        if core is None:
            return
        engine = self._engine
        if engine is None:
            core.resumeOutput()
        else:
            engine.holdingWakeups(core.resumeOutput)

    def stopProducing(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.loseConnection()


class SFTPServerFactory(Factory):
    """
    Serves SFTP on every connection (a listening port, a Unix socket), all
    with the same avatar.
    """

    def __init__(self, avatar: object, **options: Any) -> None:
        """
        @param avatar: as for L{SFTPServerProtocol}.
        @param options: C{maxInFlight}, C{maxOpenHandles}.
        """
        self.avatar = avatar
        self.options = options

    def buildProtocol(self, addr: object) -> SFTPServerProtocol:
        protocol = SFTPServerProtocol(self.avatar, **self.options)
        protocol.factory = self
        return protocol


def subsystemFactory(server: object, **options: Any) -> Callable[..., SFTPServerProtocol]:
    """
    The value for a Conch user's C{subsystemLookup[b"sftp"]}: Conch calls it
    as C{factory(data, avatar=user)}; the SFTP avatar given here serves,
    whatever the user.

    @param server: the SFTP avatar, as for L{SFTPServerProtocol}.
    @return: a callable building one L{SFTPServerProtocol} per session.
    """

    def build(data: bytes = b"", avatar: object = None) -> SFTPServerProtocol:
        return SFTPServerProtocol(server, **options)

    return build
