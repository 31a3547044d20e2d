"""
The nested server's keys: host key persistence, authorized_keys parsing,
the public-key checker.
"""

from __future__ import annotations

import os
import struct

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import SSHCiphers
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from conchshare.errors import UsageError
from conchshare.tunnel.nested import (
    NestedConnection,
    NestedServerTransport,
    NestedSSHServer,
    _AnyUserKeyChecker,
    _NestedUser,
    loadOrCreateHostKey,
    readAuthorizedKeys,
)
from conchshare.tunnel.sessionkey import generateSessionKey


class HostKeyTests(unittest.SynchronousTestCase):
    def test_createdThenReused(self) -> None:
        """
        A missing host key file is created 0600 (Ed25519) and read back the
        next time.
        """
        path = self.mktemp()
        first = loadOrCreateHostKey(path)
        self.assertEqual(first.sshType(), b"ssh-ed25519")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(loadOrCreateHostKey(path).public().blob(), first.public().blob())

    def test_ephemeral(self) -> None:
        self.assertNotEqual(
            loadOrCreateHostKey(None).public().blob(), loadOrCreateHostKey(None).public().blob()
        )

    def test_publicKeyFileRefused(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(generateSessionKey().public().toString("openssh"))
        self.assertRaises(UsageError, loadOrCreateHostKey, path)

    def test_hostKeyLine(self) -> None:
        key = loadOrCreateHostKey(None)
        server = NestedSSHServer(key, [generateSessionKey().public()], lambda: None)  # type: ignore[arg-type, return-value]
        line = server.hostKeyLine("[127.0.0.1]:2222")
        self.assertTrue(line.startswith("[127.0.0.1]:2222 ssh-ed25519 "))

    def test_noAuthorizedKeys(self) -> None:
        self.assertRaises(UsageError, NestedSSHServer, loadOrCreateHostKey(None), [], lambda: None)


class AuthorizedKeysTests(unittest.SynchronousTestCase):
    def test_parse(self) -> None:
        """
        Keys with and without options are read; comments and junk skipped.
        """
        a, b = generateSessionKey().public(), generateSessionKey().public()
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"# comment\n\n" + a.toString("openssh") + b" alice\n")
            f.write(b'from="127.0.0.1",no-pty ' + b.toString("openssh") + b"\njunk line\n")
        found = readAuthorizedKeys(path)
        self.assertEqual([k.blob() for k in found], [a.blob(), b.blob()])

    def test_missingOrEmpty(self) -> None:
        self.assertRaises(UsageError, readAuthorizedKeys, self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# nothing\n")
        self.assertRaises(UsageError, readAuthorizedKeys, path)


class CheckerTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.key = generateSessionKey()
        self.checker = _AnyUserKeyChecker([self.key.public()])

    def test_anyUserWithSignature(self) -> None:
        data = b"session data"
        creds = SSHPrivateKey(
            b"whoever", b"ssh-ed25519", self.key.public().blob(), data, self.key.sign(data)
        )
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(creds)), b"whoever")

    def test_queryWithoutSignature(self) -> None:
        creds = SSHPrivateKey(b"u", b"ssh-ed25519", self.key.public().blob(), None, None)
        self.failureResultOf(self.checker.requestAvatarId(creds), ValidPublicKey)

    def test_otherKeyOrBadSignature(self) -> None:
        other = generateSessionKey()
        data = b"x"
        creds = SSHPrivateKey(b"u", b"ssh-ed25519", other.public().blob(), data, other.sign(data))
        self.failureResultOf(self.checker.requestAvatarId(creds), UnauthorizedLogin)
        creds = SSHPrivateKey(
            b"u", b"ssh-ed25519", self.key.public().blob(), data, other.sign(data)
        )
        self.failureResultOf(self.checker.requestAvatarId(creds), UnauthorizedLogin)


class DisconnectLogTests(unittest.SynchronousTestCase):
    def disconnect(self, code: int, description: bytes) -> list[LogEvent]:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server = NestedServerTransport()
        server.transport = StringTransport()
        server.ssh_DISCONNECT(struct.pack(">L", code) + NS(description) + NS(b""))
        self.assertTrue(server.transport.disconnecting)
        return events

    def test_clientDone(self) -> None:
        """
        A client that disconnects "by application" (sftp quit, sshfs
        unmounted) is routine: logged at debug level only.
        """
        events = self.disconnect(11, b"disconnected by user")
        self.assertEqual([e for e in events if e["log_level"] > LogLevel.debug], [])

    def test_otherReason(self) -> None:
        """
        Other reasons: one info line with the code and the description.
        """
        events = self.disconnect(2, b"protocol error")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        self.assertEqual(
            formatEvent(events[0]),
            "The nested SSH client disconnected with code 2: protocol error.",
        )


class _Packets:
    """
    The unencrypted SSH packets a transport wrote to a L{StringTransport}
    (before any key exchange, RFC 4253 6: no cipher, no MAC).
    """

    def __init__(self, wire: StringTransport) -> None:
        self.wire = wire

    def payloads(self) -> list[bytes]:
        data = self.wire.value()
        self.wire.clear()
        found = []
        while data:
            length, padding = struct.unpack(">LB", data[:5])
            found.append(data[5 : 4 + length - padding])
            data = data[4 + length :]
        return found


class SubsystemRequestTests(unittest.SynchronousTestCase):
    """
    The C{subsystem} request of the nested server's session channels, fed
    as the nested client's packets.
    """

    def setUp(self) -> None:
        self.started: list[Protocol] = []

        def sftpFactory() -> Protocol:
            self.started.append(Protocol())
            return self.started[-1]

        server = NestedServerTransport()
        server.transport = StringTransport()
        server.currentEncryptions = SSHCiphers(b"none", b"none", b"none", b"none")
        server.currentEncryptions.setKeys(b"", b"", b"", b"", b"", b"")
        server.avatar = _NestedUser(sftpFactory)
        self.server = server
        self.conn = NestedConnection()
        self.conn.transport = server
        self.conn.serviceStarted()
        self.conn.ssh_CHANNEL_OPEN(NS(b"session") + struct.pack(">3L", 7, 1 << 20, 32768))
        self.packets = _Packets(server.transport)
        self.packets.payloads()
        self.local = self.conn.localChannelID - 1

    def request(self, data: bytes) -> list[bytes]:
        self.conn.ssh_CHANNEL_REQUEST(
            struct.pack(">L", self.local) + NS(b"subsystem") + b"\x01" + data
        )
        return self.packets.payloads()

    def test_sftp(self) -> None:
        """
        C{subsystem "sftp"} starts the SFTP server on the channel.
        """
        self.assertEqual(self.request(NS(b"sftp")), [bytes((99,)) + struct.pack(">L", 7)])
        self.assertEqual(len(self.started), 1)
        self.assertFalse(self.server.transport.disconnecting)

    def test_trailingData(self) -> None:
        """
        Bytes after the subsystem name are a malformed request: as OpenSSH's
        sshd (C{session_subsystem_req}: C{sshpkt_get_end} fails, the
        connection ends), the nested server ends the connection, with a
        protocol-error disconnect as the last packet the client gets; no
        SFTP server starts and no reply to the request comes first.
        """
        payloads = self.request(NS(b"sftp") + b"junk")
        self.assertEqual(self.started, [])
        self.assertTrue(self.server.transport.disconnecting)
        self.assertEqual(payloads[0][0], 1)  # MSG_DISCONNECT
        self.assertEqual(struct.unpack(">L", payloads[0][1:5])[0], 2)  # PROTOCOL_ERROR
        self.assertEqual(len(payloads), 1)
