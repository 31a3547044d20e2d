"""
C{ProxyJump}: reach the destination through one or more jump hosts.

Each hop is an SSH connection of our own -- resolved through the same ssh
config file, host-key-checked and authenticated like the destination --
and the next hop (finally the destination) runs inside a C{direct-tcpip}
channel of the previous one: the channel is the transport of the next
L{SSHClientTransport}.

A hop's own C{ProxyJump} is not followed (that is what listing several hops
is for, and it avoids loops through C{Host *} blocks); the first hop's
C{ProxyCommand} is.  When the destination connection ends, the hops are
disconnected, last first; when a hop dies, the channels it carries close
and so does everything above it.
"""

# Conch is untyped: its calls are checked by the tests, not by mypy.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.forwarding import packOpen_direct_tcpip
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from conchshare.errors import ConchShareError, ConnectionFailed
from conchshare.tunnel.client import SSHClientFactory, SSHClientTransport, directEndpoint
from conchshare.tunnel.prompt import Prompt
from conchshare.tunnel.sshconfig import ConnectOptions, resolve

_log = Logger()

#: The receive window of a forwarding channel (Conch's default is 128 KiB;
#: OpenSSH uses 2 MiB, measured faster in DESIGN.md).
CHANNEL_WINDOW = 2 * 1024 * 1024
CHANNEL_MAX_PACKET = 32768


class DirectTCPIPChannel(SSHChannel):
    """
    A C{direct-tcpip} channel that is the transport of a protocol built by
    C{factory} once the channel is open.

    @ivar opened: fires with the protocol when the channel opens, fails
        with L{ConnectionFailed} when the server refuses it.
    """

    name = b"direct-tcpip"

    def __init__(
        self,
        factory: IProtocolFactory,
        host: str,
        port: int,
        *,
        onClose: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(localWindow=CHANNEL_WINDOW, localMaxPacket=CHANNEL_MAX_PACKET, **kwargs)
        self.factory = factory
        self.host = host
        self.port = port
        self.protocol: IProtocol | None = None
        self.onClose = onClose
        self.opened: Deferred[IProtocol] = Deferred()
        self.disconnecting = False

    def channelOpen(self, specificData: bytes) -> None:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        if proto is None:
            self.loseConnection()
            self.opened.errback(ConnectionFailed("The protocol factory refused the connection."))
            return
        self.protocol = proto
        proto.makeConnection(self)
        self.opened.callback(proto)

    def openFailed(self, reason: Any) -> None:
        text = getattr(reason, "value", reason)
        desc = getattr(text, "args", [text])[0]
        if isinstance(desc, bytes):
            desc = desc.decode("utf-8", "replace")
        jumpHost = getattr(getattr(self.conn, "transport", None), "options", None)
        via = f" via {jumpHost.displayName()}" if jumpHost is not None else ""
        self.opened.errback(
            ConnectionFailed(
                f"ssh: connect to host {self.host} port {self.port}{via}: {desc or 'refused'}."
            )
        )
        if self.onClose is not None:
            self.onClose()

    def dataReceived(self, data: bytes) -> None:
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def eofReceived(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        self.disconnecting = True
        super().loseConnection()

    def abortConnection(self) -> None:
        """
        Drop everything below as well: used when the peer is dead, when a
        channel close would never be confirmed.
        """
        if self.onClose is not None:
            self.onClose()
        else:
            self.loseConnection()

    def closed(self) -> None:
        proto, self.protocol = self.protocol, None
        if proto is not None:
            from twisted.internet.error import ConnectionDone
            from twisted.python.failure import Failure

            proto.connectionLost(Failure(ConnectionDone("channel closed")))
        if self.onClose is not None:
            self.onClose()


@implementer(IStreamClientEndpoint)
class DirectTCPIPEndpoint:
    """
    Connect through an authenticated SSH connection's C{direct-tcpip}
    channel.
    """

    def __init__(self, connection: SSHConnection, host: str, port: int, *, onClose: Any = None):
        self.connection = connection
        self.host = host
        self.port = port
        self.onClose = onClose

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        @return: a Deferred firing with the protocol once the channel is
            open, or failing with L{ConnectionFailed}.
        """
        channel = DirectTCPIPChannel(
            protocolFactory, self.host, self.port, conn=self.connection, onClose=self.onClose
        )
        self.connection.openChannel(
            channel, packOpen_direct_tcpip((self.host, self.port), ("127.0.0.1", 0))
        )
        return channel.opened


@implementer(IStreamClientEndpoint)
class JumpEndpoint:
    """
    Reach C{options.host:options.port} through C{options.proxyJump}.
    """

    def __init__(self, reactor: Any, options: ConnectOptions, *, prompt: Prompt | None = None):
        self.reactor = reactor
        self.options = options
        self.prompt = prompt

    def hopOptions(self) -> list[ConnectOptions]:
        """
        Each hop resolved through the destination's ssh config.

        @raise UsageError: a hop is not a valid destination.
        """
        hops = []
        for i, hop in enumerate(self.options.proxyJump):
            resolved = resolve(
                hop,
                configFile=self.options.configFile or "none",
                options=self.options.commandLineOptions,
                identities=self.options.commandLineIdentities,
            )
            resolved = dataclasses.replace(
                resolved,
                proxyJump=[],
                proxyCommand=resolved.proxyCommand if i == 0 else None,
            )
            hops.append(resolved)
        return hops

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        @return: a Deferred firing with the destination's protocol, running
            on the last hop's channel; or failing with a L{ConchShareError}
            (a hop's L{ConnectionFailed}, L{HostKeyError} or
            L{AuthenticationFailed}).
        """
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        hops = self.hopOptions()
        transports: list[SSHClientTransport] = []

        def closeHops() -> None:
            for t in reversed(transports):
                if t.transport is not None:
                    t.fail(ConnectionFailed(f"Connection to {t.options.displayName()} closed."))

        connection: SSHConnection | None = None
        try:
            for hop in hops:
                endpoint: IStreamClientEndpoint
                if connection is None:
                    endpoint = directEndpoint(self.reactor, hop)
                else:
                    endpoint = DirectTCPIPEndpoint(
                        connection, hop.host, hop.port, onClose=closeHops
                    )
                factory = SSHClientFactory(
                    hop, SSHConnection, reactor=self.reactor, prompt=self.prompt
                )
                proto = await endpoint.connect(factory)
                assert isinstance(proto, SSHClientTransport)  # our factory built it
                transports.append(proto)
                connection = await proto.whenReady()
            assert connection is not None
            final = DirectTCPIPEndpoint(
                connection, self.options.host, self.options.port, onClose=closeHops
            )
            return await final.connect(protocolFactory)
        except ConchShareError:
            closeHops()
            raise
        except Exception as e:
            closeHops()
            raise ConnectionFailed(f"ProxyJump to {self.options.displayName()} failed: {e}.")
