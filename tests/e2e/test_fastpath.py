# mypy: allow-untyped-calls, disable-error-code="union-attr"
"""
Tests for L{conchshare.tunnel.fastpath}: the packet layer on its own (exact
wire bytes, whole and byte by byte), then Conch with the mixin against
OpenSSH 9.2, as a client of a throwaway C{sshd} and as a server for C{ssh}.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import (
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_IGNORE,
    SSHClientTransport,
    SSHServerTransport,
    SSHTransportBase,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from conchshare.tunnel.fastpath import GCM_CIPHERS, FastCiphers, FastTransportMixin
from tests.support.sshd import ThrowawaySSHD, available, freePort, keygen

GCM128 = b"aes128-gcm@openssh.com"
GCM256 = b"aes256-gcm@openssh.com"


# The packet layer alone.


class _Bare(FastTransportMixin, SSHTransportBase):  # type: ignore[misc]
    """
    A transport with keys set by hand that records what it dispatches.
    """

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.disconnects: list[int] = []
        self.transport = StringTransport()
        self.gotVersion = True
        self._rbuf = bytearray()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append((messageNum, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnects.append(reason)
        super().sendDisconnect(reason, desc)


def _keyed(cipher: bytes, mac: bytes = b"hmac-sha2-256") -> tuple[_Bare, _Bare, list[bytes]]:
    """
    Two transports, C{a} sending to C{b} with C{cipher}, and the six keys
    (IV, key, integrity key for a→b, then for b→a).
    """
    k = [os.urandom(64) for _ in range(6)]
    a, b = _Bare(), _Bare()
    a.currentEncryptions = FastCiphers(cipher, cipher, mac, mac)
    a.currentEncryptions.setKeys(k[0], k[1], k[3], k[4], k[2], k[5])
    b.currentEncryptions = FastCiphers(cipher, cipher, mac, mac)
    b.currentEncryptions.setKeys(k[3], k[4], k[0], k[1], k[5], k[2])
    return a, b, k


class PacketLayerTests(SynchronousTestCase):
    """
    L{FastTransportMixin} packets, without a network.
    """

    def test_preferences(self) -> None:
        """
        AES-GCM comes first, then Conch's ciphers; hmac-sha2-256 is the
        first MAC; a client class built as documented gets both.
        """

        class Client(FastTransportMixin, SSHClientTransport):  # type: ignore[misc]
            pass

        self.assertEqual(Client.supportedCiphers[:2], [GCM128, GCM256])
        self.assertIn(b"aes256-ctr", Client.supportedCiphers)
        self.assertEqual(Client.supportedMACs[0], b"hmac-sha2-256")
        self.assertIn(b"hmac-sha2-512", Client.supportedMACs)

    def test_gcmWireLayout(self) -> None:
        """
        RFC 5647 as OpenSSH does it: the length in clear is the AAD and a
        multiple of 16, then ciphertext and a 16-byte tag; the nonce is the
        IV's 4-byte fixed field and 8-byte counter, one more per packet; at
        least 4 bytes of padding.
        """
        for cipher, keyLen in GCM_CIPHERS.items():
            a, _, k = _keyed(cipher)
            iv, key = k[0], k[1][:keyLen]
            counter = int.from_bytes(iv[4:12], "big")
            for n, body in enumerate([NS(b"hello"), NS(b"x" * 1000), b""]):
                a.sendPacket(MSG_IGNORE, body)
                wire = a.transport.value()
                a.transport.clear()
                (length,) = struct.unpack("!L", wire[:4])
                self.assertEqual(length % 16, 0)
                self.assertEqual(len(wire), 4 + length + 16)
                nonce = iv[:4] + (counter + n).to_bytes(8, "big")
                plain = AESGCM(key).decrypt(nonce, wire[4:], wire[:4])
                pad = plain[0]
                self.assertGreaterEqual(pad, 4)
                self.assertEqual(plain[1:-pad], bytes((MSG_IGNORE,)) + body)

    def test_roundTrip(self) -> None:
        """
        What one side sends the other dispatches, whole, byte by byte and
        with a partial packet trailing, for GCM and for CTR/CBC with HMAC.
        """
        payloads = [NS(b"a"), os.urandom(40000), b"", os.urandom(17)]
        for cipher, mac in [
            (GCM128, b"hmac-sha2-256"),
            (GCM256, b"hmac-sha2-512"),
            (b"aes128-ctr", b"hmac-sha2-256"),
            (b"aes256-cbc", b"hmac-sha2-512"),
            (b"aes192-ctr", b"hmac-sha1"),
        ]:
            for chunk in [None, 1, 4093]:
                a, b, _ = _keyed(cipher, mac)
                for p in payloads:
                    a.sendPacket(MSG_IGNORE + 1, p)
                wire = a.transport.value()
                if chunk is None:
                    b.dataReceived(wire[:-3])
                    b.dataReceived(wire[-3:])
                else:
                    for i in range(0, len(wire), chunk):
                        b.dataReceived(wire[i : i + chunk])
                self.assertEqual(b.received, [(MSG_IGNORE + 1, p) for p in payloads])
                self.assertEqual(b.incomingPacketSequence, len(payloads))
                self.assertEqual(b.disconnects, [])
                self.assertEqual(b._rbuf, bytearray())

    def test_compressedRoundTrip(self) -> None:
        """
        With zlib negotiated, GCM packets carry the compressed message.
        """
        a, b, _ = _keyed(GCM128)
        a.outgoingCompression = zlib.compressobj(6)
        b.incomingCompression = zlib.decompressobj()
        payloads = [bytes(50000), NS(b"x")]
        for p in payloads:
            a.sendPacket(MSG_IGNORE, p)
        self.assertLess(len(a.transport.value()), 1000)
        b.dataReceived(a.transport.value())
        self.assertEqual(b.received, [(MSG_IGNORE, p) for p in payloads])

    def test_badTag(self) -> None:
        """
        A GCM packet changed on the way (ciphertext or length) is not
        dispatched; the connection is closed with a MAC error and nothing
        after it is read.
        """
        for index, bit in [(3, 0x10), (4, 1), (30, 1), (67, 0x80)]:
            a, b, _ = _keyed(GCM128)
            a.sendPacket(MSG_IGNORE, NS(b"s" * 30))
            self.assertEqual(len(a.transport.value()), 4 + 48 + 16)
            a.sendPacket(MSG_IGNORE, NS(b"after"))
            wire = bytearray(a.transport.value())
            wire[index] ^= bit
            b.dataReceived(bytes(wire))
            self.assertEqual(b.received, [])
            self.assertEqual(b.disconnects, [DISCONNECT_MAC_ERROR])
            self.assertTrue(b.transport.disconnecting)

    def test_badMAC(self) -> None:
        """
        A CTR packet with a wrong HMAC is refused with a MAC error.
        """
        a, b, _ = _keyed(b"aes128-ctr")
        a.sendPacket(MSG_IGNORE, NS(b"secret"))
        wire = bytearray(a.transport.value())
        wire[-1] ^= 1
        b.dataReceived(bytes(wire))
        self.assertEqual(b.received, [])
        self.assertEqual(b.disconnects, [DISCONNECT_MAC_ERROR])

    def test_badGCMLength(self) -> None:
        """
        A GCM length that is not a multiple of 16, or too large, is a
        protocol error (before any decryption).
        """
        for length in [20, 2**24]:
            _, b, _ = _keyed(GCM128)
            b.dataReceived(struct.pack("!L", length) + b"\0" * 64)
            self.assertEqual(b.disconnects, [DISCONNECT_PROTOCOL_ERROR])

    def test_versionThenPackets(self) -> None:
        """
        Lines before the peer's version line are skipped; packets in the
        same read as the version line are read with it.
        """
        t = _Bare()
        t.gotVersion = False
        t.buf = b""
        t.currentEncryptions = FastCiphers(b"none", b"none", b"none", b"none")
        t.currentEncryptions.setKeys(b"", b"", b"", b"", b"", b"")
        peer = _Bare()
        peer.currentEncryptions = t.currentEncryptions
        peer.sendPacket(MSG_IGNORE, NS(b"x"))
        data = b"banner\r\nSSH-2.0-OpenSSH_9.2\r\n" + peer.transport.value()
        for i in range(len(data)):
            t.dataReceived(data[i : i + 1])
        self.assertEqual(t.otherVersionString, b"SSH-2.0-OpenSSH_9.2")
        self.assertEqual(t.received, [(MSG_IGNORE, NS(b"x"))])


# Conch with the mixin as a client of OpenSSH's sshd.


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


class _E2E(TestCase):
    timeout = 30

    def setUp(self) -> None:
        why = available()
        if why:
            raise self.skipTest(why)  # type: ignore[misc]


class OpenSSHServerTests(_E2E):
    """
    Conch with the mixin as the client of OpenSSH 9.2's sshd.
    """

    def setUp(self) -> None:
        super().setUp()
        self.sshd = ThrowawaySSHD.start(self.mktemp())
        self.addCleanup(self.sshd.stop)

    @defer.inlineCallbacks
    def echo(self, ciphers: list[bytes] | None, size: int = 2**21) -> Any:
        data = os.urandom(size)
        f = yield runExec(self.sshd, _FastClient, ciphers=ciphers, command=b"cat", send=data)
        self.assertEqual((f.count, f.status), (size, 0))
        self.assertEqual(f.digest.digest(), hashlib.sha256(data).digest())
        return f

    @defer.inlineCallbacks
    def test_gcmByDefault(self) -> Any:
        """
        Without forcing anything, aes128-gcm is chosen both ways, and 2 MiB
        of random bytes go through C{cat} and back intact.
        """
        f = yield self.echo(None)
        enc = f.proto.currentEncryptions
        self.assertEqual((enc.outCipType, enc.inCipType), (GCM128, GCM128))
        self.assertEqual(f.secured, 1)

    @defer.inlineCallbacks
    def test_eachCipher(self) -> Any:
        """
        Each cipher the mixin offers, forced alone, carries data both ways;
        the MAC is hmac-sha2-256 where one is used.
        """
        for cipher in [GCM256, b"aes128-ctr", b"aes256-ctr"]:
            f = yield self.echo([cipher], size=300000)
            enc = f.proto.currentEncryptions
            self.assertEqual((enc.outCipType, enc.inCipType), (cipher, cipher))
            if cipher not in GCM_CIPHERS:
                self.assertEqual(enc.outMACType, b"hmac-sha2-256")

    @defer.inlineCallbacks
    def test_rekeyMidTransfer(self) -> Any:
        """
        A key exchange we start in the middle of a 16 MB download under GCM
        loses and corrupts nothing, and does not run C{connectionSecure}
        again.
        """
        size = 16_000_000

        def rekey(f: _ClientFactory) -> None:
            if f.count >= 2_000_000 and f.keyChanges == 1:
                f.keyChanges += 1  # only once
                f.proto.sendKexInit()

        f = yield runExec(
            self.sshd,
            _FastClient,
            command=b"head -c %d /dev/zero" % size,
            onData=rekey,
        )
        self.assertEqual((f.count, f.status), (size, 0))
        self.assertEqual(f.digest.digest(), hashlib.sha256(bytes(size)).digest())
        self.assertEqual(f.keyChanges, 3)
        self.assertEqual(f.secured, 1)
        self.assertEqual(f.proto.currentEncryptions.inCipType, GCM128)

    @defer.inlineCallbacks
    def test_rekeyMidUpload(self) -> Any:
        """
        A key exchange we start in the middle of a 16 MB upload under GCM:
        what we send meanwhile waits for the new keys, and C{sha256sum} on
        the server sees every byte.
        """
        size = 16_000_000

        def rekey(f: _ClientFactory) -> None:
            if f.sent >= 2_000_000 and f.keyChanges == 1:
                f.keyChanges += 1
                f.proto.sendKexInit()

        f = yield runExec(self.sshd, _FastClient, command=b"sha256sum", zeros=size, onData=rekey)
        self.assertEqual(f.status, 0)
        self.assertEqual(f.keyChanges, 3)
        self.assertEqual(f.count, 68)
        self.assertEqual(
            f.digest.digest(),
            hashlib.sha256(hashlib.sha256(bytes(size)).hexdigest().encode() + b"  -\n").digest(),
        )

    @defer.inlineCallbacks
    def test_lateHostKeyVerification(self) -> Any:
        """
        When C{verifyHostKey} answers later, the packets sshd sends after its
        C{NEWKEYS} wait for our keys instead of being decrypted with the old
        ones.
        """
        f = yield runExec(self.sshd, _FastClient, command=b"echo ok", verifyDelay=0.1)
        self.assertEqual((f.count, f.status), (3, 0))


# Conch with the mixin as a server for OpenSSH's ssh.


class _EchoChannel(SSHChannel):  # type: ignore[misc]
    """
    A session whose every command echoes its input.
    """

    name = b"session"

    def __init__(self, **kw: Any) -> None:
        super().__init__(localWindow=2**21, **kw)

    def request_exec(self, data: bytes) -> int:
        self.command = getNS(data)[0]
        self.conn.transport.factory.sessions.append(self)
        return 1

    def dataReceived(self, data: bytes) -> None:
        self.write(data)

    def eofReceived(self) -> None:
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
        self.conn.sendEOF(self)
        self.loseConnection()


class _Realm:
    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> Any:
        avatar = ConchUser()
        avatar.channelLookup[b"session"] = _EchoChannel
        return IConchUser, avatar, lambda: None


@implementer(ICredentialsChecker)
class _OneKeyChecker:
    """
    Accepts one user with one public key (C{twisted.conch.checkers} imports
    the deprecated C{spwd}).
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, user: bytes, key: keys.Key) -> None:
        self.user = user
        self.key = key

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        if credentials.username != self.user or credentials.blob != self.key.blob():
            return defer.fail(UnauthorizedLogin())
        if credentials.signature is None:
            return defer.fail(ValidPublicKey())
        if not self.key.verify(credentials.signature, credentials.sigData):
            return defer.fail(UnauthorizedLogin())
        return defer.succeed(self.user)


class _FastServer(FastTransportMixin, SSHServerTransport):  # type: ignore[misc]
    def _newKeys(self) -> None:
        self.factory.rekeys += 1  # type: ignore[attr-defined]
        super()._newKeys()


class _ServerFactory(SSHFactory):  # type: ignore[misc]
    protocol = _FastServer
    services = {b"ssh-userauth": userauth.SSHUserAuthServer, b"ssh-connection": SSHConnection}

    def __init__(self, hostKey: keys.Key, user: bytes, clientKey: keys.Key) -> None:
        self.publicKeys = {b"ssh-ed25519": hostKey.public()}
        self.privateKeys = {b"ssh-ed25519": hostKey}
        checker = _OneKeyChecker(user, clientKey)
        self.portal = Portal(_Realm(), [checker])  # type: ignore[arg-type]
        self.sessions: list[_EchoChannel] = []
        self.rekeys = 0


class _SSHProcess(protocol.ProcessProtocol):
    def __init__(self, send: bytes) -> None:
        self.send = send
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.send)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.ended.callback(0)
        elif reason.check(ProcessTerminated):
            self.ended.callback(reason.value.exitCode)  # type: ignore[union-attr]
        else:
            self.ended.errback(reason)


class OpenSSHClientTests(_E2E):
    """
    Conch with the mixin as a server, OpenSSH 9.2's C{ssh} as the client.
    """

    def setUp(self) -> None:
        super().setUp()
        from twisted.internet import reactor

        self.reactor = reactor
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory, mode=0o700)
        self.clientKeyPath = os.path.join(directory, "client_key")
        clientLine = keygen(self.clientKeyPath)
        hostKey = keys.Key(ed25519.Ed25519PrivateKey.generate())
        self.factory = _ServerFactory(hostKey, b"tester", keys.Key.fromString(clientLine))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")  # type: ignore[attr-defined, arg-type]
        self.addCleanup(self.port.stopListening)
        self.portNumber: int = self.port.getHost().port  # type: ignore[attr-defined]
        self.knownHostsPath = os.path.join(directory, "known_hosts")
        with open(self.knownHostsPath, "w") as f:
            hostLine = hostKey.public().toString("openssh").decode()
            f.write(f"[127.0.0.1]:{self.portNumber} {hostLine}\n")

    @defer.inlineCallbacks
    def ssh(self, options: list[str], send: bytes) -> Any:
        """
        Run C{ssh} against our server with C{send} as its input; return
        what it wrote.
        """
        args = ["ssh", "-F", "/dev/null", *options]
        args += ["-p", str(self.portNumber), "-i", self.clientKeyPath]
        args += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        args += ["-o", f"UserKnownHostsFile={self.knownHostsPath}"]
        args += ["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"]
        args += ["tester@127.0.0.1", "echo"]
        p = _SSHProcess(send)
        self.reactor.spawnProcess(p, "ssh", args, env=dict(os.environ))  # type: ignore[attr-defined]
        code = yield p.ended
        self.assertEqual(code, 0, b"".join(p.err).decode(errors="replace"))
        return b"".join(p.out)

    @defer.inlineCallbacks
    def test_gcm(self) -> Any:
        """
        C{ssh -c aes128-gcm@openssh.com} and C{aes256-gcm@openssh.com} log
        in with a key and get 2 MiB echoed back intact.
        """
        for cipher in GCM_CIPHERS:
            data = os.urandom(2**21)
            out = yield self.ssh(["-c", cipher.decode()], data)
            self.assertEqual(hashlib.sha256(out).digest(), hashlib.sha256(data).digest())
            enc = self.factory.sessions[-1].conn.transport.currentEncryptions
            self.assertEqual((enc.inCipType, enc.outCipType), (cipher, cipher))

    @defer.inlineCallbacks
    def test_rekeyByClient(self) -> Any:
        """
        C{ssh -o RekeyLimit=1M} re-keys every megabyte under GCM while 4 MiB
        go each way; nothing is lost.
        """
        data = os.urandom(2**22)
        out = yield self.ssh(["-c", GCM128.decode(), "-o", "RekeyLimit=1M"], data)
        self.assertEqual(hashlib.sha256(out).digest(), hashlib.sha256(data).digest())
        transport = self.factory.sessions[-1].conn.transport
        self.assertGreater(transport.outgoingPacketSequence, 100)
        self.assertGreater(transport.factory.rekeys, 3)

    @defer.inlineCallbacks
    def test_sshDefaults(self) -> Any:
        """
        With its default preferences C{ssh} picks aes128-ctr and
        hmac-sha2-256 (the precomputed-HMAC path), and data goes through.
        """
        data = os.urandom(2**20)
        out = yield self.ssh([], data)
        self.assertEqual(out, data)
        enc = self.factory.sessions[-1].conn.transport.currentEncryptions
        self.assertEqual((enc.inCipType, enc.inMACType), (b"aes128-ctr", b"hmac-sha2-256"))


__all__ = ["runExec", "freePort"]
