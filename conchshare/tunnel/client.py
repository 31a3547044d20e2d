"""
The outbound SSH connection: transport, factory, direct endpoint.

(C{sshEndpoint} and C{connectSSH}, which add C{ProxyJump}, are in
L{conchshare.tunnel.endpoint}.)

Life of one connection (L{SSHClientTransport}):
  1. TCP (or ProxyCommand, or a ProxyJump channel) is up: C{TCP_NODELAY} on,
     a timer of C{ConnectTimeout} runs until key exchange reaches the host
     key;
  2. the host key is checked by L{HostKeyVerifier} (ask, record, refuse);
  3. user auth (L{ShareUserAuthClient}); then the connection service given
     by the caller starts;
  4. one session channel runs C{true}: OpenSSH's sshd sets C{TCP_NODELAY} on
     its side only for connections that ran a command (else every small
     SFTP round trip waits on Nagle x delayed ACK); if exec is refused,
     C{TCP_QUICKACK} is re-armed on our socket after every read (Linux);
  5. L{SSHClientTransport.whenReady} fires with the connection; keep-alives
     (C{keepalive@openssh.com}, any reply counts) run every
     C{ServerAliveInterval}; C{ServerAliveCountMax} unanswered in a row and
     the connection is dropped as a dead peer.
Any failure is a L{ConchShareError} subclass with an ssh-like sentence.
"""

# Conch is untyped: its calls are checked by the tests, not by mypy.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import connection as sshconnection
from twisted.conch.ssh import keys, transport
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS
from twisted.internet import defer, error, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    ProcessEndpoint,
    StandardErrorBehavior,
)
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from conchshare.errors import (
    AuthenticationFailed,
    ConchShareError,
    ConnectionFailed,
    HostKeyError,
)
from conchshare.fdlimit import childLimitCommand
from conchshare.reactors import orGlobalReactor
from conchshare.tunnel.auth import ShareUserAuthClient
from conchshare.tunnel.fastpath import FastTransportMixin, fastCiphers, fastMACs
from conchshare.tunnel.knownhosts import HostKeyVerifier
from conchshare.tunnel.prompt import Prompt, fingerprint
from conchshare.tunnel.sshconfig import ConnectOptions

_log = Logger()

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

# Our preference among Conch's key types when nothing is known for the host
# (OpenSSH's order).
_HOST_KEY_ORDER = [
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
]


class _NagleSession(SSHChannel):
    """
    A session channel that runs C{true} and closes: sshd turns on
    C{TCP_NODELAY} for a connection once a command has run on it.

    @ivar result: fires with C{True} when exec was accepted, C{False} when
        the channel or the exec was refused.
    """

    name = b"session"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.result: Deferred[bool] = Deferred()

    def _finish(self, ok: bool) -> None:
        if not self.result.called:
            self.result.callback(ok)

    def channelOpen(self, specificData: bytes) -> None:
        if self.conn is None:
            self._finish(False)
            return
        d = self.conn.sendRequest(self, b"exec", NS(b"true"), wantReply=True)
        d.addCallbacks(lambda _: self._finish(True), lambda _: self._finish(False))
        d.addErrback(lambda _: None)

    def openFailed(self, reason: Any) -> None:
        self._finish(False)

    def dataReceived(self, data: bytes) -> None:
        pass

    def closed(self) -> None:
        self._finish(False)
        super().closed()


class SSHClientTransport(FastTransportMixin, transport.SSHClientTransport):  # type: ignore[misc]
    """
    The client side of one SSH connection, with conchshare's policies.

    AES-GCM and the faster packet layer come from L{FastTransportMixin};
    the class attributes C{supportedCiphers}, C{supportedMACs} hold the
    algorithm preferences, so a subclass can change them.

    @ivar connection: the connection service that starts after auth.
    @ivar hostKeyFingerprint: the server's C{SHA256:...} fingerprint once
        key exchange reached the host key, else L{None}.
    @ivar failure: the L{ConchShareError} that ends this connection, once
        known.
    @ivar quickAck: C{TCP_QUICKACK} is re-armed after every read.
    """

    # AES-GCM first (fastpath), then aes128-ctr before the larger keys as
    # OpenSSH orders them; hmac-sha2-256 first: no SHA-512 in hardware,
    # +18-33 % (DESIGN.md).
    supportedCiphers = fastCiphers(
        [b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"]
        + [
            c
            for c in transport.SSHClientTransport.supportedCiphers
            if c not in (b"aes128-ctr", b"aes192-ctr", b"aes256-ctr")
        ]
    )
    supportedMACs = fastMACs([b"hmac-sha2-512", b"hmac-sha2-384", b"hmac-sha1"])

    def __init__(
        self,
        options: ConnectOptions,
        connection: sshconnection.SSHConnection,
        verifier: HostKeyVerifier,
        *,
        reactor: Any = None,
        prompt: Prompt | None = None,
        keyCache: dict[str, keys.Key] | None = None,
    ) -> None:
        self.options = options
        self.connection = connection
        self.keyCache = keyCache if keyCache is not None else {}
        self.verifier = verifier
        self.reactor = orGlobalReactor(reactor)
        self.prompt = prompt
        self.hostKeyFingerprint: str | None = None
        self.failure: ConchShareError | None = None
        self.quickAck = False
        self._direct = False
        self.ready = False
        self.authClient: ShareUserAuthClient | None = None
        self._readyWaiters: list[Deferred[sshconnection.SSHConnection]] = []
        self._lostWaiters: list[Deferred[ConchShareError]] = []
        self._lostReason: ConchShareError | None = None
        self._timeout: Any = None
        self._keepAlive: LoopingCall | None = None
        self._unanswered = 0
        self._remoteError: str | None = None
        self._authStarted = False
        self._proxyKill: Any = None
        self.supportedPublicKeys = self._hostKeyPreference()

    def _hostKeyPreference(self) -> list[bytes]:
        """
        Ask first for the key types known for this host (as OpenSSH does),
        so a known host is not asked for a key type we cannot check.
        """
        offered = list(transport.SSHClientTransport.supportedPublicKeys)
        ordered = [t for t in _HOST_KEY_ORDER if t in offered]
        ordered += [t for t in offered if t not in ordered and t != b"ssh-dss"]
        known = self.verifier.preferredKeyTypes(self.options.host, self.options.port)
        knownAlgs: list[bytes] = []
        for t in known:
            knownAlgs += [b"rsa-sha2-512", b"rsa-sha2-256"] if t == b"ssh-rsa" else [t]
        first = [t for t in knownAlgs if t in ordered]
        return first + [t for t in ordered if t not in first]

    # -- API

    def whenReady(self) -> Deferred[sshconnection.SSHConnection]:
        """
        @return: a Deferred firing with the connection service once auth
            succeeded, the service started and the Nagle fix ran; or failing
            with L{ConnectionFailed}, L{HostKeyError},
            L{AuthenticationFailed} (all L{ConchShareError}).
        """
        if self.ready:
            return defer.succeed(self.connection)
        if self._lostReason is not None:
            return defer.fail(self._lostReason)
        d: Deferred[sshconnection.SSHConnection] = Deferred()
        self._readyWaiters.append(d)
        return d

    def whenLost(self) -> Deferred[ConchShareError]:
        """
        @return: a Deferred firing (never failing) with the
            L{ConchShareError} describing why the connection ended (a
            L{ConnectionFailed} for a drop or dead peer; fires too after a
            local disconnect).
        """
        if self._lostReason is not None:
            return defer.succeed(self._lostReason)
        d: Deferred[ConchShareError] = Deferred()
        self._lostWaiters.append(d)
        return d

    def fail(self, reason: ConchShareError) -> None:
        """
        End the connection now because of C{reason}.
        """
        if self.failure is None:
            self.failure = reason
        if self.transport is None:
            return
        if hasattr(self.transport, "signalProcess"):
            # A ProxyCommand: its stdio closing may not end it (the peer is
            # dead, its TCP connection is not); it has to go.
            self.transport.loseConnection()
            self._signalProxy("KILL")
            return
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _signalProxy(self, signal: str) -> None:
        signalProcess = getattr(self.transport, "signalProcess", None)
        if signalProcess is None:
            return
        try:
            signalProcess(signal)
        except (ProcessExitedAlready, OSError):
            pass

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        # Conch's own version logs two lines, and after a refused host key
        # its description carries the verification Failure's repr (a
        # traceback with local paths), which it would also send to the
        # server.  Our sentence for that is in self.failure.
        if reason == transport.DISCONNECT_HOST_KEY_NOT_VERIFIABLE:
            desc = b"bad host key"
        self.sendPacket(transport.MSG_DISCONNECT, struct.pack(">L", reason) + NS(desc) + NS(b""))
        _log.info(
            "Disconnecting from {host}: {description} (code {code}).",
            host=self.options.displayName(),
            description=desc.decode("utf-8", "replace"),
            code=reason,
        )
        self.transport.loseConnection()
        if hasattr(self.transport, "signalProcess"):
            # OpenSSH ends its ProxyCommand when it disconnects; give it a
            # moment to leave by itself on EOF.
            self._proxyKill = self.reactor.callLater(2, self._signalProxy, "TERM")

    # -- transport events

    def connectionMade(self) -> None:
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass
        self._timeout = self.reactor.callLater(self.options.connectTimeout, self._timedOut)
        self._direct = isinstance(self.transport, tcp.Connection)
        super().connectionMade()

    def _send(self, data: bytes) -> None:
        """
        Send a packet on the socket now when nothing waits in Twisted's
        buffer, instead of on the next reactor turn (every SFTP reply would
        wait for one, with two C{epoll_ctl} calls); what the socket does not
        take, and everything while something waits, goes through the
        transport's C{write} as usual, so order and backpressure are kept.
        """
        t = self.transport
        if (
            self._direct
            and t.connected
            and not t.disconnecting
            and not t._tempDataLen
            and t.offset == len(t.dataBuffer)
            and not t._writeDisconnecting
        ):
            try:
                sent = t.socket.send(data)
            except OSError:
                # EAGAIN, EINTR, or a broken connection: Twisted's own
                # write finds out and reports it.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        t.write(data)

    def _timedOut(self) -> None:
        self._timeout = None
        what = "key exchange" if self.hostKeyFingerprint is None else "authentication"
        self.fail(
            ConnectionFailed(f"Connection to {self.options.displayName()} timed out during {what}.")
        )

    def cancelConnectTimeout(self) -> None:
        """
        Stop the C{ConnectTimeout} timer: someone is being asked something.
        """
        self._cancelTimeout()

    def _cancelTimeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def dataReceived(self, data: bytes) -> None:
        self._unanswered = 0
        super().dataReceived(data)
        if self.quickAck and _TCP_QUICKACK is not None and self.transport is not None:
            getHandle = getattr(self.transport, "getHandle", None)
            if getHandle is not None:
                try:
                    getHandle().setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                except (OSError, AttributeError):
                    pass

    def verifyHostKey(self, hostKey: bytes, fingerprintMD5: bytes) -> Deferred[None]:
        try:
            key = keys.Key.fromString(hostKey)
        except Exception:
            self.failure = HostKeyError(
                f"The host key of {self.options.displayName()} could not be parsed."
            )
            return defer.fail(self.failure)
        self.hostKeyFingerprint = fingerprint(key)
        # Don't time out while a person is asked about the key.
        self._cancelTimeout()
        d = self.verifier.verify(self.options.host, self.options.port, key)

        def failed(f: Failure) -> Failure:
            if isinstance(f.value, ConchShareError):
                self.failure = self.failure or f.value
            else:
                self.failure = self.failure or HostKeyError(
                    f"Host key verification for {self.options.displayName()} failed:"
                    f" {f.getErrorMessage()}."
                )
            return f

        return d.addErrback(failed)

    def connectionSecure(self) -> None:
        # Called again after every re-key: start auth only once.
        if self._authStarted:
            return
        self._authStarted = True
        if self.options.connectTimeout:
            self._timeout = self.reactor.callLater(self.options.connectTimeout, self._timedOut)
        self.authClient = ShareUserAuthClient(
            self.options,
            self.connection,
            reactor=self.reactor,
            prompt=self.prompt,
            keyCache=self.keyCache,
        )
        self.requestService(self.authClient)

    def setService(self, service: Any) -> None:
        super().setService(service)
        if service is self.connection and not self.ready:
            self._cancelTimeout()
            self._authenticated()

    def _authenticated(self) -> None:
        session = _NagleSession(conn=self.connection)
        self.connection.openChannel(session)
        guard = self.reactor.callLater(
            self.options.connectTimeout or 15, lambda: session._finish(False)
        )

        def done(execOK: bool) -> None:
            if guard.active():
                guard.cancel()
            if not execOK:
                _log.info(
                    "exec refused on {host}: re-arming TCP_QUICKACK after each read instead",
                    host=self.options.displayName(),
                )
                self.quickAck = _TCP_QUICKACK is not None
            if self.transport is None or self._lostReason is not None:
                return
            self.ready = True
            self._startKeepAlive()
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(self.connection)

        session.result.addCallback(done)

    def _startKeepAlive(self) -> None:
        if self.options.serverAliveInterval <= 0:
            return
        self._keepAlive = LoopingCall(self._sendKeepAlive)
        self._keepAlive.clock = self.reactor
        self._keepAlive.start(self.options.serverAliveInterval, now=False)

    def _sendKeepAlive(self) -> None:
        if self._unanswered >= self.options.serverAliveCountMax:
            self.fail(
                ConnectionFailed(
                    f"Connection to {self.options.displayName()} timed out: the server is"
                    f" not responding (dead peer, {self._unanswered} keep-alives unanswered)."
                )
            )
            return
        self._unanswered += 1
        d = self.connection.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=True)
        if d is not None:
            # Any reply, success or failure, proves the peer alive.
            d.addBoth(self._keepAliveAnswered)

    def _keepAliveAnswered(self, result: object) -> None:
        self._unanswered = 0

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self._remoteError = description.decode("utf-8", "replace")
        _log.info(
            "{host} disconnected: {text}", host=self.options.displayName(), text=self._remoteError
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancelTimeout()
        if self._proxyKill is not None and self._proxyKill.active():
            self._proxyKill.cancel()
        if self._keepAlive is not None and self._keepAlive.running:
            self._keepAlive.stop()
        try:
            super().connectionLost(reason)
        finally:
            self._reportLost(reason)

    def _lostError(self, reason: Failure | None) -> ConchShareError:
        if self.failure is not None:
            return self.failure
        auth = self.authClient
        if auth is not None and auth.failure is not None:
            return auth.failure
        name = self.options.displayName()
        if auth is not None and not auth.succeeded and self._remoteError is not None:
            return AuthenticationFailed(
                f"{auth.failureMessage()[:-1]}; the server closed the connection:"
                f" {self._remoteError}."
            )
        if self._remoteError is not None:
            return ConnectionFailed(
                f"Connection to {name} closed by remote host: {self._remoteError}."
            )
        if not self.ready:
            if self.hostKeyFingerprint is None:
                return ConnectionFailed(
                    f"Connection to {name} closed before key exchange"
                    " (not an SSH server, or it refused us)."
                )
            return ConnectionFailed(f"Connection to {name} closed during authentication.")
        if reason is not None and reason.check(error.ConnectionDone):
            return ConnectionFailed(f"Connection to {name} closed.")
        return ConnectionFailed(f"Connection to {name} lost.")

    def _reportLost(self, reason: Failure | None) -> None:
        lost = self._lostError(reason)
        self._lostReason = lost
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            d.errback(lost)
        lostWaiters, self._lostWaiters = self._lostWaiters, []
        for w in lostWaiters:
            w.callback(lost)


class SSHClientFactory(ClientFactory):
    """
    Builds L{SSHClientTransport}s for one destination; usable with
    L{twisted.application.internet.ClientService}.

    @ivar verifier: the L{HostKeyVerifier} shared by every connection made.
    @ivar lastProtocol: the most recently built transport.
    """

    def __init__(
        self,
        options: ConnectOptions,
        connectionFactory: Callable[[], sshconnection.SSHConnection],
        *,
        reactor: Any = None,
        prompt: Prompt | None = None,
    ) -> None:
        self.options = options
        self.connectionFactory = connectionFactory
        self.reactor = orGlobalReactor(reactor)
        self.prompt = prompt
        self.verifier = HostKeyVerifier(options, prompt=prompt, reactor=self.reactor)
        # Passphrases are asked once per factory, not once per reconnect.
        self.keyCache: dict[str, keys.Key] = {}
        self.lastProtocol: SSHClientTransport | None = None

    def buildProtocol(self, addr: Any) -> SSHClientTransport:
        proto = SSHClientTransport(
            self.options,
            self.connectionFactory(),
            self.verifier,
            reactor=self.reactor,
            prompt=self.prompt,
            keyCache=self.keyCache,
        )
        proto.factory = self
        self.lastProtocol = proto
        return proto


def _translate(f: Failure, options: ConnectOptions, via: str) -> Failure:
    """
    Turn a low-level connect failure into a L{ConnectionFailed} sentence
    like ssh's.
    """
    if isinstance(f.value, ConchShareError):
        return f
    host = options.host
    where = f"ssh: connect to host {host} port {options.port}"
    if f.check(error.DNSLookupError):
        return Failure(
            ConnectionFailed(f"ssh: Could not resolve hostname {host}: Name or service not known.")
        )
    if f.check(error.ConnectionRefusedError):
        return Failure(ConnectionFailed(f"{where}: Connection refused."))
    if f.check(error.TimeoutError, error.UserError, defer.CancelledError):
        return Failure(ConnectionFailed(f"{where}: Connection timed out."))
    if f.check(error.NoRouteError):
        return Failure(ConnectionFailed(f"{where}: No route to host."))
    if f.check(error.ConnectError):
        text = getattr(f.value, "osError", None) or f.getErrorMessage()
        return Failure(ConnectionFailed(f"{where}{via}: {text}."))
    return Failure(ConnectionFailed(f"{where}{via}: {f.getErrorMessage()}."))


@implementer(IStreamClientEndpoint)
class _TranslatingEndpoint:
    """
    An endpoint whose connect failures are L{ConnectionFailed} sentences.
    """

    def __init__(self, wrapped: IStreamClientEndpoint, options: ConnectOptions, via: str = ""):
        self.wrapped = wrapped
        self.options = options
        self.via = via

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = defer.maybeDeferred(self.wrapped.connect, protocolFactory)
        return d.addErrback(_translate, self.options, self.via)


def directEndpoint(reactor: Any, options: ConnectOptions) -> IStreamClientEndpoint:
    """
    The stream endpoint that reaches C{options.host}'s SSH port without a
    jump host: TCP (IPv4 or IPv6, C{ConnectTimeout}), or a C{ProxyCommand}
    run by C{/bin/sh -c} (its stdio is the connection).  C{ProxyJump} is
    L{conchshare.tunnel.endpoint.sshEndpoint}'s.

    Connect failures are L{ConnectionFailed}.
    """
    reactor = orGlobalReactor(reactor)
    if options.proxyCommand:
        endpoint = ProcessEndpoint(
            reactor,
            "/bin/sh",
            # With the descriptor limit the command started with.
            ["/bin/sh", "-c", childLimitCommand(options.proxyCommand)],
            env=dict(os.environ),
            errFlag=StandardErrorBehavior.LOG,
        )
        return _TranslatingEndpoint(
            endpoint, options, f" via ProxyCommand {options.proxyCommand!r}"
        )
    return _TranslatingEndpoint(
        HostnameEndpoint(reactor, options.host, options.port, timeout=options.connectTimeout),
        options,
    )
