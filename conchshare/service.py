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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from conchshare.errors import (
    ConchShareError,
    ConnectionFailed,
    ForwardRefused,
    HostKeyError,
    UsageError,
    sentence,
)
from conchshare.events import Event, EventObserver, makeEvent
from conchshare.shares import ShareError, ShareSet

__all__ = [
    "MODES",
    "MOUNT_VIAS",
    "AuditingAvatar",
    "ForwardSpec",
    "ShareOptions",
    "ShareService",
]

#: Endpoint modes of a forward.
MODES = ("ssh", "raw")

#: Transports of C{conchshare mount --via}.
MOUNT_VIAS = ("passive", "ssh", "socket", "raw-tcp")

_log = Logger(namespace="conchshare.service")


@dataclass(frozen=True)
class ForwardSpec:
    """
    One forward to request: a TCP C{address} and C{port} (0: any), or a
    remote Unix C{socket} path (C{""}: a fresh one).
    """

    address: str = "127.0.0.1"
    port: int = 0
    socket: str | None = None


@dataclass
class ShareOptions:
    """
    How a L{ShareService} connects, forwards and serves.  The fields mirror
    the options of C{conchshare share} and C{conchshare mount}.

    @ivar mode: C{"ssh"} (nested SSH server) or C{"raw"} (SFTP straight on
        the channel).
    @ivar remoteListen: TCP forwards as C{(address, port)}; L{None} means
        C{[("127.0.0.1", 0)]}, or none if C{remoteSocket} is set.
    @ivar remoteSocket: a remote Unix socket path to forward, C{""} for a
        fresh path, L{None} for no socket forward.
    @ivar identities: C{-i} key files.
    @ivar knownHosts: C{--known-hosts} (C{-o UserKnownHostsFile=}).
    @ivar acceptNew: C{--accept-new} (C{-o StrictHostKeyChecking=accept-new}).
    @ivar authorizedKeys: keys the nested SSH server accepts (ssh mode, and
        a mount C{via} C{ssh}, besides the mount's own session key).
    @ivar hostKey: the nested SSH server's host key file (created if missing).
    @ivar sessionKey: install a session key on the remote host; L{None}: in
        ssh mode when there is no C{authorizedKeys}.
    @ivar readOnly: refuse every change to the shares.
    @ivar umask: applied to files and folders the remote side creates.
    @ivar verbose: log every SFTP request (an audit trail).
    @ivar configFile: C{-F}; C{port}: C{-p}; C{jump}: C{-J};
        C{sshOptions}: C{-o} values.
    @ivar mountAt: mount the shares at this remote folder (C{mount}).
    @ivar mountVia: C{passive}, C{ssh}, C{socket} or C{raw-tcp}.
    @ivar retryInitialDelay: first reconnect delay, seconds.
    @ivar retryMaxDelay: longest reconnect delay, seconds (before jitter).
    @ivar stepTimeout: longest wait for each step of a stop, seconds.
    """

    mode: str = "ssh"
    remoteListen: list[tuple[str, int]] | None = None
    remoteSocket: str | None = None
    identities: list[str] = field(default_factory=list)
    knownHosts: str | None = None
    acceptNew: bool = False
    authorizedKeys: str | None = None
    hostKey: str | None = None
    sessionKey: bool | None = None
    readOnly: bool = False
    umask: int = 0o022
    verbose: bool = False
    configFile: str | None = None
    port: int | None = None
    jump: str | None = None
    sshOptions: list[str] = field(default_factory=list)
    mountAt: str | None = None
    mountVia: str = "passive"
    retryInitialDelay: float = 1.0
    retryMaxDelay: float = 60.0
    stepTimeout: float = 10.0

    def check(self) -> None:
        """
        @raise UsageError: the options contradict each other.
        """
        if self.mode not in MODES:
            raise UsageError(f"Unknown mode {self.mode!r}; use ssh or raw.")
        if self.mountVia not in MOUNT_VIAS:
            raise UsageError(f"Unknown --via {self.mountVia!r}; use {', '.join(MOUNT_VIAS)}.")
        if self.mountAt is not None:
            # The mount's own sshfs runs unattended on the remote host: it
            # logs in to the nested server with the session key the mount
            # installs, so that key cannot be left out.
            if self.sessionKey is False:
                raise UsageError(
                    "A mount always installs a session key for its own sshfs;"
                    " --no-session-key is for share."
                )
            if self.authorizedKeys is not None and self.mountVia != "ssh":
                raise UsageError("--authorized-keys needs --via ssh.")
        elif self.authorizedKeys is not None and self.mode != "ssh":
            raise UsageError("--authorized-keys needs --mode ssh.")
        if self.sessionKey and self.mode != "ssh":
            raise UsageError("--session-key needs --mode ssh.")
        if not 0 <= self.umask <= 0o777:
            raise UsageError(f"Bad umask {self.umask:o}.")

    def effectiveMode(self) -> str:
        """
        The endpoint mode of the forwards, after C{mountVia}.
        """
        if self.mountAt is not None:
            return "ssh" if self.mountVia == "ssh" else "raw"
        return self.mode

    def wantsSessionKey(self) -> bool:
        """
        Whether a session key is installed on the remote host.
        """
        if self.effectiveMode() != "ssh" or self.mountAt is not None:
            return False  # a mount installs its own key
        if self.sessionKey is not None:
            return self.sessionKey
        return self.authorizedKeys is None

    def forwards(self) -> list[ForwardSpec]:
        """
        The forwards the service requests, in order (none for a mount: the
        remote mount requests the one its C{mountVia} needs).
        """
        if self.mountAt is not None:
            return []  # the remote mount requests the forward it needs
        specs = [ForwardSpec(address=a, port=p) for a, p in (self.remoteListen or [])]
        if self.remoteSocket is not None:
            specs.append(ForwardSpec(socket=self.remoteSocket))
        if not specs:
            specs.append(ForwardSpec())
        return specs

    def sshOptionList(self) -> list[str]:
        """
        The C{-o} values, with C{--known-hosts} and C{--accept-new} first.
        """
        result: list[str] = []
        if self.knownHosts is not None:
            result.append(f"UserKnownHostsFile={os.path.abspath(self.knownHosts)}")
        if self.acceptNew:
            result.append("StrictHostKeyChecking=accept-new")
        return result + list(self.sshOptions)


def asConchShareError(failure: Failure | BaseException) -> ConchShareError:
    """
    The person-readable error for a failure of the tunnel.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if exc is None:
        return ConnectionFailed("The connection failed.")
    if isinstance(exc, ConchShareError):
        return exc
    if isinstance(exc, ShareError):
        return UsageError(str(exc))
    if isinstance(exc, DNSLookupError):
        return ConnectionFailed(f"Could not resolve the host name: {_reasonText(exc)}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed("The connection timed out.")
    if isinstance(exc, ConnectError):
        return ConnectionFailed(f"Could not connect: {_reasonText(exc)}")
    if isinstance(exc, ConnectionDone):
        return ConnectionFailed("The server closed the connection.")
    return ConnectionFailed(f"The connection failed: {_reasonText(exc)}")


def _reasonText(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.rstrip(".")
    return text + "."


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
        self._reactor = reactor
        self._observers: list[EventObserver] = []
        self._state = "stopped"
        self._paused = False
        self._client: ClientService | None = None
        self._protocol: Any = None
        self._connection: Any = None
        self._forwards: list[Any] = []
        self._previousPorts: dict[ForwardSpec, int] = {}
        self._sessionKey: Any = None
        self._mount: Any = None
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
        self._connectOptions: Any = None
        self._avatar: Any = None
        self._serveChannel: Any = None
        self._sessionPrivateKey: Any = None
        self._sessions = 0
        self._nestedServer: Any = None

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
        return self._getReactor()  # type: ignore[no-any-return]

    def _getReactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
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
        group = self._group()
        if group is not None:
            for channel in group:
                channels += 1
                bytesIn += getattr(channel, "bytesIn", 0)
                bytesOut += getattr(channel, "bytesOut", 0)
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
            "remote_path": getattr(self._mount, "remotePath", None),
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
        from conchshare.tunnel.client import SSHClientFactory, sshEndpoint

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
            self._serveChannel = self._protocolFactory()
        endpoint = _FailureRecordingEndpoint(
            sshEndpoint(reactor, self._connectOptions), self._connectFailed
        )
        factory = _LossReportingFactory(
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

    def _makeAvatar(self) -> Any:
        """
        The SFTP avatar serving every channel (shared by every connection).
        """
        from conchshare.sftp.avatar import ShareSFTPServer

        reactor = self._getReactor()
        avatar = ShareSFTPServer(self.shares, umask=self.options.umask, reactor=reactor)

        def moved(share: Any, message: str) -> None:
            # Noticed in a worker thread: the event is emitted in the
            # reactor's; the service goes on serving the other shares.
            reactor.callFromThread(self._emit, "error", message=message)

        avatar.filesystem.shareMoved = moved
        return avatar

    def _protocolFactory(self) -> Any:
        """
        What serves one forwarded channel in the endpoint mode.
        """
        from conchshare.sftp.protocol import SFTPServerProtocol

        avatar = self._avatar
        if self.options.effectiveMode() == "raw":
            return lambda: SFTPServerProtocol(self._sessionAvatar(avatar))
        return self._nestedServerFactory(avatar)

    def _sessionAvatar(self, avatar: Any) -> Any:
        """
        The avatar one SFTP session uses: the shared avatar's view for one
        connection (its requests are ordered among themselves only); with
        C{verbose}, one that logs every request (L{AuditingAvatar}).
        """
        avatar = avatar.forConnection()
        if not self.options.verbose:
            return avatar
        self._sessions += 1
        return AuditingAvatar(avatar, f"session {self._sessions}")

    def _nestedServerFactory(self, avatar: Any) -> Any:
        """
        The nested SSH server of the C{ssh} mode: its host key (loaded, or
        created where C{--host-key} says), the authorized keys and the
        session key.
        """
        from conchshare.sftp.protocol import SFTPServerProtocol
        from conchshare.tunnel import nested, sessionkey

        hostKey = nested.loadOrCreateHostKey(self.options.hostKey)
        authorized = []
        if self.options.authorizedKeys is not None:
            authorized.extend(nested.readAuthorizedKeys(self.options.authorizedKeys))
        if self.options.wantsSessionKey():
            self._sessionPrivateKey = sessionkey.generateSessionKey()
            authorized.append(self._sessionPrivateKey.public())
        self._nestedServer = nested.NestedSSHServer(
            hostKey,
            authorized,
            lambda: SFTPServerProtocol(self._sessionAvatar(avatar)),
            reactor=self._getReactor(),
        )
        return self._nestedServer.buildProtocol

    def _buildConnection(self) -> Any:
        from conchshare.tunnel.connection import ShareConnection

        connection = ShareConnection(reactor=self._getReactor())
        connection.addObserver(self._connectionEvent)
        return connection

    def _group(self) -> Any:
        if self._connection is None:
            return None
        return getattr(self._connection, "group", None)

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

    def _connectionLost(self, protocol: Any, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._connection = None
        self._forwards = []
        if self._setupError is None:
            # The transport's own sentence when it ended the connection (a
            # dead peer: keep-alives unanswered), not how the socket closed.
            failure = getattr(protocol, "failure", None)
            self._lastReason = str(
                failure if isinstance(failure, ConchShareError) else asConchShareError(reason)
            )

    def _connectionMade(self, protocol: Any) -> None:
        """
        C{prepareConnection} of the L{ClientService}: start setting the
        connection up, asynchronously.  It never fails: a failure drops the
        connection (see the module docstring), which is how ClientService
        learns to retry.
        """
        # ClientService hands us its proxy around ours.
        protocol = getattr(protocol, "_protocol", protocol)
        self._protocol = protocol
        self._setupError = None
        d = Deferred.fromCoroutine(self._setUp(protocol))
        d.addErrback(self._setUpFailed, protocol)

    async def _setUp(self, protocol: Any) -> None:
        connection = await protocol.whenReady()
        if self._stopping is not None or protocol is not self._protocol:
            return
        self._connection = connection
        options = self._connectOptions
        self._state = "connected"
        self._emit(
            "connected",
            host=options.host,
            port=options.port,
            user=options.user,
            host_key=getattr(protocol, "hostKeyFingerprint", None),
        )
        if self._paused:
            connection.group.pause()
        forwards: list[Any] = []
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

    def _allForwards(self) -> list[Any]:
        """
        The granted listeners: ours, and the remote mount's.
        """
        mountListener = self._mount.listener if self._mount is not None else None
        return self._forwards + ([mountListener] if mountListener is not None else [])

    def _listeners(self) -> list[tuple[str, int] | str]:
        return [
            (f.socketPath or "") if f.isUnix else (f.address, f.port) for f in self._allForwards()
        ]

    async def _requestForward(self, connection: Any, spec: ForwardSpec) -> Any:
        """
        Request one forward; on a reconnect, the port allocated before first.

        @return: the granted L{conchshare.tunnel.connection.Listener}.
        @raise ForwardRefused: the server refused it.
        """
        from conchshare.tunnel.connection import Listener

        mode = self.options.effectiveMode()
        if spec.socket is not None:
            listener = Listener(
                mode=mode,
                protocolFactory=self._serveChannel,
                socketPath=spec.socket or None,
                streamlocal=True,
            )
            return await connection.requestForward(listener)
        ports = [spec.port]
        previous = self._previousPorts.get(spec)
        if previous is not None and previous != spec.port:
            ports.insert(0, previous)
        for index, port in enumerate(ports):
            listener = Listener(
                mode=mode, protocolFactory=self._serveChannel, address=spec.address, port=port
            )
            try:
                granted = await connection.requestForward(listener)
            except ForwardRefused:
                if index == len(ports) - 1:
                    raise
                continue
            self._previousPorts[spec] = granted.port
            return granted
        raise AssertionError("unreachable")

    async def _installSessionKey(self, connection: Any) -> None:
        from conchshare.tunnel import sessionkey

        tcp = [f for f in self._forwards if not f.isUnix]
        if not tcp or self._sessionPrivateKey is None:
            return
        installed = await sessionkey.installSessionKey(
            connection,
            self._sessionPrivateKey,
            self._nestedServer.hostKey,
            tcp[0].port,
            self._connectOptions.user,
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

    async def _startMount(self, connection: Any) -> None:
        from conchshare.mount import RemoteMount

        if self._mount is None:
            assert self.options.mountAt is not None
            self._mount = RemoteMount(
                connection,
                self.shares,
                self.options.mountAt,
                via=self.options.mountVia,
                reactor=self._getReactor(),
                avatarFactory=lambda shares: self._sessionAvatar(self._avatar),
                hostKey=self._mountHostKey(),
                authorizedKeys=self._mountAuthorizedKeys(),
                observer=self._publish,
                sshfsOptions=["ro"] if self.options.readOnly else [],
            )
            await self._mount.mount()
        else:
            await self._mount.remount(connection)

    def _mountHostKey(self) -> Any:
        if self.options.mountVia != "ssh" or self.options.hostKey is None:
            return None
        from conchshare.tunnel.nested import loadOrCreateHostKey

        return loadOrCreateHostKey(self.options.hostKey)

    def _mountAuthorizedKeys(self) -> list[Any]:
        if self.options.mountVia != "ssh" or self.options.authorizedKeys is None:
            return []
        from conchshare.tunnel.nested import readAuthorizedKeys

        return readAuthorizedKeys(self.options.authorizedKeys)

    def _setUpFailed(self, failure: Failure, protocol: Any) -> None:
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
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()

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

    async def _step(self, what: str, action: Any, extra: float = 0.0) -> None:
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


#: Avatar methods logged by L{AuditingAvatar}: those that name paths.
_AUDITED = frozenset(
    {
        "openFile",
        "removeFile",
        "renameFile",
        "makeDirectory",
        "removeDirectory",
        "openDirectory",
        "getAttrs",
        "setAttrs",
        "readLink",
        "makeLink",
        "realPath",
        "posixRename",
        "statVFS",
        "hardLink",
        "lsetStat",
        "expandPath",
        "copyData",
    }
)

_audit = Logger(namespace="conchshare.audit")

#: Characters a client could use to forge or hide audit lines: C1 controls
#: and the Unicode line and paragraph separators (str.splitlines() breaks
#: lines at them).
_AUDIT_ESCAPED_UNICODE = frozenset(chr(c) for c in range(0x80, 0xA0)) | {"\u2028", "\u2029"}


def auditText(value: bytes | str) -> str:
    """
    A client-supplied string as the audit log shows it: on one line and
    unambiguous.  C{\\}, bytes below 0x20, 0x7f, bytes that are not UTF-8,
    C1 controls and U+2028/U+2029 are written as C{\\xNN} (one per byte
    of their UTF-8 form); everything else is kept.
    """
    if isinstance(value, bytes):
        raw = value
    else:
        # Undecodable bytes come back as they were (surrogateescape); any
        # other lone surrogate as its (invalid) UTF-8 bytes.
        raw = b"".join(
            c.encode("utf-8", "surrogateescape" if "\udc80" <= c <= "\udcff" else "surrogatepass")
            for c in value
        )
    out = []
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\" or code < 0x20 or code == 0x7F or char in _AUDIT_ESCAPED_UNICODE:
            out.append("".join(f"\\x{b:02x}" for b in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


class AuditingAvatar:
    """
    Wraps a share avatar and logs each request that names a path (the
    audit trail of C{-v}), at info level in the C{conchshare.audit}
    namespace: session, operation, virtual paths, result.  File contents
    are never logged; what the client sent is escaped (L{auditText}).  It provides the interfaces the avatar provides.
    """

    def __init__(self, avatar: Any, session: str) -> None:
        self._avatar = avatar
        self._session = session
        directlyProvides(self, providedBy(avatar))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._avatar, name)
        if name not in _AUDITED or not callable(attribute):
            return attribute

        def audited(*args: Any, **kwargs: Any) -> Any:
            paths = " ".join(auditText(a) for a in args if isinstance(a, bytes))
            d: Deferred[Any] = maybeDeferred(attribute, *args, **kwargs)

            def ok(result: object) -> object:
                _audit.info(
                    "{session}: {operation} {paths} -> ok",
                    session=self._session,
                    operation=name,
                    paths=paths,
                )
                return result

            def failed(reason: Failure) -> Failure:
                _audit.info(
                    "{session}: {operation} {paths} -> {error}",
                    session=self._session,
                    operation=name,
                    paths=paths,
                    # The message may quote the client's path.
                    error=f"{type(reason.value).__name__}: {auditText(reason.getErrorMessage())}",
                )
                return reason

            return d.addCallbacks(ok, failed)

        return audited


@implementer(IStreamClientEndpoint)
class _FailureRecordingEndpoint:
    """
    Wraps the SSH endpoint to remember why a connection attempt failed.
    """

    def __init__(self, endpoint: Any, onFailure: Any) -> None:
        self._endpoint = endpoint
        self._onFailure = onFailure

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._onFailure(f)
            return f

        return d.addErrback(failed)


@implementer(IProtocol)
class _LossReportingProtocol:
    """
    A protocol proxy that reports C{connectionLost} after the protocol saw it.
    """

    def __init__(self, protocol: Any, onLost: Any) -> None:
        self._protocol = protocol
        self._onLost = onLost

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self._protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        try:
            self._protocol.connectionLost(reason)
        finally:
            self._onLost(self, reason)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)


@implementer(IProtocolFactory)
class _LossReportingFactory:
    def __init__(self, factory: Any, onLost: Any) -> None:
        self._factory = factory
        self._onLost = onLost

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        return _LossReportingProtocol(protocol, self._onLost)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)
