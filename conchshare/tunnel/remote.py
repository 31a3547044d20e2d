"""
Running commands on the remote host over exec channels of the outbound
connection: short commands with their output collected (L{runRemote}), and
a protocol attached to a long-running command's stdin/stdout
(L{openExecProtocol}, for C{sshfs -o passive}).
"""

from __future__ import annotations

import shlex
import struct
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import common
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import SSHConnection
from twisted.internet import defer, interfaces
from twisted.internet.error import ConnectionLost

from conchshare.tunnel.channels import ForwardedChannel


def quote(path: str | bytes) -> str:
    """
    Quote C{path} for the remote POSIX shell.  A leading C{~/} stays
    unquoted so the remote shell expands it.
    """
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


class RemoteCommandFailed(ConchError):
    """
    The exec request was refused or the channel could not be opened.
    """


class _CollectingExecChannel(SSHChannel):
    name = b"session"

    def __init__(self, command: bytes, stdin: bytes, **kw: Any) -> None:
        super().__init__(localWindow=1024 * 1024, localMaxPacket=32768, **kw)
        self.command = command
        self.stdin = stdin
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.status: int | None = None
        self.done: defer.Deferred[tuple[int | None, bytes, bytes]] = defer.Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        conn: Any = self.conn
        d = conn.sendRequest(self, b"exec", common.NS(self.command), wantReply=True)
        d.addCallbacks(self._execStarted, self._execRefused)

    def _execStarted(self, _: object) -> None:
        if self.stdin:
            self.write(self.stdin)
        conn: Any = self.conn
        conn.sendEOF(self)

    def _execRefused(self, reason: Any) -> None:
        self._fail(RemoteCommandFailed("the remote host refused to run a command"))
        self.loseConnection()

    def openFailed(self, reason: Any) -> None:
        self._fail(RemoteCommandFailed(f"the remote host refused a session channel: {reason}"))

    def dataReceived(self, data: bytes) -> None:
        self.stdout.append(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.stderr.append(data)

    def request_exit_status(self, data: bytes) -> int:
        (self.status,) = struct.unpack(">L", data[:4])
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        self.status = -1
        return 1

    def eofReceived(self) -> None:
        pass

    def closed(self) -> None:
        if not self.done.called:
            self.done.callback((self.status, b"".join(self.stdout), b"".join(self.stderr)))

    def _fail(self, exc: Exception) -> None:
        if not self.done.called:
            self.done.errback(exc)


def runRemote(
    connection: SSHConnection, command: bytes, stdin: bytes = b""
) -> defer.Deferred[tuple[int | None, bytes, bytes]]:
    """
    Run C{command} through the remote user's shell on a new exec channel.

    @param command: the command line (quote paths with L{quote}).
    @param stdin: bytes to send to the command's stdin, then EOF.
    @return: a Deferred firing with C{(exitStatus, stdout, stderr)};
        C{exitStatus} is L{None} if the server sent none and C{-1} if the
        command died of a signal.  It fails with L{RemoteCommandFailed} if the
        server refused the channel or the command, and with
        L{ConnectionLost} if the connection went away.
    """
    channel = _CollectingExecChannel(command, stdin, conn=connection)
    if not getattr(connection, "transport", None):
        return defer.fail(ConnectionLost("not connected"))
    connection.openChannel(channel)
    return channel.done


class ExecChannel(ForwardedChannel):
    """
    An exec channel whose stdin/stdout carry a protocol (e.g. SFTP for
    C{sshfs -o passive}).  Stderr is kept in L{stderr}; the exit status in
    L{exitStatus}.
    """

    name = b"session"

    def __init__(self, command: bytes, protocol: interfaces.IProtocol, **kw: Any) -> None:
        super().__init__(**kw)
        self.command = command
        self._execProtocol = protocol
        self.stderr = b""
        self.exitStatus: int | None = None
        self.started: defer.Deferred[ExecChannel] = defer.Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        self._isOpen = True
        conn: Any = self.conn
        d = conn.sendRequest(self, b"exec", common.NS(self.command), wantReply=True)
        d.addCallbacks(self._execStarted, self._execRefused)

    def _execStarted(self, _: object) -> None:
        self.attach(self._execProtocol)
        if not self.started.called:
            self.started.callback(self)

    def _execRefused(self, reason: Any) -> None:
        if not self.started.called:
            self.started.errback(RemoteCommandFailed("the remote host refused to run a command"))
        self.abort()

    def openFailed(self, reason: Any) -> None:
        if not self.started.called:
            self.started.errback(
                RemoteCommandFailed(f"the remote host refused a session channel: {reason}")
            )
        super().openFailed(reason)

    def extReceived(self, dataType: int, data: bytes) -> None:
        # Bounded: a chatty command cannot fill our memory.
        self.stderr = (self.stderr + data)[-65536:]
        self._accountExt(len(data))

    def _accountExt(self, n: int) -> None:
        # Extended data uses the same window; it is consumed at once.
        self.bytesIn += n
        self._maybeGrant()

    def request_exit_status(self, data: bytes) -> int:
        (self.exitStatus,) = struct.unpack(">L", data[:4])
        return 1

    def request_exit_signal(self, data: bytes) -> int:
        self.exitStatus = -1
        return 1

    def closed(self) -> None:
        if not self.started.called:
            self.started.errback(ConnectionLost("the command's channel closed"))
        super().closed()


def openExecProtocol(
    connection: SSHConnection, command: bytes, protocol: interfaces.IProtocol
) -> defer.Deferred[ExecChannel]:
    """
    Run C{command} on the remote host and connect C{protocol} to its stdin
    and stdout (the channel is the protocol's transport).

    If C{connection} has a L{ChannelGroup} (a L{ShareConnection}), the
    channel joins it: pausing the connection pauses it too.

    @return: a Deferred firing with the L{ExecChannel} once the command was
        accepted; failing with L{RemoteCommandFailed} if the server refused
        the channel or the command.
    """
    channel = ExecChannel(command, protocol, conn=connection)
    group = getattr(connection, "group", None)
    if group is not None:
        # Paused and resumed with the forwarded channels (a passive mount
        # is served like any other channel).
        group.add(channel)
    connection.openChannel(channel)
    return channel.started
