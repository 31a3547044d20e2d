# mypy: allow-untyped-calls, disable-error-code="union-attr"
"""
Minimal Conch SSH clients, with conchshare's fast transport
(L{_FastClient}) and without (L{_StockClient}), that connect to a throwaway
sshd and run one command (L{runExec}): the fast path's end-to-end tests and
C{bench/transport_speed.py} use them.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.transport import SSHClientTransport
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from conchshare.tunnel.fastpath import FastTransportMixin
from tests.support.sshd import ThrowawaySSHD


class _TestClient:
    """
    Host key check against the fixture, public-key auth, one exec channel.
    """

    factory: Any

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        expected = keys.Key.fromString(self.factory.sshd.hostPublicKey.encode()).blob()
        if hostKey != expected:
            return defer.fail(Exception("host key mismatch"))
        delay = self.factory.verifyDelay
        if delay is None:
            return defer.succeed(True)
        d: defer.Deferred[bool] = defer.Deferred()
        self.factory.reactor.callLater(delay, d.callback, True)
        return d

    def connectionSecure(self) -> None:
        self.factory.secured += 1
        conn = _ExecConnection(self.factory)
        self.requestService(  # type: ignore[attr-defined]
            _KeyAuth(self.factory.sshd.user.encode(), conn, self.factory.sshd.clientKeyPath)
        )

    def _newKeys(self) -> None:
        self.factory.keyChanges += 1
        super()._newKeys()  # type: ignore[misc]

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)  # type: ignore[misc]
        if not self.factory.done.called:
            self.factory.done.errback(reason)
        self.factory.lost.callback(None)


class _FastClient(_TestClient, FastTransportMixin, SSHClientTransport):  # type: ignore[misc]
    pass


class _StockClient(_TestClient, SSHClientTransport):  # type: ignore[misc]
    pass


class _KeyAuth(userauth.SSHUserAuthClient):  # type: ignore[misc]
    def __init__(self, user: bytes, conn: SSHConnection, keyPath: str) -> None:
        super().__init__(user, conn)
        self._key = keys.Key.fromFile(keyPath)
        self._gave = False

    def getPublicKey(self) -> keys.Key | None:
        if self._gave:
            return None
        self._gave = True
        public: keys.Key = self._key.public()
        return public

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self._key)


class _ExecConnection(SSHConnection):  # type: ignore[misc]
    def __init__(self, factory: Any) -> None:
        super().__init__()
        self.factory = factory

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(_ExecChannel(self.factory, conn=self))


class _ExecChannel(SSHChannel):  # type: ignore[misc]
    """
    Runs the factory's command, writes its input, hashes its output.
    """

    name = b"session"

    def __init__(self, factory: Any, **kw: Any) -> None:
        super().__init__(localWindow=2**21, **kw)
        self.factory = factory

    def channelOpen(self, data: bytes) -> None:
        d = self.conn.sendRequest(self, b"exec", NS(self.factory.command), wantReply=True)
        d.addCallbacks(self._started, self.factory.done.errback)

    def _started(self, ignored: object) -> None:
        self.factory.started = self.factory.reactor.seconds()
        self.write(self.factory.send)
        self._pump()

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._pump()

    def _pump(self) -> None:
        # Upload factory.zeros zero bytes, never more than the window.
        f = self.factory
        if f.started is None or f.eofSent:
            return
        while f.zeros and self.remoteWindowLeft > 0 and not self.buf:
            n = min(f.zeros, self.remoteWindowLeft, 2**21)
            f.zeros -= n
            f.sent += n
            self.write(bytes(n))
            if f.onData is not None:
                f.onData(f)
        if not f.zeros:
            f.eofSent = True
            self.conn.sendEOF(self)

    def dataReceived(self, data: bytes) -> None:
        if self.factory.hashData:
            self.factory.digest.update(data)
        self.factory.count += len(data)
        if self.factory.onData is not None:
            self.factory.onData(self.factory)

    def request_exit_status(self, data: bytes) -> int:
        (self.factory.status,) = struct.unpack(">L", data)
        return 1

    def closed(self) -> None:
        self.factory.finished = self.factory.reactor.seconds()
        self.conn.transport.loseConnection()
        if not self.factory.done.called:
            self.factory.done.callback(self.factory)


class _ClientFactory(protocol.ClientFactory):
    def __init__(self, sshd: ThrowawaySSHD, transportClass: type, **kw: Any) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.protocol = transportClass
        self.sshd = sshd
        self.ciphers: list[bytes] | None = kw.get("ciphers")
        self.macs: list[bytes] | None = kw.get("macs")
        self.command: bytes = kw["command"]
        self.send: bytes = kw.get("send", b"")
        self.zeros: int = kw.get("zeros", 0)
        self.hashData: bool = kw.get("hashData", True)
        self.sent = 0
        self.eofSent = False
        self.started: float | None = None
        self.finished: float | None = None
        self.onData = kw.get("onData")
        self.verifyDelay: float | None = kw.get("verifyDelay")
        self.digest = hashlib.sha256()
        self.count = 0
        self.status: int | None = None
        self.secured = 0
        self.keyChanges = 0
        self.done: defer.Deferred[_ClientFactory] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.proto: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        if self.ciphers is not None:
            p.supportedCiphers = self.ciphers
        if self.macs is not None:
            p.supportedMACs = self.macs
        self.proto = p
        return p

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.done.errback(reason)
        self.lost.callback(None)


def runExec(sshd: ThrowawaySSHD, transportClass: type, **kw: Any) -> defer.Deferred[_ClientFactory]:
    """
    Connect to C{sshd}, run C{command} with C{send} as its input; fire with
    the factory (C{digest}, C{count}, C{status}, C{proto}) once the
    connection is closed.
    """
    f = _ClientFactory(sshd, transportClass, **kw)
    f.reactor.connectTCP(sshd.host, sshd.port, f)

    def closed(result: Any) -> Any:
        if f.proto is not None and f.proto.transport is not None:
            f.proto.transport.loseConnection()
        return f.lost.addCallback(lambda _: result)

    return f.done.addBoth(closed)
