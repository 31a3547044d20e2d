"""
The session key of the C{ssh} endpoint mode (X2Go's auth_key, done safely):
an Ed25519 key pair made for this session, whose private half and a
known_hosts line for the nested host key are installed on the remote host
(0600 files in a fresh 0700 directory, over an exec channel of the outbound
connection) and removed when the connection stops.  The private key is
never logged.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import keys
from twisted.internet import defer

from conchshare.errors import ConchShareError
from conchshare.tunnel.remote import quote, runRemote

if TYPE_CHECKING:
    from conchshare.tunnel.connection import ShareConnection


def generateSessionKey() -> keys.Key:
    """
    @return: a new Ed25519 private key.
    """
    return keys.Key(Ed25519PrivateKey.generate())


@dataclass
class InstalledSessionKey:
    """
    Where the session key went on the remote host, and how to use it.

    @ivar directory: the private directory holding both files.
    @ivar keyPath: the private key (OpenSSH format, 0600).
    @ivar knownHostsPath: the known_hosts file with the nested host key.
    @ivar port: the remote port the nested server is reached on.
    @ivar user: the user name put in the command lines (any name works).
    """

    directory: str
    keyPath: str
    knownHostsPath: str
    port: int
    user: str

    def _options(self) -> list[str]:
        # OpenSSH's client would pick chacha20 (which the nested server does
        # not offer) then aes128-ctr: AES-GCM is about twice as fast through
        # the nested server (DESIGN.md, "Performance levers").  One name, no
        # comma: sshfs splits its -o list at commas.
        return [
            f"IdentityFile={self.keyPath}",
            "IdentitiesOnly=yes",
            f"UserKnownHostsFile={self.knownHostsPath}",
            "Ciphers=aes128-gcm@openssh.com",
        ]

    def sshfsCommand(self, remotePath: str = "/", mountPoint: str = "MOUNTPOINT") -> str:
        """
        The ready-to-run C{sshfs} command line (shell-quoted).
        """
        return shlex.join(
            [
                "sshfs",
                "-p",
                str(self.port),
                "-o",
                ",".join(self._options()),
                f"{self.user}@127.0.0.1:{remotePath}",
                mountPoint,
            ]
        )

    def sftpCommand(self) -> str:
        """
        The ready-to-run C{sftp} command line (shell-quoted).
        """
        args = ["sftp", "-P", str(self.port)]
        for option in self._options():
            args += ["-o", option]
        return shlex.join(args + [f"{self.user}@127.0.0.1"])

    def event(self, remotePath: str = "/", mountPoint: str = "MOUNTPOINT") -> dict[str, Any]:
        """
        The fields of the C{session-key} event.
        """
        return {
            "key": self.keyPath,
            "known_hosts": self.knownHostsPath,
            "sshfs": self.sshfsCommand(remotePath, mountPoint),
            "sftp": self.sftpCommand(),
        }


def installSessionKey(
    connection: ShareConnection,
    sessionKey: keys.Key,
    hostKey: keys.Key,
    port: int,
    user: str,
) -> defer.Deferred[InstalledSessionKey]:
    """
    Install C{sessionKey} and a known_hosts line for C{hostKey} at
    C{[127.0.0.1]:port} on the remote host, in a new 0700 directory under
    C{$TMPDIR} (or C{/tmp}); register their removal with
    C{connection.addRemoteCleanup} (so L{ShareConnection.stop} removes them).

    @param connection: the outbound L{ShareConnection}.
    @return: a Deferred firing with the L{InstalledSessionKey}; failing with
        L{ConchShareError} if the remote host would not store the files.
    """
    return defer.ensureDeferred(_install(connection, sessionKey, hostKey, port, user))


async def _install(
    connection: ShareConnection, sessionKey: keys.Key, hostKey: keys.Key, port: int, user: str
) -> InstalledSessionKey:
    hostLine = f"[127.0.0.1]:{port} {hostKey.public().toString('openssh').decode('ascii')}\n"
    script = (
        "umask 077\n"
        'd=$(mktemp -d "${TMPDIR:-/tmp}/conchshare.XXXXXXXX") || exit 1\n'
        'cat > "$d/id_ed25519" || exit 1\n'
        f'printf %s {shlex.quote(hostLine)} > "$d/known_hosts" || exit 1\n'
        'printf "%s\\n" "$d"\n'
    )
    status, out, err = await runRemote(
        connection, script.encode("utf-8"), sessionKey.toString("openssh")
    )
    directory = out.decode("utf-8", "surrogateescape").strip()
    if status != 0 or not directory.startswith("/"):
        if directory.startswith("/"):
            connection.addRemoteCleanup(b"rm -rf " + quote(directory).encode())
        reason = err.decode("utf-8", "replace").strip() or f"exit status {status}"
        raise ConchShareError(f"Could not install the session key on the remote host: {reason}.")
    connection.addRemoteCleanup(b"rm -rf " + quote(directory).encode())
    return InstalledSessionKey(
        directory=directory,
        keyPath=directory + "/id_ed25519",
        knownHostsPath=directory + "/known_hosts",
        port=port,
        user=user,
    )
