"""
SSH clients for the tests: conchshare's own client connected to a
throwaway sshd (L{ClientTestMixin}), commands run over it (L{runRemote}), and
minimal Conch clients, with and without conchshare's fast transport, that
run one command (L{runExec}).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.connection import SSHConnection
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from conchshare.errors import (
    ConchShareError,
)
from conchshare.tunnel.client import SSHClientTransport
from conchshare.tunnel.endpoint import connectSSH
from conchshare.tunnel.sshconfig import ConnectOptions
from tests.support.sshd import ThrowawaySSHD, available
from tests.support.tunnelhelpers import sshdConnectOptions


class _ExecChannel(SSHChannel):  # type: ignore[misc]
    name = b"session"

    def __init__(self, command: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.command = command
        self.output = b""
        self.done: Deferred[bytes] = Deferred()

    def channelOpen(self, data: bytes) -> None:
        d = self.conn.sendRequest(self, b"exec", NS(self.command.encode()), wantReply=True)
        d.addErrback(self.done.errback)

    def openFailed(self, reason: Any) -> None:
        self.done.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        self.output += data

    def closed(self) -> None:
        if not self.done.called:
            self.done.callback(self.output)
        super().closed()


def runRemote(connection: SSHConnection, command: str) -> Deferred[bytes]:
    """
    Run a command on the connection; fire with its stdout.
    """
    channel = _ExecChannel(command, conn=connection)
    connection.openChannel(channel)
    return channel.done


def sshKeygenFingerprint(publicKeyLine: str, directory: str) -> str:
    path = os.path.join(directory, "fp.pub")
    with open(path, "w") as f:
        f.write(publicKeyLine + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", path], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def descendants(pid: int) -> list[int]:
    """
    All descendant process ids of C{pid}.
    """
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in out.split()]
    result = list(children)
    for child in children:
        result += descendants(child)
    return result


class ClientTestMixin:
    """
    Starts sshds and connects to them with conchshare's client.
    """

    timeout = 60

    def startSSHD(self, **kwargs: Any) -> ThrowawaySSHD:
        reason = available()
        if reason:
            raise SkipTest(reason)
        sshd = ThrowawaySSHD.start(self.mktemp(), **kwargs)  # type: ignore[attr-defined]
        self.addCleanup(sshd.stop)  # type: ignore[attr-defined]
        return sshd

    def optionsFor(self, sshd: ThrowawaySSHD, **kwargs: Any) -> ConnectOptions:
        return sshdConnectOptions(sshd, **kwargs)

    async def connect(self, options: ConnectOptions, **kwargs: Any) -> SSHConnection:
        connection = await connectSSH(options, SSHConnection, reactor=reactor, **kwargs)
        transport = connection.transport
        assert isinstance(transport, SSHClientTransport)

        async def close() -> None:
            if transport.transport is not None and transport._lostReason is None:
                transport.transport.loseConnection()
            await transport.whenLost()

        self.addCleanup(lambda: defer.ensureDeferred(close()))  # type: ignore[attr-defined]
        return connection

    async def connectFails(self, options: ConnectOptions, **kwargs: Any) -> ConchShareError:
        try:
            await connectSSH(options, SSHConnection, reactor=reactor, **kwargs)
        except ConchShareError as e:
            return e
        raise AssertionError("connected, expected a failure")
