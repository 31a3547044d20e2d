"""
How the outbound connection reaches the host's SSH port, and
L{connectSSH}: the whole way to a started connection service.

This module sits above L{conchshare.tunnel.client} (the transport and the
direct endpoint: TCP or C{ProxyCommand}) and L{conchshare.tunnel.proxy}
(C{ProxyJump}, whose hops are transports of C{client}'s), so neither of
those imports the other's caller.
"""

# Conch is untyped: its calls are checked by the tests, not by mypy.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import connection as sshconnection
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol

from conchshare.reactors import orGlobalReactor
from conchshare.tunnel.client import SSHClientFactory, SSHClientTransport, directEndpoint
from conchshare.tunnel.prompt import Prompt
from conchshare.tunnel.proxy import JumpEndpoint
from conchshare.tunnel.sshconfig import ConnectOptions

__all__ = ["connectSSH", "sshEndpoint"]


def sshEndpoint(
    reactor: Any, options: ConnectOptions, *, prompt: Prompt | None = None
) -> IStreamClientEndpoint:
    """
    The stream endpoint that reaches C{options.host}'s SSH port: TCP (IPv4
    or IPv6, C{ConnectTimeout}), a C{ProxyCommand} run by C{/bin/sh -c}
    (its stdio is the connection), or the C{ProxyJump} hops (each an SSH
    connection of our own, checked and authenticated, carrying the next in
    a C{direct-tcpip} channel).

    Connect failures are L{ConnectionFailed} (or the hop's
    L{HostKeyError}/L{AuthenticationFailed}).
    """
    reactor = orGlobalReactor(reactor)
    if options.proxyJump:
        return JumpEndpoint(reactor, options, prompt=prompt)
    return directEndpoint(reactor, options)


def connectSSH(
    options: ConnectOptions,
    connectionFactory: Callable[[], sshconnection.SSHConnection],
    *,
    reactor: Any = None,
    prompt: Prompt | None = None,
) -> Deferred[sshconnection.SSHConnection]:
    """
    Connect, check the host key, authenticate and start a connection
    service.

    @param connectionFactory: makes the connection service (e.g.
        C{ShareConnection}).
    @return: a Deferred firing with the started connection service (its
        C{transport} is the L{SSHClientTransport}), or failing with a
        L{ConchShareError}: L{ConnectionFailed}, L{HostKeyError},
        L{AuthenticationFailed}.
    """
    reactor = orGlobalReactor(reactor)
    factory = SSHClientFactory(options, connectionFactory, reactor=reactor, prompt=prompt)
    endpoint = sshEndpoint(reactor, options, prompt=prompt)
    d: Deferred[Any] = endpoint.connect(factory)

    def connected(proto: Protocol) -> Deferred[sshconnection.SSHConnection]:
        assert isinstance(proto, SSHClientTransport)  # our factory built it
        return proto.whenReady()

    return d.addCallback(connected)
