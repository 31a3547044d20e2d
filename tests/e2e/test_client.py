"""
The outbound SSH client against a throwaway OpenSSH sshd: key types, agent,
passphrases, host keys, auth failures, connect errors, keep-alive.  Direct
sends, which need no sshd, are tested in L{tests.unit.test_client}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.conch.ssh.connection import SSHConnection
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from conchshare.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    HostKeyChanged,
    HostKeyUnknown,
)
from conchshare.tunnel.client import SSHClientFactory, SSHClientTransport
from conchshare.tunnel.endpoint import sshEndpoint
from conchshare.tunnel.sshconfig import ConnectOptions, resolve
from tests.support.sshclient import ClientTestMixin, descendants, runRemote, sshKeygenFingerprint
from tests.support.sshd import freePort, keygen


class KeyTypeTests(ClientTestMixin, TestCase):
    """
    Connect and exec with each key type: RSA proves rsa-sha2 signatures,
    since OpenSSH 9.2 refuses ssh-rsa (SHA-1).
    """

    async def _connectWith(self, keyType: str) -> None:
        sshd = self.startSSHD(clientKeyType=keyType)
        connection = await self.connect(self.optionsFor(sshd))
        output = await runRemote(connection, "echo hello from $USER")
        self.assertEqual(output, f"hello from {sshd.user}\n".encode())
        transport = connection.transport
        self.assertIsInstance(transport, SSHClientTransport)
        # The Nagle fix ran (exec accepted) and our side has TCP_NODELAY.
        self.assertFalse(transport.quickAck)
        sock = transport.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertEqual(transport.hostKeyFingerprint[:7], "SHA256:")
        # The fast path: AES-GCM (no separate MAC) against OpenSSH.
        self.assertEqual(transport.currentEncryptions.outCipType, b"aes128-gcm@openssh.com")

    def test_ed25519(self) -> Deferred[None]:
        return defer.ensureDeferred(self._connectWith("ed25519"))

    def test_ecdsa(self) -> Deferred[None]:
        return defer.ensureDeferred(self._connectWith("ecdsa"))

    def test_rsa(self) -> Deferred[None]:
        return defer.ensureDeferred(self._connectWith("rsa"))

    async def _ipv6(self) -> None:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback")
        sshd = self.startSSHD(host="::1")
        options = resolve(
            sshd.destination(),
            configFile="none",
            identities=[sshd.clientKeyPath],
            options=[
                f"UserKnownHostsFile={sshd.knownHostsPath}",
                "BatchMode=yes",
                "IdentityAgent=none",
            ],
        )
        self.assertEqual((options.host, options.port), ("::1", sshd.port))
        connection = await self.connect(options)
        self.assertEqual(await runRemote(connection, "echo six"), b"six\n")

    def test_ipv6(self) -> Deferred[None]:
        """
        user@[::1]:port, with its [::1]:port known_hosts entry.
        """
        return defer.ensureDeferred(self._ipv6())

    async def _execRefused(self) -> None:
        # MaxSessions 0: no session channels, forwarding only.
        sshd = self.startSSHD(extraConfig=["MaxSessions 0"])
        connection = await self.connect(self.optionsFor(sshd))
        transport = connection.transport
        self.assertTrue(transport.quickAck)
        sock = transport.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_execRefusedFallsBackToQuickAck(self) -> None:
        """
        Where the server refuses the Nagle fix's exec, the connection is
        still ready, re-arming TCP_QUICKACK after each read instead.
        """
        if not hasattr(socket, "TCP_QUICKACK"):
            raise SkipTest("no TCP_QUICKACK here")
        return defer.ensureDeferred(self._execRefused())

    def test_macPreference(self) -> None:
        """
        hmac-sha2-256 is preferred (no SHA-512 in hardware).
        """
        self.assertEqual(SSHClientTransport.supportedMACs[0], b"hmac-sha2-256")
        self.assertNotIn(b"hmac-md5", SSHClientTransport.supportedMACs)

    async def _passphrase(self) -> None:
        sshd = self.startSSHD()
        keyPath = os.path.join(sshd.directory, "secret_key")
        public = keygen(keyPath, "ed25519", passphrase="open sesame")
        with open(sshd.authorizedKeysPath, "w") as f:
            f.write(public + "\n")
        asked: list[tuple[str, bool]] = []

        def prompt(text: str, echo: bool) -> str:
            asked.append((text, echo))
            return "open sesame"

        # No .pub file: the key must be decrypted before it can be offered.
        os.remove(keyPath + ".pub")
        options = self.optionsFor(sshd, identityFiles=[keyPath], batchMode=False)
        factory = SSHClientFactory(options, SSHConnection, reactor=reactor, prompt=prompt)
        for _attempt in range(2):
            # The second connection (a reconnect) does not ask again.
            proto = await sshEndpoint(reactor, options).connect(factory)
            connection = await proto.whenReady()
            self.assertEqual(await runRemote(connection, "echo ok"), b"ok\n")
            proto.transport.loseConnection()
            await proto.whenLost()
        self.assertEqual(asked, [(f"Enter passphrase for key '{keyPath}': ", False)])

    def test_passphraseCallback(self) -> Deferred[None]:
        """
        A passphrase-protected key is decrypted with the prompt's answer.
        """
        return defer.ensureDeferred(self._passphrase())


class AgentTests(ClientTestMixin, TestCase):
    """
    Keys from ssh-agent; RSA proves the SSH_AGENT_RSA_SHA2_* flags.
    """

    def startAgent(self, *keyPaths: str) -> str:
        if not shutil.which("ssh-agent"):
            raise SkipTest("no ssh-agent")
        # Not under trial's directory: a Unix socket path has at most 107
        # bytes, and a checkout path can be long.
        directory = tempfile.mkdtemp(prefix="cs-agent-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        sock = os.path.join(directory, "agent.sock")
        agent = subprocess.Popen(
            ["ssh-agent", "-a", sock, "-D"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )

        def stopAgent() -> None:
            agent.terminate()
            agent.wait(5)

        self.addCleanup(stopAgent)
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not os.path.exists(sock):
            self.fail(f"ssh-agent did not create {sock}")
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        for path in keyPaths:
            subprocess.run(
                ["ssh-add", "-q", path], env=env, check=True, capture_output=True, timeout=10
            )
        return sock

    async def _agent(self, keyType: str) -> None:
        sshd = self.startSSHD(clientKeyType=keyType)
        sock = self.startAgent(sshd.clientKeyPath)
        options = self.optionsFor(sshd, identityFiles=[], identityAgent=sock, useAgent=True)
        connection = await self.connect(options)
        self.assertEqual(await runRemote(connection, "echo agent"), b"agent\n")

    def test_agentRSA(self) -> Deferred[None]:
        return defer.ensureDeferred(self._agent("rsa"))

    def test_agentEd25519(self) -> Deferred[None]:
        return defer.ensureDeferred(self._agent("ed25519"))

    async def _agentEmpty(self) -> None:
        sshd = self.startSSHD()
        sock = self.startAgent()
        stranger = os.path.join(sshd.directory, "stranger")
        keygen(stranger)
        options = self.optionsFor(sshd, identityFiles=[stranger], identityAgent=sock, useAgent=True)
        error = await self.connectFails(options)
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertEqual(error.exitCode, 4)
        self.assertIn("Permission denied (publickey)", str(error))
        self.assertIn("agent (no keys)", str(error))
        self.assertIn("stranger", str(error))

    def test_authFailureNamesMethods(self) -> Deferred[None]:
        """
        A refused login names what was tried: the empty agent, the key file.
        """
        return defer.ensureDeferred(self._agentEmpty())

    async def _agentDSA(self) -> None:
        sshd = self.startSSHD()
        dsaKey = os.path.join(sshd.directory, "dsa")
        made = subprocess.run(
            ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", dsaKey],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if made.returncode != 0:
            raise SkipTest("this ssh-keygen makes no DSA keys (OpenSSH 10 dropped them)")
        sock = self.startAgent(dsaKey)
        options = self.optionsFor(sshd, identityFiles=[], identityAgent=sock, useAgent=True)
        error = await self.connectFails(options)
        self.assertIsInstance(error, AuthenticationFailed)
        self.assertIn("agent (no keys)", str(error))

    def test_agentDSAKeyNotOffered(self) -> Deferred[None]:
        """
        An agent's DSA key is not offered (nor parsed): for conchshare the
        agent holds no keys.
        """
        return defer.ensureDeferred(self._agentDSA())


class HostKeyTests(ClientTestMixin, TestCase):
    """
    Host keys: unknown, accept-new, changed, hashed, asked.
    """

    async def _unknown(self) -> None:
        sshd = self.startSSHD()
        empty = os.path.join(sshd.directory, "empty_known_hosts")
        open(empty, "w").close()
        logged: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace", "").startswith("conchshare."):
                logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        error = await self.connectFails(self.optionsFor(sshd, userKnownHostsFiles=[empty]))
        self.assertIsInstance(error, HostKeyUnknown)
        # One sentence in the log, and no traceback sent to the server.
        said = [line for line in logged if "bad host key" in line]
        self.assertEqual(len(said), 1, logged)
        self.assertNotIn("\n", said[0])
        self.assertNotIn("Traceback", "".join(logged))
        deadline = time.monotonic() + 5
        while "bad host key" not in sshd.log() and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertIn("bad host key", sshd.log())
        self.assertNotIn("Traceback", sshd.log())
        self.assertEqual(error.exitCode, 5)
        expected = sshKeygenFingerprint(sshd.hostPublicKey, sshd.directory)
        self.assertIn(expected, str(error))
        with open(empty) as f:
            self.assertEqual(f.read(), "")

    def test_unknownRefused(self) -> Deferred[None]:
        return defer.ensureDeferred(self._unknown())

    async def _acceptNew(self) -> None:
        sshd = self.startSSHD()
        path = os.path.join(os.path.abspath(self.mktemp()), "ssh", "known_hosts")
        options = self.optionsFor(
            sshd, userKnownHostsFiles=[path], strictHostKeyChecking="accept-new"
        )
        connection = await self.connect(options)
        connection.transport.transport.loseConnection()
        await connection.transport.whenLost()
        with open(path) as f:
            line = f.read()
        self.assertEqual(
            line, f"[127.0.0.1]:{sshd.port} {' '.join(sshd.hostPublicKey.split()[:2])}\n"
        )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
        # Recorded: now accepted under "yes", and OpenSSH's ssh agrees.
        await self.connect(self.optionsFor(sshd, userKnownHostsFiles=[path]))
        result = subprocess.run(
            [
                "ssh",
                "-F",
                "none",
                "-o",
                f"UserKnownHostsFile={path}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-i",
                sshd.clientKeyPath,
                "-p",
                str(sshd.port),
                f"{sshd.user}@127.0.0.1",
                "true",
            ],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_acceptNewRecords(self) -> Deferred[None]:
        return defer.ensureDeferred(self._acceptNew())

    async def _changed(self, mode: str) -> None:
        sshd = self.startSSHD()
        other = keygen(os.path.join(sshd.directory, "impostor"))
        path = os.path.join(sshd.directory, "changed_known_hosts")
        with open(path, "w") as f:
            f.write(f"{sshd.hostField()} {other}\n")
        error = await self.connectFails(
            self.optionsFor(sshd, userKnownHostsFiles=[path], strictHostKeyChecking=mode)
        )
        self.assertIsInstance(error, HostKeyChanged)
        self.assertIn("CHANGED", str(error))
        self.assertIn(sshKeygenFingerprint(sshd.hostPublicKey, sshd.directory), str(error))
        self.assertIn(sshKeygenFingerprint(other, sshd.directory), str(error))
        with open(path) as f:
            self.assertEqual(f.read(), f"{sshd.hostField()} {other}\n")

    def test_changedRefusedAcceptNew(self) -> Deferred[None]:
        return defer.ensureDeferred(self._changed("accept-new"))

    def test_changedRefusedNo(self) -> Deferred[None]:
        return defer.ensureDeferred(self._changed("no"))

    async def _hashed(self) -> None:
        sshd = self.startSSHD()
        path = os.path.join(sshd.directory, "hashed_known_hosts")
        shutil.copy(sshd.knownHostsPath, path)
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", path], check=True, capture_output=True)
        with open(path) as f:
            self.assertTrue(f.read().startswith("|1|"))
        connection = await self.connect(self.optionsFor(sshd, userKnownHostsFiles=[path]))
        self.assertEqual(await runRemote(connection, "echo hashed"), b"hashed\n")

    def test_hashedEntry(self) -> Deferred[None]:
        return defer.ensureDeferred(self._hashed())

    async def _ask(self, answer: str) -> ConnectionFailed | None:
        sshd = self.startSSHD()
        path = os.path.join(sshd.directory, "ask_known_hosts")
        asked: list[str] = []

        def prompt(text: str, echo: bool) -> Deferred[str]:
            asked.append(text)
            return defer.succeed(answer)

        options = self.optionsFor(
            sshd, userKnownHostsFiles=[path], strictHostKeyChecking="ask", batchMode=False
        )
        fingerprint = sshKeygenFingerprint(sshd.hostPublicKey, sshd.directory)
        if answer == "yes":
            await self.connect(options, prompt=prompt)
            self.assertTrue(os.path.exists(path))
        else:
            error = await self.connectFails(options, prompt=prompt)
            self.assertIsInstance(error, HostKeyUnknown)
            self.assertFalse(os.path.exists(path))
        self.assertEqual(len(asked), 1)
        self.assertIn(fingerprint, asked[0])
        self.assertIn("(yes/no", asked[0])
        return None

    async def _askLater(self) -> None:
        sshd = self.startSSHD()
        path = os.path.join(sshd.directory, "later_known_hosts")

        def prompt(text: str, echo: bool) -> Deferred[str]:
            # Answered after the handshake timer would have expired.
            return task.deferLater(reactor, 0.7, lambda: "yes")

        options = self.optionsFor(
            sshd,
            userKnownHostsFiles=[path],
            strictHostKeyChecking="ask",
            batchMode=False,
            connectTimeout=0.5,
        )
        connection = await self.connect(options, prompt=prompt)
        self.assertEqual(await runRemote(connection, "echo later"), b"later\n")

    def test_askAnsweredLater(self) -> Deferred[None]:
        """
        A host key question answered later than ConnectTimeout: the
        connection waits, and works.
        """
        return defer.ensureDeferred(self._askLater())

    def test_askYes(self) -> Deferred[None]:
        return defer.ensureDeferred(self._ask("yes"))  # type: ignore[arg-type]

    def test_askNo(self) -> Deferred[None]:
        return defer.ensureDeferred(self._ask("no"))  # type: ignore[arg-type]


class ConnectErrorTests(ClientTestMixin, TestCase):
    """
    Connect failures read like ssh's.
    """

    async def _refused(self) -> None:
        port = freePort()
        options = ConnectOptions(host="127.0.0.1", port=port, connectTimeout=5)
        error = await self.connectFails(options)
        self.assertIsInstance(error, ConnectionFailed)
        self.assertEqual(error.exitCode, 3)
        self.assertEqual(
            str(error), f"ssh: connect to host 127.0.0.1 port {port}: Connection refused."
        )

    def test_refused(self) -> Deferred[None]:
        return defer.ensureDeferred(self._refused())

    async def _unresolvable(self) -> None:
        options = ConnectOptions(host="no-such-host.invalid", port=22, connectTimeout=5)
        error = await self.connectFails(options)
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn("Could not resolve hostname no-such-host.invalid", str(error))

    def test_unknownHost(self) -> Deferred[None]:
        return defer.ensureDeferred(self._unresolvable())

    async def _notSSH(self) -> None:
        # A server that accepts and says nothing: the handshake times out.
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        options = ConnectOptions(host="127.0.0.1", port=server.getsockname()[1], connectTimeout=0.5)
        error = await self.connectFails(options)
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn("timed out", str(error))

    def test_handshakeTimeout(self) -> Deferred[None]:
        return defer.ensureDeferred(self._notSSH())


class KeepAliveTests(ClientTestMixin, TestCase):
    """
    A stopped server is detected as a dead peer.
    """

    async def _dead(self) -> None:
        sshd = self.startSSHD()
        assert sshd.process is not None
        before = set(descendants(sshd.process.pid))
        options = self.optionsFor(sshd, serverAliveInterval=0.3, serverAliveCountMax=2)
        connection = await self.connect(options)
        sessions = [p for p in descendants(sshd.process.pid) if p not in before]
        self.assertTrue(sessions)

        def resume() -> None:
            for pid in sessions:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass

        self.addCleanup(resume)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass  # a short-lived child (the Nagle fix's `true`)
        started = time.monotonic()
        reason = await connection.transport.whenLost()
        elapsed = time.monotonic() - started
        self.assertIsInstance(reason, ConnectionFailed)
        self.assertIn("not responding (dead peer", str(reason))
        self.assertLess(elapsed, 5)

    def test_deadPeer(self) -> Deferred[None]:
        return defer.ensureDeferred(self._dead())

    async def _alive(self) -> None:
        sshd = self.startSSHD()
        options = self.optionsFor(sshd, serverAliveInterval=0.1, serverAliveCountMax=1)
        connection = await self.connect(options)
        # Several keep-alive rounds pass; the live server answers each.
        d: Deferred[None] = Deferred()
        reactor.callLater(1.0, d.callback, None)
        await d
        self.assertEqual(await runRemote(connection, "echo alive"), b"alive\n")

    def test_aliveServerStays(self) -> Deferred[None]:
        return defer.ensureDeferred(self._alive())
