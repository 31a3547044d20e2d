"""
What serves the channels of a forward, built the same way for
C{conchshare share} (L{conchshare.service}) and C{conchshare mount}
(L{conchshare.mount}): L{ForwardServer}.

  - C{raw} mode: each forwarded channel is an SFTP session.
  - C{ssh} mode: each forwarded channel carries a nested SSH server
    (L{conchshare.tunnel.nested.NestedSSHServer}) with its host key, the
    keys it accepts and, if asked, a session key made for it; its C{sftp}
    subsystem is an SFTP session.  L{ForwardServer.installSessionKey}
    puts that key and a known_hosts line on the remote host for the
    remote side's C{sftp}/C{sshfs}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol

if TYPE_CHECKING:
    from twisted.conch.ssh.keys import Key

    from conchshare.tunnel.connection import Listener, ShareConnection
    from conchshare.tunnel.nested import NestedSSHServer
    from conchshare.tunnel.sessionkey import InstalledSessionKey

__all__ = ["ForwardServer"]

#: Makes the SFTP server protocol of one session.
SessionFactory = Callable[[], IProtocol]


class ForwardServer:
    """
    Serves the channels arriving on the forwards of one endpoint mode.

    @ivar mode: C{"raw"} or C{"ssh"}.
    @ivar nested: the nested SSH server (C{ssh} mode), else L{None}.
    @ivar sessionKey: the private session key the nested server accepts,
        or L{None}.
    """

    def __init__(
        self,
        mode: str,
        serveSession: SessionFactory,
        *,
        hostKey: Key | None = None,
        authorizedKeys: Sequence[Key] = (),
        withSessionKey: bool = False,
        reactor: Any = None,
    ) -> None:
        """
        @param serveSession: makes the SFTP server protocol of one session.
        @param hostKey: the nested server's host key (C{ssh} mode; L{None}:
            a new one).
        @param authorizedKeys: public keys the nested server accepts.
        @param withSessionKey: make a session key and accept it too.
        @param reactor: the nested server's clock (L{None}: the global
            reactor).
        @raise UsageError: C{ssh} mode with no key to accept.
        """
        self.mode = mode
        self.nested: NestedSSHServer | None = None
        self.sessionKey: Key | None = None
        self._serveSession = serveSession
        if mode != "ssh":
            return
        from conchshare.tunnel import nested, sessionkey

        if hostKey is None:
            hostKey = nested.loadOrCreateHostKey(None)
        authorized = list(authorizedKeys)
        if withSessionKey:
            self.sessionKey = sessionkey.generateSessionKey()
            authorized.append(self.sessionKey.public())
        self.nested = nested.NestedSSHServer(hostKey, authorized, serveSession, reactor=reactor)

    @classmethod
    def fromFiles(
        cls,
        mode: str,
        serveSession: SessionFactory,
        *,
        hostKeyPath: str | None,
        authorizedKeysPath: str | None,
        withSessionKey: bool,
        reactor: Any = None,
    ) -> ForwardServer:
        """
        A L{ForwardServer} whose nested server (C{ssh} mode) has the host
        key at C{hostKeyPath} (created there if missing; L{None}: a new one
        in memory) and accepts the keys of C{authorizedKeysPath}.

        @raise UsageError: a key file cannot be read or written, or no key
            would be accepted.
        """
        if mode != "ssh":
            return cls(mode, serveSession, reactor=reactor)
        from conchshare.tunnel import nested

        hostKey = nested.loadOrCreateHostKey(hostKeyPath)
        authorized = []
        if authorizedKeysPath is not None:
            authorized.extend(nested.readAuthorizedKeys(authorizedKeysPath))
        return cls(
            mode,
            serveSession,
            hostKey=hostKey,
            authorizedKeys=authorized,
            withSessionKey=withSessionKey,
            reactor=reactor,
        )

    def buildProtocol(self) -> IProtocol:
        """
        The protocol of one forwarded channel: an SFTP session (C{raw}) or
        a nested SSH server transport (C{ssh}).
        """
        if self.nested is not None:
            return self.nested.buildProtocol(None)
        return self._serveSession()

    def listener(
        self,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        socketPath: str | None = None,
        streamlocal: bool = False,
    ) -> Listener:
        """
        The L{Listener} to request for a forward served by this server
        (see L{conchshare.tunnel.connection.Listener} for the fields).
        """
        from conchshare.tunnel.connection import Listener

        if streamlocal:
            return Listener(
                mode=self.mode,
                protocolFactory=self.buildProtocol,
                socketPath=socketPath,
                streamlocal=True,
            )
        return Listener(
            mode=self.mode, protocolFactory=self.buildProtocol, address=address, port=port
        )

    def installSessionKey(
        self, connection: ShareConnection, port: int, user: str
    ) -> Deferred[InstalledSessionKey]:
        """
        Install the session key and a known_hosts line for the nested
        server at C{[127.0.0.1]:port} on the remote host (see
        L{conchshare.tunnel.sessionkey.installSessionKey}).

        @return: a Deferred firing with the
            L{conchshare.tunnel.sessionkey.InstalledSessionKey}, or failing
            with L{ConchShareError}.
        @raise ValueError: this server has no session key.
        """
        from conchshare.tunnel.sessionkey import installSessionKey

        if self.nested is None or self.sessionKey is None:
            raise ValueError("this forward server has no session key")
        return installSessionKey(connection, self.sessionKey, self.nested.hostKey, port, user)
