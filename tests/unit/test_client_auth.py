"""
User auth decisions on the wire, without a server: which methods are
tried, RSA signature algorithms, what is asked, the failure sentence.
"""

from __future__ import annotations

import os
import struct
import subprocess
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.conch.ssh import userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.keys import Key
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare.tunnel.auth import ShareUserAuthClient
from conchshare.tunnel.sshconfig import ConnectOptions


class FakeTransport:
    """
    What the auth client uses of an SSH transport.
    """

    def __init__(self, serverSigAlgs: bytes = b"") -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.disconnected: tuple[int, bytes] | None = None
        self.sessionID = b"session-id"
        self.peerExtensions = {b"server-sig-algs": serverSigAlgs} if serverSigAlgs else {}
        self.service: Any = None

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.packets.append((messageType, payload))

    def sendDisconnect(self, code: int, description: bytes) -> None:
        self.disconnected = (code, description)

    def setService(self, service: Any) -> None:
        self.service = service


def failure(methods: bytes) -> bytes:
    return NS(methods) + b"\x00"


def parseRequest(payload: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    user, service, method, rest = getNS(payload, 3)
    return user, service, method, rest


class AuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.asked: list[tuple[str, bool]] = []
        self.answers: list[str] = []

    def prompt(self, text: str, echo: bool) -> str:
        self.asked.append((text, echo))
        return self.answers.pop(0)

    def client(
        self, withPrompt: bool = True, serverSigAlgs: bytes = b"", **kwargs: Any
    ) -> tuple[ShareUserAuthClient, FakeTransport]:
        settings: dict[str, Any] = dict(
            host="server.example", user="alice", identityFiles=[], useAgent=False
        )
        settings.update(kwargs)
        auth = ShareUserAuthClient(
            ConnectOptions(**settings),
            SSHConnection(),
            reactor=MemoryReactorClock(),
            prompt=self.prompt if withPrompt else None,
            terminal=lambda: False,
        )
        transport = FakeTransport(serverSigAlgs)
        auth.transport = transport
        auth.serviceStarted()
        return auth, transport

    def test_startsWithNone(self) -> None:
        auth, transport = self.client()
        self.assertEqual(
            transport.packets,
            [(userauth.MSG_USERAUTH_REQUEST, NS(b"alice") + NS(b"ssh-connection") + NS(b"none"))],
        )

    def test_nothingToTry(self) -> None:
        """
        No keys and nobody to ask: one sentence, no password asked.
        """
        auth, transport = self.client(withPrompt=False)
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey,password,keyboard-interactive"))
        self.assertIsNotNone(transport.disconnected)
        assert auth.failure is not None
        self.assertEqual(
            str(auth.failure),
            "Permission denied (publickey,password,keyboard-interactive) for"
            " alice@server.example; tried: nothing (no keys, nobody to ask).",
        )
        self.assertEqual(auth.failure.exitCode, 4)

    def test_agentSocketPathTooLong(self) -> None:
        """
        An agent socket path longer than a Unix socket address can hold is
        not connected to (no wait, no error from Twisted); the failure
        sentence says why the agent was not used.
        """
        tooLong = "/tmp/" + "a" * 120 + "/agent.sock"
        auth, transport = self.client(withPrompt=False, useAgent=True, identityAgent=tooLong)
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey"))
        self.assertEqual(auth.reactor.unixClients, [])
        assert auth.failure is not None
        self.assertIn("tried: agent (socket path longer than 107 bytes)", str(auth.failure))

    def test_passwordThreeTimes(self) -> None:
        auth, transport = self.client()
        self.answers = ["one", "two", "three"]
        for expected in ["one", "two", "three"]:
            auth.ssh_USERAUTH_FAILURE(failure(b"publickey,password"))
            kind, payload = transport.packets[-1]
            user, service, method, rest = parseRequest(payload)
            self.assertEqual((kind, method), (userauth.MSG_USERAUTH_REQUEST, b"password"))
            self.assertEqual(rest, b"\x00" + NS(expected.encode()))
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey,password"))
        self.assertEqual(self.asked, [("alice@server.example's password: ", False)] * 3)
        assert auth.failure is not None
        self.assertIn("tried: password.", str(auth.failure))

    def test_passwordDisabled(self) -> None:
        auth, transport = self.client(allowPassword=False)
        auth.ssh_USERAUTH_FAILURE(failure(b"password"))
        self.assertEqual(self.asked, [])
        self.assertIsNotNone(transport.disconnected)

    def test_keyboardInteractive(self) -> None:
        auth, transport = self.client()
        auth.ssh_USERAUTH_FAILURE(failure(b"keyboard-interactive"))
        user, service, method, rest = parseRequest(transport.packets[-1][1])
        self.assertEqual(method, b"keyboard-interactive")
        self.answers = ["123456"]
        info = (
            NS(b"")
            + NS(b"Second factor")
            + NS(b"")
            + struct.pack("!L", 1)
            + NS(b"Code: ")
            + b"\x01"
        )
        auth.ssh_USERAUTH_PK_OK(info)
        self.assertEqual(self.asked, [("Second factor\nCode: ", True)])
        self.assertEqual(
            transport.packets[-1],
            (userauth.MSG_USERAUTH_INFO_RESPONSE, struct.pack("!L", 1) + NS(b"123456")),
        )

    def rsaKeyFile(self) -> tuple[str, Key]:
        key = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        path = os.path.join(os.path.abspath(self.mktemp()))
        with open(path, "wb") as f:
            f.write(key.toString("openssh", subtype="v1"))
        os.chmod(path, 0o600)
        return path, key

    def test_rsaSignedWithSHA2(self) -> None:
        """
        An RSA key is offered and signed as the server's rsa-sha2 algorithm,
        not ssh-rsa (SHA-1, refused by OpenSSH >= 8.8).
        """
        path, key = self.rsaKeyFile()
        for algs, expected in [
            (b"ssh-ed25519,rsa-sha2-256,ssh-rsa", b"rsa-sha2-256"),
            (b"rsa-sha2-512,rsa-sha2-256", b"rsa-sha2-512"),
        ]:
            auth, transport = self.client(identityFiles=[path], serverSigAlgs=algs)
            auth.ssh_USERAUTH_FAILURE(failure(b"publickey"))
            user, service, method, rest = parseRequest(transport.packets[-1][1])
            self.assertEqual(method, b"publickey")
            algorithm, blob, _ = getNS(rest[1:], 2)
            self.assertEqual((rest[:1], algorithm, blob), (b"\x00", expected, key.blob()))
            auth.ssh_USERAUTH_PK_OK(NS(expected) + NS(blob))
            user, service, method, rest = parseRequest(transport.packets[-1][1])
            algorithm, blob, signature, _ = getNS(rest[1:], 3)
            self.assertEqual((rest[:1], algorithm), (b"\x01", expected))
            self.assertEqual(getNS(signature)[0], expected)
            signed = (
                NS(b"session-id")
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(b"alice")
                + NS(b"ssh-connection")
                + NS(b"publickey")
                + b"\x01"
                + NS(expected)
                + NS(blob)
            )
            self.assertTrue(key.public().verify(signature, signed))
        self.assertEqual(self.asked, [])

    def encryptedKeyFile(self) -> str:
        # One bcrypt round: each wrong passphrase costs milliseconds.
        path = os.path.abspath(self.mktemp())
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-a", "1", "-N", "secret", "-f", path],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        os.remove(path + ".pub")
        return path

    def test_encryptedKeyWithoutPromptIsSkipped(self) -> None:
        path = self.encryptedKeyFile()
        auth, transport = self.client(withPrompt=False, identityFiles=[path])
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey"))
        assert auth.failure is not None
        self.assertIn("(passphrase not asked: no terminal)", str(auth.failure))

    def test_wrongPassphraseThreeTimes(self) -> None:
        path = self.encryptedKeyFile()
        self.answers = ["a", "b", "c"]
        auth, transport = self.client(identityFiles=[path])
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey"))
        self.assertEqual(len(self.asked), 3)
        assert auth.failure is not None
        self.assertIn("(wrong passphrase)", str(auth.failure))

    def test_dsaKeyFilesNotLoaded(self) -> None:
        """
        DSA identity files are neither offered nor loaded (with or without
        their .pub, encrypted or not): the failure says so.
        """
        paths = []
        for name, passphrase, keepPublic in [
            ("plain", "", True),
            ("nopub", "", False),
            ("encrypted", "secret", False),
            ("pem", "", False),
        ]:
            path = os.path.abspath(self.mktemp())
            made = subprocess.run(
                ["ssh-keygen", "-q", "-t", "dsa", "-N", passphrase, "-f", path]
                + (["-m", "PEM"] if name == "pem" else []),
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            if made.returncode != 0:
                raise SkipTest("this ssh-keygen makes no DSA keys (OpenSSH 10 dropped them)")
            if not keepPublic:
                os.remove(path + ".pub")
            paths.append(path)
        self.answers = ["secret"] * 3
        auth, transport = self.client(identityFiles=paths)
        auth.ssh_USERAUTH_FAILURE(failure(b"publickey"))
        self.assertEqual(self.asked, [])
        methods = [parseRequest(payload)[2] for _, payload in transport.packets]
        self.assertEqual(methods, [b"none"])
        assert auth.failure is not None
        self.assertEqual(str(auth.failure).count("(DSA keys are not supported)"), 4)
