"""
ProxyCommand and ProxyJump against throwaway sshds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from conchshare.errors import ConnectionFailed, HostKeyUnknown
from conchshare.tunnel.client import SSHClientTransport
from conchshare.tunnel.sshconfig import resolve
from tests.support.sshclient import ClientTestMixin, descendants, runRemote
from tests.support.sshd import ThrowawaySSHD, freePort


def signalAll(pids: list[int], number: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass  # a short-lived child (the Nagle fix's `true`)


class ProxyCommandTests(ClientTestMixin, TestCase):
    """
    A ProxyCommand's stdio is the connection.
    """

    async def _proxyCommand(self) -> None:
        if not shutil.which("socat"):
            raise SkipTest("socat is not installed")
        sshd = self.startSSHD()
        options = self.optionsFor(sshd, proxyCommand=f"socat - TCP:127.0.0.1:{sshd.port}")
        connection = await self.connect(options)
        self.assertEqual(await runRemote(connection, "echo proxied"), b"proxied\n")
        self.assertFalse(connection.transport.quickAck)

    def test_proxyCommand(self) -> Deferred[None]:
        return defer.ensureDeferred(self._proxyCommand())

    async def _proxyCommandFails(self) -> None:
        options = self.optionsFor(
            self.startSSHD(), proxyCommand="exit 3", batchMode=True, connectTimeout=5
        )
        error = await self.connectFails(options)
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn("closed before key exchange", str(error))

    async def _proxyCommandDeadPeer(self) -> None:
        if not shutil.which("socat"):
            raise SkipTest("socat is not installed")
        sshd = self.startSSHD()
        assert sshd.process is not None
        before = set(descendants(sshd.process.pid))
        options = self.optionsFor(
            sshd,
            proxyCommand=f"exec socat -t 1000 - TCP:127.0.0.1:{sshd.port}",
            serverAliveInterval=0.3,
            serverAliveCountMax=2,
        )
        connection = await self.connect(options)
        sessions = [p for p in descendants(sshd.process.pid) if p not in before]
        self.addCleanup(signalAll, sessions, signal.SIGCONT)
        signalAll(sessions, signal.SIGSTOP)
        reason = await connection.transport.whenLost()
        self.assertIsInstance(reason, ConnectionFailed)
        self.assertIn("dead peer", str(reason))

    def test_proxyCommandDeadPeer(self) -> Deferred[None]:
        """
        A dead peer behind a ProxyCommand that stays up: detected, and the
        command is ended.
        """
        return defer.ensureDeferred(self._proxyCommandDeadPeer())

    def test_proxyCommandFails(self) -> Deferred[None]:
        return defer.ensureDeferred(self._proxyCommandFails())


class ProxyJumpTests(ClientTestMixin, TestCase):
    """
    The destination reached through a jump host's direct-tcpip channel,
    both resolved through one ssh config file.
    """

    def setUpJump(self, jumpConfig: str = "") -> tuple[ThrowawaySSHD, ThrowawaySSHD, str]:
        jump = self.startSSHD(extraConfig=[jumpConfig] if jumpConfig else [])
        target = self.startSSHD()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        knownHosts = os.path.join(directory, "known_hosts")
        with open(knownHosts, "w") as f:
            f.write(f"{jump.hostField()} {jump.hostPublicKey}\n")
            f.write(f"{target.hostField()} {target.hostPublicKey}\n")
        config = os.path.join(directory, "config")
        with open(config, "w") as f:
            f.write(
                f"Host bastion\n"
                f"  HostName 127.0.0.1\n"
                f"  Port {jump.port}\n"
                f"  User {jump.user}\n"
                f"  IdentityFile {jump.clientKeyPath}\n"
                f"Host target\n"
                f"  HostName 127.0.0.1\n"
                f"  Port {target.port}\n"
                f"  ProxyJump bastion\n"
                f"  IdentityFile {target.clientKeyPath}\n"
                f"Host *\n"
                f"  UserKnownHostsFile {knownHosts}\n"
                f"  StrictHostKeyChecking yes\n"
                f"  IdentityAgent none\n"
                f"  BatchMode yes\n"
                f"  IdentitiesOnly yes\n"
            )
        return jump, target, config

    async def _jump(self) -> None:
        jump, target, config = self.setUpJump()
        options = resolve("target", configFile=config)
        self.assertEqual(options.proxyJump, ["bastion"])
        connection = await self.connect(options)
        seen = (await runRemote(connection, "echo $SSH_CONNECTION")).split()
        # The target serves us on its port...
        self.assertEqual(int(seen[3]), target.port)
        output = await runRemote(connection, "echo jumped")
        self.assertEqual(output, b"jumped\n")
        transport = connection.transport
        self.assertIsInstance(transport, SSHClientTransport)
        # ...through the jump host, where we logged in first.
        self.assertIn("Accepted publickey", jump.log())
        # Closing the destination closes the hop too.
        transport.transport.loseConnection()
        await transport.whenLost()

    def test_proxyJump(self) -> Deferred[None]:
        return defer.ensureDeferred(self._jump())

    async def _jumpCommandLine(self) -> None:
        jump, target, config = self.setUpJump()
        # -J on the command line, the target by address.
        options = resolve(
            f"127.0.0.1:{target.port}",
            configFile=config,
            jump="bastion",
            identities=[target.clientKeyPath],
        )
        connection = await self.connect(options)
        self.assertEqual(await runRemote(connection, "echo hop"), b"hop\n")

    def test_jumpOption(self) -> Deferred[None]:
        return defer.ensureDeferred(self._jumpCommandLine())

    async def _jumpRefused(self) -> None:
        jump, target, config = self.setUpJump("AllowTcpForwarding no")
        error = await self.connectFails(resolve("target", configFile=config))
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn(f"port {target.port} via 127.0.0.1:{jump.port}", str(error))

    def test_jumpForwardingRefused(self) -> Deferred[None]:
        return defer.ensureDeferred(self._jumpRefused())

    async def _jumpUnknownHop(self) -> None:
        jump, target, config = self.setUpJump()
        with open(config, "a") as f:
            f.write("")
        empty = os.path.join(os.path.dirname(config), "empty")
        open(empty, "w").close()
        error = await self.connectFails(
            resolve("target", configFile=config, options=[f"UserKnownHostsFile={empty}"])
        )
        # The hop is checked like the destination: refused first.
        self.assertIsInstance(error, HostKeyUnknown)
        self.assertIn(f"127.0.0.1:{jump.port}", str(error))

    def test_jumpHostKeyChecked(self) -> Deferred[None]:
        return defer.ensureDeferred(self._jumpUnknownHop())

    async def _jumpDeadTarget(self) -> None:
        jump, target, config = self.setUpJump()
        port = freePort()
        with open(config, "a") as f:
            f.write("")
        error = await self.connectFails(
            resolve(f"127.0.0.1:{port}", configFile=config, jump="bastion")
        )
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn(f"ssh: connect to host 127.0.0.1 port {port} via", str(error))

    def test_jumpTargetRefused(self) -> Deferred[None]:
        return defer.ensureDeferred(self._jumpDeadTarget())

    async def _jumpDeadPeer(self) -> None:
        jump, target, config = self.setUpJump()
        assert target.process is not None
        before = set(descendants(target.process.pid))
        options = dataclasses.replace(
            resolve("target", configFile=config), serverAliveInterval=0.3, serverAliveCountMax=2
        )
        connection = await self.connect(options)
        sessions = [p for p in descendants(target.process.pid) if p not in before]
        self.addCleanup(signalAll, sessions, signal.SIGCONT)
        signalAll(sessions, signal.SIGSTOP)
        reason = await connection.transport.whenLost()
        self.assertIsInstance(reason, ConnectionFailed)
        self.assertIn("dead peer", str(reason))

    def test_jumpDeadPeer(self) -> Deferred[None]:
        """
        A dead destination behind a jump host is detected, and the hop
        connection is closed with it.
        """
        return defer.ensureDeferred(self._jumpDeadPeer())
