"""
The nested server's keys: host key persistence, authorized_keys parsing,
the public-key checker.
"""

from __future__ import annotations

import os
import struct

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import NS
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from conchshare.errors import UsageError
from conchshare.tunnel.nested import (
    NestedServerTransport,
    NestedSSHServer,
    _AnyUserKeyChecker,
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
