"""
Host key policy against known_hosts files, without a network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare.errors import HostKeyChanged, HostKeyError, HostKeyUnknown
from conchshare.tunnel import auth
from conchshare.tunnel.knownhosts import HostKeyVerifier, fingerprint, formatEntry, readEntries
from conchshare.tunnel.sshconfig import ConnectOptions


def formatFingerprint(blob: bytes) -> str:
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ed25519Key() -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate()).public()


def ecdsaKey() -> Key:
    return Key(ec.generate_private_key(ec.SECP256R1())).public()


def dsaPublicLine(directory: str) -> tuple[str, str]:
    """
    A DSA public key (C{ssh-dss AAAA...}) made by ssh-keygen, and its
    fingerprint as ssh-keygen prints it: never parsed by Conch here.
    """
    path = os.path.join(directory, "dsa")
    made = subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", path],
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    if made.returncode != 0:
        raise SkipTest("this ssh-keygen makes no DSA keys (OpenSSH 10 dropped them)")
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", path + ".pub"], check=True, capture_output=True, text=True
    )
    with open(path + ".pub") as f:
        keyType, blob = f.read().split()[:2]
    return f"{keyType} {blob}", listed.stdout.split()[1]


def line(hostField: str, key: Key) -> str:
    return f"{hostField} {key.toString('openssh').decode()}\n"


class VerifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "known_hosts")
        self.key = ed25519Key()
        self.asked: list[str] = []

    def write(self, text: str, path: str | None = None) -> None:
        with open(path or self.path, "w") as f:
            f.write(text)

    def verifier(
        self, mode: str = "yes", answer: str | None = None, **kwargs: Any
    ) -> HostKeyVerifier:
        options = ConnectOptions(
            host="server.example",
            port=2222,
            userKnownHostsFiles=[self.path],
            globalKnownHostsFiles=kwargs.pop("globalFiles", []),
            strictHostKeyChecking=mode,
            **kwargs,
        )

        def prompt(text: str, echo: bool) -> str:
            self.asked.append(text)
            assert answer is not None
            return answer

        return HostKeyVerifier(
            options, prompt=prompt if answer is not None else None, terminal=lambda: False
        )

    def verify(self, verifier: HostKeyVerifier, key: Key | None = None, port: int = 2222) -> None:
        self.successResultOf(verifier.verify("server.example", port, key or self.key))

    def refused(
        self, verifier: HostKeyVerifier, exception: type[Exception], key: Key | None = None
    ) -> Any:
        return self.failureResultOf(
            verifier.verify("server.example", 2222, key or self.key), exception
        ).value

    def test_known(self) -> None:
        self.write(
            "# comment\n\n" + line("other", ed25519Key()) + line("[server.example]:2222", self.key)
        )
        self.verify(self.verifier())

    def test_portMatters(self) -> None:
        """
        An entry without a port is for port 22 only.
        """
        self.write(line("server.example", self.key))
        self.refused(self.verifier(), HostKeyUnknown)
        self.verify(self.verifier(), port=22)

    def test_patterns(self) -> None:
        self.write(line("[*.example]:2222,!bad.example", self.key))
        self.verify(self.verifier())

    def test_hashed(self) -> None:
        self.write(formatEntry("[server.example]:2222", self.key, hashed=True) + "\n")
        with open(self.path) as f:
            self.assertTrue(f.read().startswith("|1|"))
        self.verify(self.verifier())

    def test_globalFile(self) -> None:
        globalPath = os.path.join(self.directory, "global")
        self.write(line("[server.example]:2222", self.key), globalPath)
        self.verify(self.verifier(globalFiles=[globalPath]))

    def test_rotation(self) -> None:
        """
        Two keys of one type for a host: either is accepted.
        """
        self.write(
            line("[server.example]:2222", ed25519Key()) + line("[server.example]:2222", self.key)
        )
        self.verify(self.verifier())

    def test_changedUnderEverySetting(self) -> None:
        old = ed25519Key()
        content = line("[server.example]:2222", old)
        self.write(content)
        for mode, answer in [("yes", None), ("accept-new", None), ("no", None), ("ask", "yes")]:
            error = self.refused(self.verifier(mode, answer), HostKeyChanged)
            self.assertIn(fingerprint(self.key), str(error))
            self.assertIn(fingerprint(old), str(error))
            self.assertIn(f"{self.path} line 1", str(error))
            self.assertEqual(
                (error.fingerprint, error.knownFingerprint),
                (fingerprint(self.key), fingerprint(old)),
            )
        self.assertEqual(self.asked, [])
        with open(self.path) as f:
            self.assertEqual(f.read(), content)

    def test_revoked(self) -> None:
        self.write(line("[server.example]:2222", self.key) + "@revoked * " + line("", self.key)[1:])
        error = self.refused(self.verifier("no"), HostKeyError)
        self.assertIn("revoked", str(error))

    def test_unknown(self) -> None:
        error = self.refused(self.verifier("yes"), HostKeyUnknown)
        self.assertIn(fingerprint(self.key), str(error))
        self.assertIn("--accept-new", str(error))
        self.assertFalse(os.path.exists(self.path))

    def assertChanged(self, content: str, known: list[tuple[str, str, int]]) -> None:
        """
        With C{content} in known_hosts, the Ed25519 key presented is a
        changed key under every setting (the prompt, a terminal's included,
        is never shown); the one-sentence refusal names both fingerprints,
        each known key (type, fingerprint, file and line) and the way out;
        the file is left alone.

        @param known: (type name, fingerprint, line) of each key expected.
        """
        self.write(content)
        terminalAsked: list[str] = []

        def terminalPrompt(text: str, echo: bool) -> str:
            terminalAsked.append(text)
            return "yes"

        self.patch(auth, "terminalPrompt", terminalPrompt)
        settings: list[tuple[str, str | None, bool]] = [
            ("yes", None, False),
            ("accept-new", None, False),
            ("no", None, False),
            ("ask", "yes", False),
            ("ask", None, True),
        ]
        for mode, answer, terminal in settings:
            verifier = self.verifier(mode, answer)
            verifier.terminal = (lambda: True) if terminal else (lambda: False)
            error = self.refused(verifier, HostKeyChanged)
            message = str(error)
            self.assertEqual(error.exitCode, 5)
            self.assertEqual(error.fingerprint, fingerprint(self.key))
            self.assertEqual(error.knownFingerprint, known[0][1])
            self.assertIn(f"the server sent ED25519 key {fingerprint(self.key)}", message)
            for typeName, print_, number in known:
                self.assertIn(f"{typeName} key {print_} ({self.path} line {number})", message)
            self.assertIn(f"ssh-keygen -R '[server.example]:2222' -f '{self.path}'", message)
            self.assertIn("then connect with --accept-new", message)
            self.assertEqual(len(message.splitlines()), 1)
            self.assertTrue(message.endswith("."))
        self.assertEqual((self.asked, terminalAsked), ([], []))
        with open(self.path) as f:
            self.assertEqual(f.read(), content)

    def test_otherTypeIsChanged(self) -> None:
        """
        A host known only by a key of another type presents a key that does
        not match: a changed key, as OpenSSH says, not an unknown one.
        """
        other = ecdsaKey()
        self.assertChanged(
            "# comment\n" + line("[server.example]:2222", other),
            [("ECDSA", fingerprint(other), 2)],
        )

    def test_otherTypeHashedIsChanged(self) -> None:
        other = ecdsaKey()
        self.assertChanged(
            formatEntry("[server.example]:2222", other, hashed=True) + "\n",
            [("ECDSA", fingerprint(other), 1)],
        )

    def test_everyKnownKeyListed(self) -> None:
        first, second = ecdsaKey(), ed25519Key()
        self.assertChanged(
            line("[server.example]:2222", first)
            + line("other.example", ed25519Key())
            + formatEntry("[server.example]:2222", second, hashed=True)
            + "\n",
            [("ED25519", fingerprint(second), 3), ("ECDSA", fingerprint(first), 1)],
        )

    def test_unparsedTypesMakeTheHostKnown(self) -> None:
        """
        Lines of types conchshare does not parse (C{ssh-dss}, C{sk-*}) make
        their host known: the key presented is a changed key.
        """
        dsa, dsaFingerprint = dsaPublicLine(self.directory)
        skBlob = NS(b"sk-ssh-ed25519@openssh.com") + NS(b"\x01" * 32) + NS(b"ssh:")
        sk = "sk-ssh-ed25519@openssh.com " + base64.b64encode(skBlob).decode()
        skFingerprint = formatFingerprint(skBlob)
        self.assertChanged(
            f"[server.example]:2222 {dsa}\n",
            [("DSA", dsaFingerprint, 1)],
        )
        self.assertChanged(
            f"[server.example]:2222 {sk}\n",
            [("ED25519-SK", skFingerprint, 1)],
        )
        hashed = formatEntry("[server.example]:2222", ed25519Key(), hashed=True).split()[0]
        self.assertChanged(
            f"{hashed} {sk}\n",
            [("ED25519-SK", skFingerprint, 1)],
        )

    def test_revokedOnlyIsUnknown(self) -> None:
        """
        A revoked key of a host does not make the host known.
        """
        self.write("@revoked [server.example]:2222 " + line("", ecdsaKey())[1:])
        self.refused(self.verifier("yes"), HostKeyUnknown)
        self.verify(self.verifier("accept-new"))

    def test_acceptNewRecordsOpenSSHReadable(self) -> None:
        self.write(line("other", ed25519Key()).rstrip("\n"))  # no final newline
        verifier = self.verifier("accept-new", hashKnownHosts=True)
        self.verify(verifier)
        self.assertIn("Permanently added", verifier.warnings[0])
        with open(self.path) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[1].startswith("|1|"))
        self.verify(self.verifier("yes"))
        found = subprocess.run(
            ["ssh-keygen", "-F", "[server.example]:2222", "-f", self.path],
            capture_output=True,
            text=True,
        )
        self.assertEqual(found.returncode, 0)

    def test_noAcceptsWithWarning(self) -> None:
        verifier = self.verifier("no")
        self.verify(verifier)
        self.assertTrue(any("without checking" in w for w in verifier.warnings))

    def test_askOnlyWithSomeoneToAsk(self) -> None:
        # No terminal, no prompt: refused without asking.
        self.refused(self.verifier("ask"), HostKeyUnknown)
        # BatchMode: not asked either.
        self.refused(self.verifier("ask", "yes", batchMode=True), HostKeyUnknown)
        self.assertEqual(self.asked, [])
        self.refused(self.verifier("ask", "no"), HostKeyUnknown)
        self.assertFalse(os.path.exists(self.path))
        # Answering with the fingerprint counts as yes.
        self.verify(self.verifier("ask", fingerprint(self.key)))
        self.assertEqual(len(self.asked), 2)
        self.verify(self.verifier("yes"))

    def test_createsFile0600AndDirectory0700(self) -> None:
        self.path = os.path.join(self.directory, "new", "known_hosts")
        self.verify(self.verifier("accept-new"))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(self.path)).st_mode & 0o777, 0o700)


class DSALineTests(SynchronousTestCase):
    """
    known_hosts lines of type ssh-dss are read as text, never handed to
    Conch (so cryptography never warns about DSA), and still make the host
    known.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "known_hosts")
        self.dsa, self.dsaFingerprint = dsaPublicLine(self.directory)

    def test_plainLine(self) -> None:
        with open(self.path, "w") as f:
            f.write(f"[server.example]:2222 {self.dsa} comment\n")
        [entry] = readEntries(self.path, "[server.example]:2222")
        self.assertEqual(
            (entry.keyType, entry.key, entry.fingerprint, entry.typeName, entry.line),
            (b"ssh-dss", None, self.dsaFingerprint, "DSA", 1),
        )

    def test_hashedLine(self) -> None:
        hashed = formatEntry("[server.example]:2222", ed25519Key(), hashed=True).split()[0]
        with open(self.path, "w") as f:
            f.write(f"{hashed} {self.dsa}\n")
        [entry] = readEntries(self.path, "[server.example]:2222")
        self.assertEqual((entry.keyType, entry.key), (b"ssh-dss", None))
        self.assertEqual(readEntries(self.path, "server.example"), [])

    def test_hostKnownOnlyByDSA(self) -> None:
        """
        A host known only by a DSA key is known by it: its Ed25519 key is a
        changed key, even with accept-new; the DSA type is not asked for.
        """
        with open(self.path, "w") as f:
            f.write(f"[server.example]:2222 {self.dsa}\n")
        verifier = HostKeyVerifier(
            ConnectOptions(
                host="server.example",
                port=2222,
                userKnownHostsFiles=[self.path],
                globalKnownHostsFiles=[],
                strictHostKeyChecking="accept-new",
            ),
            terminal=lambda: False,
        )
        self.assertEqual(verifier.preferredKeyTypes("server.example", 2222), [b"ssh-dss"])
        error = self.failureResultOf(
            verifier.verify("server.example", 2222, ed25519Key()), HostKeyChanged
        ).value
        self.assertIn(f"DSA key {self.dsaFingerprint} ({self.path} line 1)", str(error))
        with open(self.path) as f:
            self.assertEqual(f.read(), f"[server.example]:2222 {self.dsa}\n")
