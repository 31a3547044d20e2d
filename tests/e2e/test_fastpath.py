# mypy: allow-untyped-calls, disable-error-code="union-attr"
"""
Tests for L{conchshare.tunnel.fastpath}: Conch with the mixin against
OpenSSH 9.2, as a client of a throwaway C{sshd} and as a server for C{ssh}
(the packet layer on its own is in L{tests.unit.test_fastpath}).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.avatar import ConchUser
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys, userauth
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import (
    SSHServerTransport,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from conchshare.tunnel.fastpath import GCM_CIPHERS, FastTransportMixin
from tests.support.conchclient import _ClientFactory, _FastClient, runExec
from tests.support.sshd import ThrowawaySSHD, available, freePort, keygen

GCM128 = b"aes128-gcm@openssh.com"
GCM256 = b"aes256-gcm@openssh.com"


# Conch with the mixin as a client of OpenSSH's sshd.


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
