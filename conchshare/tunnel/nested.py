"""
The nested SSH server of the C{ssh} endpoint mode (X2Go's): an SSH server
transport runs on each forwarded channel (the channel is its transport), with
its own Ed25519 host key, public-key authentication only, for the given keys
only and any user name, and nothing but the C{sftp} subsystem: shell, exec,
pty, X11, agent and port-forwarding requests are refused.

Usage::

    server = NestedSSHServer(loadOrCreateHostKey(path), [sessionKey.public()],
                             lambda: SFTPServerProtocol(avatar))
    listener = Listener("ssh", server.buildProtocol)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch import avatar as _avatar
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, factory, keys, transport, userauth
from twisted.conch.ssh.connection import SSHConnection
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from zope.interface import implementer

from conchshare.errors import UsageError
from conchshare.tunnel.channels import (
    CARRIER,
    ChannelGroup,
    ChannelServingMixin,
    ForwardedChannel,
    GroupPressure,
)
from conchshare.tunnel.fastpath import FastTransportMixin

SFTPFactory = Callable[[], interfaces.IProtocol]

_log = Logger()


def loadOrCreateHostKey(path: str | None = None) -> keys.Key:
    """
    The nested server's host key.

    @param path: where the key is kept; read if it exists, otherwise a new
        Ed25519 key is written there (mode 0600).  L{None}: a new key that
        lives as long as the process.
    @return: the private key.
    @raise UsageError: the file exists but is not a usable private key, or
        cannot be written.
    """
    if path is not None and os.path.exists(path):
        try:
            key = keys.Key.fromFile(path)
        except (OSError, keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
            raise UsageError(f"Cannot use {path} as the host key: {e}.")
        if key.isPublic():
            raise UsageError(f"{path} holds a public key; the host key must be private.")
        loaded: keys.Key = key
        return loaded
    key = keys.Key(Ed25519PrivateKey.generate())
    if path is not None:
        data = key.toString("openssh")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            raise UsageError(f"Cannot write the host key to {path}: {e.strerror}.")
    return key


def readAuthorizedKeys(path: str) -> list[keys.Key]:
    """
    The public keys of an OpenSSH authorized_keys file (options are ignored;
    lines that are not keys are skipped).

    @raise UsageError: the file cannot be read or holds no key.
    """
    found: list[keys.Key] = []
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"Cannot read the authorized keys file {path}: {e.strerror}.")
    for line in lines:
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        parts = line.split()
        for i in range(len(parts) - 1):
            try:
                found.append(keys.Key.fromString(b" ".join(parts[i : i + 2])))
                break
            except (keys.BadKeyError, ValueError, IndexError):
                continue
    if not found:
        raise UsageError(f"The authorized keys file {path} holds no public key.")
    return found


@implementer(ICredentialsChecker)
class _AnyUserKeyChecker:
    """
    Public-key authentication against a fixed set of keys, for any user
    name (RFC 4252 7).  Written here rather than Conch's
    C{SSHPublicKeyChecker} to avoid importing C{twisted.conch.checkers},
    which imports the deprecated C{spwd}.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, publicKeys: Sequence[keys.Key]) -> None:
        self._blobs = {key.public().blob() for key in publicKeys}

    def requestAvatarId(self, credentials: Any) -> Any:
        if credentials.blob not in self._blobs:
            return defer.fail(UnauthorizedLogin("key not authorized"))
        if not credentials.signature:
            # The client asks whether this key would do; it would.
            return defer.fail(ValidPublicKey())
        try:
            key = keys.Key.fromString(credentials.blob)
            good = key.verify(credentials.signature, credentials.sigData)
        except Exception:
            good = False
        if not good:
            return defer.fail(UnauthorizedLogin("bad signature"))
        return defer.succeed(credentials.username)


class NestedSessionChannel(ForwardedChannel):
    """
    A session channel of the nested server: only C{subsystem sftp} is
    accepted, which attaches the SFTP protocol to the channel.
    """

    name = b"session"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)

    def request_subsystem(self, data: bytes) -> int | defer.Deferred[int]:
        """
        Start the SFTP server on this channel for C{subsystem "sftp"} (once);
        refuse any other subsystem.  A request with bytes after the name is
        malformed: as OpenSSH's sshd (C{session_subsystem_req}), the whole
        nested connection ends, here with a protocol-error disconnect, and
        the request gets no reply.

        @return: 1 (started) or 0 (refused); for a malformed request a
            L{Deferred} that never fires, so that no reply follows the
            disconnect.
        """
        try:
            subsystem, rest = common.getNS(data)
        except (ValueError, IndexError):
            return 0
        if rest:
            conn: Any = self.conn
            conn.transport.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"Packet integrity error: trailing data in the subsystem request.",
            )
            return defer.Deferred()
        if subsystem != b"sftp" or self.protocol is not None:
            return 0
        user: Any = self.avatar
        self.attach(user.sftpFactory())
        return 1

    def request_env(self, data: bytes) -> int:
        return 0


class _NestedUser(_avatar.ConchUser):
    def __init__(self, sftpFactory: SFTPFactory) -> None:
        super().__init__()
        self.sftpFactory = sftpFactory
        self.channelLookup[b"session"] = NestedSessionChannel


@implementer(IRealm)
class _Realm:
    def __init__(self, sftpFactory: SFTPFactory) -> None:
        self.sftpFactory = sftpFactory

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces_: Any) -> Any:
        if IConchUser not in interfaces_:
            raise NotImplementedError("only SSH users here")
        return IConchUser, _NestedUser(self.sftpFactory), lambda: None


class NestedConnection(ChannelServingMixin, SSHConnection):
    """
    The nested server's C{ssh-connection} service: channel windows follow
    the consumption of the SFTP protocol; unknown channel types (port
    forwarding, X11, agent) are refused quietly.  When the forwarded
    channel that carries it cannot send (see
    L{ForwardedChannel.carriesConnection}), its channels make no more
    replies until it can.

    @ivar group: the channels it serves.
    """

    def __init__(self) -> None:
        super().__init__()
        self.group = ChannelGroup()

    def serviceStarted(self) -> None:
        super().serviceStarted()
        carrier = getattr(self.transport, "transport", None)
        if isinstance(carrier, ForwardedChannel):
            carrier.carriesConnection()
            carrier.registerProducer(GroupPressure(self.group, CARRIER), True)

    def channelAccepted(self, channel: Any) -> None:
        if isinstance(channel, ForwardedChannel):
            self.group.add(channel)


class _UserAuthServer(userauth.SSHUserAuthServer):
    # The channel carrying us closes when the remote client goes away; a
    # login left hanging should not keep it open for ten hours.
    loginTimeout = 120
    attemptsBeforeDisconnect = 6


class NestedServerTransport(FastTransportMixin, transport.SSHServerTransport):  # type: ignore[misc]
    """
    The server transport that runs on a forwarded channel: AES-GCM and
    C{hmac-sha2-256} preferred (see L{conchshare.tunnel.fastpath}).
    """

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """
        The client sent C{MSG_DISCONNECT}.  Conch logs every one as an error
        on two lines; a client that is done (sshfs unmounted, sftp quit)
        says "by application": that is routine.
        """
        text = description.decode("utf-8", "replace")
        if reasonCode == transport.DISCONNECT_BY_APPLICATION:
            _log.debug("The nested SSH client disconnected ({description}).", description=text)
        else:
            _log.info(
                "The nested SSH client disconnected with code {code}: {description}.",
                code=reasonCode,
                description=text,
            )


class NestedSSHServer(factory.SSHFactory):
    """
    Builds a nested SSH server transport for each forwarded channel.

    @param hostKey: the private host key (see L{loadOrCreateHostKey}).
    @param authorizedKeys: the only public keys allowed to log in, under any
        user name.
    @param sftpFactory: makes the SFTP protocol for each C{sftp} subsystem.
    @param reactor: for the login timeout (default: the global reactor).
    """

    _log = Logger()
    protocol = NestedServerTransport
    primes = None

    def __init__(
        self,
        hostKey: keys.Key,
        authorizedKeys: Sequence[keys.Key],
        sftpFactory: SFTPFactory,
        *,
        reactor: Any = None,
    ) -> None:
        if not authorizedKeys:
            raise UsageError("The nested SSH server needs at least one authorized key.")
        self.hostKey = hostKey
        self.publicKeys = {hostKey.sshType(): hostKey.public()}
        self.privateKeys = {hostKey.sshType(): hostKey}
        self.portal = Portal(_Realm(sftpFactory), [_AnyUserKeyChecker(authorizedKeys)])
        authClass: Any = _UserAuthServer
        if reactor is not None:
            authClass = type("_UserAuthServer", (_UserAuthServer,), {"clock": reactor})
        self.services = {b"ssh-userauth": authClass, b"ssh-connection": NestedConnection}

    def buildProtocol(self, addr: Any = None) -> NestedServerTransport:
        """
        @return: a server transport; make a channel its transport.
        """
        proto: Any = super().buildProtocol(addr)
        built: NestedServerTransport = proto
        return built

    def hostKeyLine(self, hostField: str) -> str:
        """
        The known_hosts line for this server, e.g. for
        C{"[127.0.0.1]:2222"}.
        """
        return f"{hostField} {self.hostKey.public().toString('openssh').decode('ascii')}"
