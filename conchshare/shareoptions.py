"""
What a L{conchshare.service.ShareService} is asked to do, and the checks
that the options agree: L{ShareOptions} (the fields of C{conchshare share}
and C{conchshare mount}) and the L{ForwardSpec}s they make.  No I/O, no
Twisted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from conchshare.errors import UsageError
from conchshare.modes import MODES, MOUNT_VIAS

__all__ = ["MODES", "MOUNT_VIAS", "ForwardSpec", "ShareOptions"]


@dataclass(frozen=True)
class ForwardSpec:
    """
    One forward to request: a TCP C{address} and C{port} (0: any), or a
    remote Unix C{socket} path (C{""}: a fresh one).
    """

    address: str = "127.0.0.1"
    port: int = 0
    socket: str | None = None


@dataclass
class ShareOptions:
    """
    How a L{ShareService} connects, forwards and serves.  The fields mirror
    the options of C{conchshare share} and C{conchshare mount}.

    @ivar mode: C{"ssh"} (nested SSH server) or C{"raw"} (SFTP straight on
        the channel).
    @ivar remoteListen: TCP forwards as C{(address, port)}; L{None} means
        C{[("127.0.0.1", 0)]}, or none if C{remoteSocket} is set.
    @ivar remoteSocket: a remote Unix socket path to forward, C{""} for a
        fresh path, L{None} for no socket forward.
    @ivar identities: C{-i} key files.
    @ivar knownHosts: C{--known-hosts} (C{-o UserKnownHostsFile=}).
    @ivar acceptNew: C{--accept-new} (C{-o StrictHostKeyChecking=accept-new}).
    @ivar authorizedKeys: keys the nested SSH server accepts (ssh mode, and
        a mount C{via} C{ssh}, besides the mount's own session key).
    @ivar hostKey: the nested SSH server's host key file (created if missing).
    @ivar sessionKey: install a session key on the remote host; L{None}: in
        ssh mode when there is no C{authorizedKeys}.
    @ivar readOnly: refuse every change to the shares.
    @ivar umask: applied to files and folders the remote side creates.
    @ivar verbose: log every SFTP request (an audit trail).
    @ivar configFile: C{-F}; C{port}: C{-p}; C{jump}: C{-J};
        C{sshOptions}: C{-o} values.
    @ivar mountAt: mount the shares at this remote folder (C{mount}).
    @ivar mountVia: C{passive}, C{ssh}, C{socket} or C{raw-tcp}.
    @ivar retryInitialDelay: first reconnect delay, seconds.
    @ivar retryMaxDelay: longest reconnect delay, seconds (before jitter).
    @ivar stepTimeout: longest wait for each step of a stop, seconds.
    """

    mode: str = "ssh"
    remoteListen: list[tuple[str, int]] | None = None
    remoteSocket: str | None = None
    identities: list[str] = field(default_factory=list)
    knownHosts: str | None = None
    acceptNew: bool = False
    authorizedKeys: str | None = None
    hostKey: str | None = None
    sessionKey: bool | None = None
    readOnly: bool = False
    umask: int = 0o022
    verbose: bool = False
    configFile: str | None = None
    port: int | None = None
    jump: str | None = None
    sshOptions: list[str] = field(default_factory=list)
    mountAt: str | None = None
    mountVia: str = "passive"
    retryInitialDelay: float = 1.0
    retryMaxDelay: float = 60.0
    stepTimeout: float = 10.0

    def check(self) -> None:
        """
        @raise UsageError: the options contradict each other.
        """
        if self.mode not in MODES:
            raise UsageError(f"Unknown mode {self.mode!r}; use ssh or raw.")
        if self.mountVia not in MOUNT_VIAS:
            raise UsageError(f"Unknown --via {self.mountVia!r}; use {', '.join(MOUNT_VIAS)}.")
        if self.mountAt is not None:
            # The mount's own sshfs runs unattended on the remote host: it
            # logs in to the nested server with the session key the mount
            # installs, so that key cannot be left out.
            if self.sessionKey is False:
                raise UsageError(
                    "A mount always installs a session key for its own sshfs;"
                    " --no-session-key is for share."
                )
            if self.authorizedKeys is not None and self.mountVia != "ssh":
                raise UsageError("--authorized-keys needs --via ssh.")
        elif self.authorizedKeys is not None and self.mode != "ssh":
            raise UsageError("--authorized-keys needs --mode ssh.")
        if self.sessionKey and self.mode != "ssh":
            raise UsageError("--session-key needs --mode ssh.")
        if not 0 <= self.umask <= 0o777:
            raise UsageError(f"Bad umask {self.umask:o}.")

    def effectiveMode(self) -> str:
        """
        The endpoint mode of the forwards, after C{mountVia}.
        """
        if self.mountAt is not None:
            return "ssh" if self.mountVia == "ssh" else "raw"
        return self.mode

    def wantsSessionKey(self) -> bool:
        """
        Whether a session key is installed on the remote host.
        """
        if self.effectiveMode() != "ssh" or self.mountAt is not None:
            return False  # a mount installs its own key
        if self.sessionKey is not None:
            return self.sessionKey
        return self.authorizedKeys is None

    def forwards(self) -> list[ForwardSpec]:
        """
        The forwards the service requests, in order (none for a mount: the
        remote mount requests the one its C{mountVia} needs).
        """
        if self.mountAt is not None:
            return []  # the remote mount requests the forward it needs
        specs = [ForwardSpec(address=a, port=p) for a, p in (self.remoteListen or [])]
        if self.remoteSocket is not None:
            specs.append(ForwardSpec(socket=self.remoteSocket))
        if not specs:
            specs.append(ForwardSpec())
        return specs

    def sshOptionList(self) -> list[str]:
        """
        The C{-o} values, with C{--known-hosts} and C{--accept-new} first.
        """
        result: list[str] = []
        if self.knownHosts is not None:
            result.append(f"UserKnownHostsFile={os.path.abspath(self.knownHosts)}")
        if self.acceptNew:
            result.append("StrictHostKeyChecking=accept-new")
        return result + list(self.sshOptions)
