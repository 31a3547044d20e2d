"""
L{ShareService}: the running share, as a Twisted service.

It connects out (through L{twisted.application.internet.ClientService}, so
it reconnects with exponential back-off and jitter), requests the forwards,
installs the session key, mounts (with L{conchshare.mount}), serves every
forwarded channel, pauses and resumes them, publishes events and a status
snapshot, and tears everything down on stop.

State (one place; L{ShareService.status} reports it):

    connecting ──► connected ──► forwarding ──► reconnecting ──► connected ...
        │              │                             (after a drop)
        └──────────────┴──► stopped   (fatal error, or stopService)

Rules:
  - At the first connection every failure is fatal: host key, auth,
    forward refused, connection refused or lost.  The service emits
    C{error} then C{stopped} and L{ShareService.whenStopped} fails with the
    L{ConchShareError} (whose C{exitCode} the command exits with).
  - Once it has been up, a lost connection is retried for ever (C{reconnecting}
    event each time); a failure while setting up again drops that connection
    and retries too, except a host key error, which is always fatal.
  - On reconnect the forwards are requested with the port allocated before
    first, then with the port asked for originally; a socket forward gets a
    fresh path.
  - Pausing is remembered across reconnects.  Stop works in any state, while
    paused too, and every step of it has a time limit: it never hangs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.audit import AuditingAvatar, auditText
from conchshare.errors import (
    ConchShareError,
    ConnectionFailed,
    ForwardRefused,
    HostKeyError,
    UsageError,
    sentence,
)
from conchshare.events import Event, EventObserver, makeEvent
from conchshare.failures import asConchShareError
from conchshare.reactors import orGlobalReactor
from conchshare.reporting import (
    FailureRecordingEndpoint,
    LossReportingFactory,
    LossReportingProtocol,
)
from conchshare.serving import ForwardServer
from conchshare.shareoptions import MODES, MOUNT_VIAS, ForwardSpec, ShareOptions
from conchshare.shares import ShareError, ShareSet

if TYPE_CHECKING:
    from twisted.conch.ssh.keys import Key

    from conchshare.mount import RemoteMount
    from conchshare.sftp.avatar import ShareSFTPServer
    from conchshare.tunnel.client import SSHClientTransport
    from conchshare.tunnel.connection import Listener, ShareConnection
    from conchshare.tunnel.sessionkey import InstalledSessionKey
    from conchshare.tunnel.sshconfig import ConnectOptions

__all__ = [
    "MODES",
    "MOUNT_VIAS",
    "AuditingAvatar",
    "ForwardSpec",
    "ShareOptions",
    "ShareService",
    "asConchShareError",
    "auditText",
]

_log = Logger(namespace="conchshare.service")


class ShareService(Service):
    """
    Share folders through an outbound SSH connection, reconnecting as needed.

    Build it from a destination (C{[user@]host[:port]} or an ssh config
    C{Host} alias), the shares (a L{ShareSet} or share specifications such
    as C{"docs=~/Documents"}) and L{ShareOptions} (or their fields as
    keyword arguments)::

        service = ShareService("me@server", ["~/Documents"], mode="raw")
        service.addObserver(print)
        service.startService()
        service.whenForwarding().addCallback(print)  # [("127.0.0.1", 40123)]

    A service runs once: after it has stopped, build a new one.

    @ivar destination: the destination as given.
    @ivar shares: the L{ShareSet} served.
    @ivar options: the L{ShareOptions}.
    @ivar error: the L{ConchShareError} that stopped the service, or L{None}.
    """

    name = "conchshare"

    def __init__(
        self,
        destination: str,
        shares: ShareSet | Sequence[str],
        options: ShareOptions | None = None,
        *,
        reactor: Any = None,
        **overrides: Any,
    ) -> None:
        """
        @param reactor: an C{IReactorTCP}, C{IReactorTime} (and for
            ProxyCommand C{IReactorProcess}); the global reactor if L{None}.
        @param overrides: L{ShareOptions} fields.
        @raise UsageError: bad shares or contradictory options.
        """
        options = options if options is not None else ShareOptions()
        if overrides:
            options = replace(options, **overrides)
        options.check()
        if not isinstance(shares, ShareSet):
            try:
                shares = ShareSet.fromSpecs(list(shares), readOnly=options.readOnly)
            except ShareError as e:
                raise UsageError(str(e))
        self.destination = destination
        self.shares = shares
        self.options = options
        self.error: ConchShareError | None = None
        # The global reactor, if none was given, is looked up at first use:
        # building a service installs no reactor.
        self._reactor = reactor
        self._observers: list[EventObserver] = []
        self._state = "stopped"
        self._paused = False
        self._client: ClientService | None = None
        self._protocol: SSHClientTransport | None = None
        self._connection: ShareConnection | None = None
        self._forwards: list[Listener] = []
        self._previousPorts: dict[ForwardSpec, int] = {}
        self._sessionKey: InstalledSessionKey | None = None
        self._mount: RemoteMount | None = None
        self._everUp = False
        self._attempt = 0
        self._retryAt: float | None = None
        self._setupError: ConchShareError | None = None
        self._lastReason = ""
        self._closedBytes = [0, 0]
        self._stopping: Deferred[None] | None = None
        self._stopped = False
        self._forwardingWaiters: list[Deferred[list[tuple[str, int] | str]]] = []
        self._stopWaiters: list[Deferred[None]] = []
        self._policy = backoffPolicy(
            initialDelay=options.retryInitialDelay, maxDelay=options.retryMaxDelay
        )
        self._connectOptions: ConnectOptions | None = None
        self._avatar: ShareSFTPServer | None = None
        #: What serves the channels of our forwards (none for a mount).
        self._forwardServer: ForwardServer | None = None
        self._sessions = 0

    # -- events -----------------------------------------------------------

    def addObserver(self, observer: EventObserver) -> None:
        """
        Call C{observer} with every event (a dict, see L{conchshare.events}).
        """
        self._observers.append(observer)

    def removeObserver(self, observer: EventObserver) -> None:
        """
        Stop calling C{observer}.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def _emit(self, name: str, **fields: Any) -> None:
        event = makeEvent(name, self._clock(), **fields)
        self._publish(event)

    def _publish(self, event: Event) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                _log.failure("Event observer {observer!r} failed", observer=observer)

    def _clock(self) -> IReactorTime:
        clock: IReactorTime = self._getReactor()
        return clock

    def _getReactor(self) -> Any:
        self._reactor = orGlobalReactor(self._reactor)
        return self._reactor

    # -- public API -------------------------------------------------------

    def whenForwarding(self) -> Deferred[list[tuple[str, int] | str]]:
        """
        Wait until every forward (and the mount, if any) is up.

        @return: a Deferred firing with the listeners on the remote host, in
            the order of L{ShareOptions.forwards}: C{(address, port)} for a
            TCP forward (the port allocated), the path for a socket forward
            (an empty list for a passive mount).  Fires at once if they are
            up now.  Fails with the L{ConchShareError} that stopped the
            service, or L{ConnectionFailed} if it was stopped before.
        """
        if self._state == "forwarding":
            return succeed(self._listeners())
        if self._stopped:
            return fail(self.error or ConnectionFailed("The service is stopped."))
        d: Deferred[list[tuple[str, int] | str]] = Deferred()
        self._forwardingWaiters.append(d)
        return d

    def whenStopped(self) -> Deferred[None]:
        """
        Wait until the service has stopped (after L{stopService} or a fatal
        error).

        @return: a Deferred firing with L{None} after a requested stop, or
            failing with the L{ConchShareError} that stopped the service.
        """
        d: Deferred[None] = Deferred()
        if self._stopped:
            if self.error is not None:
                d.errback(self.error)
            else:
                d.callback(None)
        else:
            self._stopWaiters.append(d)
        return d

    def pause(self) -> int:
        """
        Pause every channel, and the channels that open from now on, until
        L{resume}.  The connection stays up (keep-alives go on).

        @return: how many open channels this paused.
        """
        self._paused = True
        if self._connection is not None:
            return int(self._connection.pause())  # it emits "paused"
        self._emit("paused", channels=0)
        return 0

    def resume(self) -> int:
        """
        Resume every channel paused by L{pause}.

        @return: how many channels this resumed.
        """
        self._paused = False
        if self._connection is not None:
            return int(self._connection.resume())  # it emits "resumed"
        self._emit("resumed", channels=0)
        return 0

    @property
    def paused(self) -> bool:
        """
        Whether the service is paused.
        """
        return self._paused

    def callsRunning(self) -> bool:
        """
        Whether filesystem calls of the SFTP sessions are running in worker
        threads (or waiting for one).
        """
        return self._avatar is not None and self._avatar.engine.busy()

    def status(self) -> dict[str, Any]:
        """
        A snapshot of the service, JSON-serialisable.

        @return: a dict with C{state} (C{connecting}, C{connected},
            C{forwarding}, C{reconnecting}, C{stopping}, C{stopped}),
            C{paused}, C{mode}, C{channels} (open now), C{bytes_in},
            C{bytes_out} (all channels since start), C{listeners} (dicts as
            in the C{forwarding} event), C{retry_in} (seconds, when
            reconnecting), C{destination}, C{pid} (this process),
            C{remote_path} (the mount point
            or L{None}) and C{error} (its message, or L{None}).
        """
        bytesIn, bytesOut = self._closedBytes
        channels = 0
        if self._connection is not None:
            for channel in self._connection.group:
                channels += 1
                bytesIn += channel.bytesIn
                bytesOut += channel.bytesOut
        retryIn = None
        if self._state == "reconnecting" and self._retryAt is not None:
            retryIn = max(0.0, self._retryAt - self._clock().seconds())
        mode = self.options.effectiveMode()
        return {
            "state": self._state,
            "paused": self._paused,
            "mode": mode,
            "channels": channels,
            "bytes_in": bytesIn,
            "bytes_out": bytesOut,
            "listeners": [f.event() for f in self._allForwards()],
            "retry_in": retryIn,
            "destination": self.destination,
            "pid": os.getpid(),
            "remote_path": None if self._mount is None else self._mount.remotePath,
            "error": None if self.error is None else str(self.error),
        }

    # -- starting ---------------------------------------------------------

    def startService(self) -> None:
        """
        Start connecting.  Failures are reported as events and through
        L{whenStopped}, never raised from here.

        @raise RuntimeError: the service has already stopped.
        """
        if self._stopping is not None:
            raise RuntimeError("A stopped ShareService cannot be started again.")
        super().startService()
        self._state = "connecting"
        try:
            self._client = self._makeClientService()
        except Exception as e:
            self._fatal(asConchShareError(e))
            return
        self._client.startService()

    def _makeClientService(self) -> ClientService:
        from conchshare.tunnel import sshconfig
        from conchshare.tunnel.client import SSHClientFactory
        from conchshare.tunnel.endpoint import sshEndpoint

        reactor = self._getReactor()
        options = self.options
        self._connectOptions = sshconfig.resolve(
            self.destination,
            configFile=options.configFile,
            options=options.sshOptionList(),
            port=options.port,
            identities=options.identities,
            jump=options.jump,
        )
        self._avatar = self._makeAvatar()
        if options.forwards():
            self._forwardServer = self._makeForwardServer()
        endpoint = FailureRecordingEndpoint(
            sshEndpoint(reactor, self._connectOptions), self._connectFailed
        )
        factory = LossReportingFactory(
            SSHClientFactory(self._connectOptions, self._buildConnection, reactor=reactor),
            self._connectionLost,
        )
        return ClientService(
            endpoint,
            factory,
            retryPolicy=self._retryDelay,
            clock=reactor,
            prepareConnection=self._connectionMade,
        )

    def _makeAvatar(self) -> ShareSFTPServer:
        """
        The SFTP avatar serving every channel (shared by every connection).
        """
        from conchshare.sftp.avatar import ShareSFTPServer

        reactor = self._getReactor()
        avatar = ShareSFTPServer(self.shares, umask=self.options.umask, reactor=reactor)

        def moved(share: object, message: str) -> None:
            # Noticed in a worker thread: the event is emitted in the
            # reactor's; the service goes on serving the other shares.
            reactor.callFromThread(self._emit, "error", message=message)

        avatar.filesystem.shareMoved = moved
        return avatar

    def _makeForwardServer(self) -> ForwardServer:
        """
        What serves our forwards' channels in the endpoint mode: SFTP
        sessions on the shared avatar, straight on each channel (C{raw}) or
        in the nested SSH server (C{ssh}: its host key loaded, or created
        where C{--host-key} says, the authorized keys and the session key).
        """
        from conchshare.sftp.protocol import SFTPServerProtocol

        avatar = self._avatar
        assert avatar is not None
        return ForwardServer.fromFiles(
            self.options.effectiveMode(),
            lambda: SFTPServerProtocol(self._sessionAvatar(avatar)),
            hostKeyPath=self.options.hostKey,
            authorizedKeysPath=self.options.authorizedKeys,
            withSessionKey=self.options.wantsSessionKey(),
            reactor=self._getReactor(),
        )

    def _protocolFactory(self) -> Callable[[], IProtocol]:
        """
        What serves one forwarded channel in the endpoint mode.
        """
        return self._makeForwardServer().buildProtocol

    def _sessionAvatar(self, avatar: ShareSFTPServer) -> ShareSFTPServer | AuditingAvatar:
        """
        The avatar one SFTP session uses: the shared avatar's view for one
        connection (its requests are ordered among themselves only); with
        C{verbose}, one that logs every request (L{AuditingAvatar}).
        """
        view = avatar.forConnection()
        if not self.options.verbose:
            return view
        self._sessions += 1
        return AuditingAvatar(view, f"session {self._sessions}")

    def _buildConnection(self) -> ShareConnection:
        from conchshare.tunnel.connection import ShareConnection

        connection = ShareConnection(reactor=self._getReactor())
        connection.addObserver(self._connectionEvent)
        return connection

    def _connectionEvent(self, event: Event) -> None:
        """
        Relay the connection's events, counting the bytes of closed channels.
        """
        if event.get("event") == "channel-closed":
            self._closedBytes[0] += int(event.get("bytes_in", 0))
            self._closedBytes[1] += int(event.get("bytes_out", 0))
        self._publish(event)

    def _connectFailed(self, failure: Failure) -> None:
        self._lastReason = str(asConchShareError(failure))

    def _connectionLost(self, protocol: SSHClientTransport, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._connection = None
        self._forwards = []
        if self._setupError is None:
            # The transport's own sentence when it ended the connection (a
            # dead peer: keep-alives unanswered), not how the socket closed.
            failure = protocol.failure
            self._lastReason = str(
                failure if isinstance(failure, ConchShareError) else asConchShareError(reason)
            )

    def _connectionMade(self, proxy: IProtocol) -> None:
        """
        C{prepareConnection} of the L{ClientService}: start setting the
        connection up, asynchronously.  It never fails: a failure drops the
        connection (see the module docstring), which is how ClientService
        learns to retry.
        """
        # ClientService hands us its proxy around our LossReportingProtocol;
        # both pass attribute reads on to what they wrap.
        protocol = cast("LossReportingProtocol[SSHClientTransport]", proxy).wrapped
        self._protocol = protocol
        self._setupError = None
        d = Deferred.fromCoroutine(self._setUp(protocol))
        d.addErrback(self._setUpFailed, protocol)

    async def _setUp(self, protocol: SSHClientTransport) -> None:
        from conchshare.tunnel.connection import ShareConnection

        ready = await protocol.whenReady()
        assert isinstance(ready, ShareConnection)  # from _buildConnection
        connection = ready
        if self._stopping is not None or protocol is not self._protocol:
            return
        self._connection = connection
        options = self._connectOptions
        assert options is not None
        self._state = "connected"
        self._emit(
            "connected",
            host=options.host,
            port=options.port,
            user=options.user,
            host_key=protocol.hostKeyFingerprint,
        )
        if self._paused:
            connection.group.pause()
        forwards: list[Listener] = []
        for spec in self.options.forwards():
            forwards.append(await self._requestForward(connection, spec))
            self._forwards = list(forwards)
        if self.options.wantsSessionKey():
            await self._installSessionKey(connection)
        if self.options.mountAt is not None:
            await self._startMount(connection)
        self._state = "forwarding"
        self._everUp = True
        self._attempt = 0
        self._retryAt = None
        waiters, self._forwardingWaiters = self._forwardingWaiters, []
        listeners = self._listeners()
        for w in waiters:
            w.callback(listeners)

    def _allForwards(self) -> list[Listener]:
        """
        The granted listeners: ours, and the remote mount's.
        """
        mountListener = self._mount.listener if self._mount is not None else None
        return self._forwards + ([mountListener] if mountListener is not None else [])

    def _listeners(self) -> list[tuple[str, int] | str]:
        return [
            (f.socketPath or "") if f.isUnix else (f.address, f.port) for f in self._allForwards()
        ]

    async def _requestForward(self, connection: ShareConnection, spec: ForwardSpec) -> Listener:
        """
        Request one forward; on a reconnect, the port allocated before first.

        @return: the granted L{conchshare.tunnel.connection.Listener}.
        @raise ForwardRefused: the server refused it.
        """
        server = self._forwardServer
        assert server is not None
        if spec.socket is not None:
            listener = server.listener(socketPath=spec.socket or None, streamlocal=True)
            return await connection.requestForward(listener)
        ports = [spec.port]
        previous = self._previousPorts.get(spec)
        if previous is not None and previous != spec.port:
            ports.insert(0, previous)
        for index, port in enumerate(ports):
            listener = server.listener(address=spec.address, port=port)
            try:
                granted = await connection.requestForward(listener)
            except ForwardRefused:
                if index == len(ports) - 1:
                    raise
                continue
            self._previousPorts[spec] = granted.port
            return granted
        raise AssertionError("unreachable")

    async def _installSessionKey(self, connection: ShareConnection) -> None:
        tcp = [f for f in self._forwards if not f.isUnix]
        server = self._forwardServer
        if not tcp or server is None or server.sessionKey is None:
            return
        assert self._connectOptions is not None
        installed = await server.installSessionKey(
            connection, tcp[0].port, self._connectOptions.user
        )
        previous, self._sessionKey = self._sessionKey, installed
        if previous is not None and previous.directory != installed.directory:
            # Left behind by the connection that dropped.
            from conchshare.tunnel.remote import quote, runRemote

            try:
                await runRemote(connection, b"rm -rf -- " + quote(previous.directory).encode())
            except Exception:
                pass
        home = self.shares.home.decode("utf-8", "surrogateescape")
        self._emit("session-key", **installed.event(remotePath=home))

    async def _startMount(self, connection: ShareConnection) -> None:
        from conchshare.mount import RemoteMount

        if self._mount is None:
            assert self.options.mountAt is not None
            avatar = self._avatar
            assert avatar is not None
            self._mount = RemoteMount(
                connection,
                self.shares,
                self.options.mountAt,
                via=self.options.mountVia,
                reactor=self._getReactor(),
                avatarFactory=lambda shares: self._sessionAvatar(avatar),
                hostKey=self._mountHostKey(),
                authorizedKeys=self._mountAuthorizedKeys(),
                observer=self._publish,
                sshfsOptions=["ro"] if self.options.readOnly else [],
            )
            await self._mount.mount()
        else:
            await self._mount.remount(connection)

    def _mountHostKey(self) -> Key | None:
        if self.options.mountVia != "ssh" or self.options.hostKey is None:
            return None
        from conchshare.tunnel.nested import loadOrCreateHostKey

        return loadOrCreateHostKey(self.options.hostKey)

    def _mountAuthorizedKeys(self) -> list[Key]:
        if self.options.mountVia != "ssh" or self.options.authorizedKeys is None:
            return []
        from conchshare.tunnel.nested import readAuthorizedKeys

        return readAuthorizedKeys(self.options.authorizedKeys)

    def _setUpFailed(self, failure: Failure, protocol: SSHClientTransport) -> None:
        if protocol is not self._protocol or self._stopping is not None:
            return
        if not failure.check(ConchShareError, ConnectError, ConnectionDone, ConnectionLost):
            # A bug, not a network or server problem: keep the traceback.
            _log.failure("Unexpected failure while setting the connection up", failure)
        error = asConchShareError(failure)
        self._setupError = error
        self._lastReason = str(error)
        if not self._everUp or isinstance(error, HostKeyError):
            self._fatal(error)
            return
        _log.warn("Setting the connection up failed: {error}", error=str(error))
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _retryDelay(self, failedAttempts: int) -> float:
        """
        The C{retryPolicy} of the L{ClientService}: called each time it is
        about to wait, after a failed attempt or a lost connection.
        """
        if self._stopping is not None:
            return 3600.0
        if not self._everUp:
            # The first connection failed: nothing to reconnect to.
            reactor = self._getReactor()
            reactor.callLater(0, self._firstConnectionFailed)
            return 3600.0
        self._attempt += 1
        delay = float(self._policy(self._attempt - 1))
        self._state = "reconnecting"
        self._retryAt = self._clock().seconds() + delay
        reason = self._setupError or self._lastReason or "the connection was lost"
        self._setupError = None
        self._emit("reconnecting", attempt=self._attempt, delay=round(delay, 3), reason=str(reason))
        return delay

    def _firstConnectionFailed(self) -> None:
        if self._stopping is not None:
            return
        error = self._setupError or ConnectionFailed(self._lastReason or "The connection failed.")
        self._fatal(error)

    # -- stopping ---------------------------------------------------------

    def _fatal(self, error: ConchShareError) -> None:
        if self._stopping is not None:
            return
        self.error = error
        message = sentence(str(error))
        self._emit("error", message=message)
        self._beginStop(message)

    def stopService(self) -> Deferred[None]:
        """
        Stop: unmount, remove the session key files, cancel the forwards,
        disconnect, stop reconnecting.  Works in every state, also while
        paused; each step is bounded by L{ShareOptions.stepTimeout}.

        @return: a Deferred firing with L{None} once stopped (after the
            C{stopped} event); it never fails.
        """
        return self.stop()

    def stop(self, reason: str = "stopped on request") -> Deferred[None]:
        """
        L{stopService}, with the C{reason} the C{stopped} event gives.

        @return: a Deferred firing with L{None} once stopped; never fails.
        """
        return self._beginStop(reason)

    def _beginStop(self, reason: str) -> Deferred[None]:
        if self._stopping is None:
            if self.running:
                super().stopService()
            self._state = "stopping"
            self._stopping = Deferred.fromCoroutine(self._stop(reason))
        d: Deferred[None] = Deferred()

        def done(result: object) -> object:
            d.callback(None)
            return result

        self._stopping.addBoth(done)
        return d

    async def _step(
        self,
        what: str,
        action: Callable[[], Deferred[Any] | Coroutine[Any, Any, Any] | None],
        extra: float = 0.0,
    ) -> None:
        try:
            d = action()
            if d is None:
                return
            d = Deferred.fromCoroutine(d) if not isinstance(d, Deferred) else d
            d.addTimeout(self.options.stepTimeout + extra, self._getReactor())
            await d
        except Exception as e:
            _log.warn("While stopping, {what} failed: {error}", what=what, error=str(e) or repr(e))

    async def _stop(self, reason: str) -> None:
        connection = self._connection
        mount, self._mount = self._mount, None
        if mount is not None and connection is not None:
            await self._step("unmounting", mount.unmount)
        # The connection's stop removes the session key files and sockets.
        self._sessionKey = None
        if connection is not None:
            await self._step(
                "closing the connection",
                lambda: connection.stop(self.options.stepTimeout),
                extra=2.0,
            )
        client, self._client = self._client, None
        if client is not None:
            await self._step("disconnecting", client.stopService)
        self._protocol = None
        self._connection = None
        self._forwards = []
        self._state = "stopped"
        self._stopped = True
        self._emit("stopped", reason=reason)
        error = self.error
        waiters, self._forwardingWaiters = self._forwardingWaiters, []
        for w in waiters:
            w.errback(error or ConnectionFailed("The service was stopped before forwarding."))
        stopWaiters, self._stopWaiters = self._stopWaiters, []
        for s in stopWaiters:
            if error is not None:
                s.errback(error)
            else:
                s.callback(None)
