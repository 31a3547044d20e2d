"""
Mounting the shares on the remote host with that host's C{sshfs}, started
over an exec channel of our own outbound connection (what X2Go's
C{x2gomountdirs} does on the server, driven from our side).

Transports (C{via}):
  - C{passive} (the default): the exec channel runs
    C{sshfs -f -o passive,idmap=user :/PATH DIR} and our SFTP server speaks
    over that channel's stdin/stdout.  No listener, no key, one crypto layer.
  - C{ssh}, C{socket}, C{raw-tcp}: a forward of the connection leads to our
    server (nested SSH server, raw SFTP on an owner-only Unix socket, raw
    SFTP on a TCP port) and the remote C{sshfs} connects to it.

PATH is the share's virtual path when there is one share (the mount shows
that folder), C{/} otherwise (the virtual root, one folder per share).

State rules of L{RemoteMount}:
  - C{idle} -> C{mounting} -> C{mounted} -> C{unmounting} -> C{idle}.  A
    failed mount goes back to C{idle} having removed what it created.
  - C{_created} (the top-most directory we created for the mount point) is
    kept across remounts: we remove it when the mount finally ends.
  - Every remote command runs through C{/bin/sh -c} with every path quoted
    by L{shlex.quote}, whatever the remote user's login shell is.  The tools
    are checked (one command) before anything is created.

Events (to the observer, as in DESIGN.md): C{mounted} (C{remote_path}) once
the mount answers; C{unmounted} (C{remote_path}) when it is gone, with
C{lazy: true} and a C{message} when a busy mount was detached lazily, and a
C{message} when sshfs ended on its own.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from conchshare.errors import ConchShareError, MountFailed
from conchshare.events import EventObserver, makeEvent
from conchshare.mountscripts import (
    CHECK,
    INSTALL_HINT,
    PID_MARK,
    PREPARE,
    UNMOUNT,
    lastLine,
    quoteAssignment,
    readRecords,
    remoteScript,
    remoteShellPath,
    shellCommand,
    socatEscape,
    sshfsPid,
)
from conchshare.reactors import orGlobalReactor
from conchshare.serving import ForwardServer
from conchshare.shareoptions import MOUNT_VIAS
from conchshare.shares import ShareSet

if TYPE_CHECKING:
    from twisted.conch.ssh.keys import Key

    from conchshare.tunnel.channels import ForwardedChannel
    from conchshare.tunnel.connection import Listener, ShareConnection
    from conchshare.tunnel.remote import ExecChannel
    from conchshare.tunnel.sessionkey import InstalledSessionKey

__all__ = ["VIAS", "RemoteMount", "remoteShellPath"]

#: The transports C{conchshare mount --via} accepts.
VIAS = MOUNT_VIAS

#: Seconds a mount may take to answer.
MOUNT_TIMEOUT = 20.0
#: Seconds between checks that the mount answers.
POLL_INTERVAL = 0.1
#: Seconds a short remote command (check, unmount) may take.
COMMAND_TIMEOUT = 30.0
#: Attempts at a plain unmount of a busy mount, and the pause between them,
#: before unmounting lazily.
UNMOUNT_ATTEMPTS = 5
UNMOUNT_PAUSE = 0.2
#: Seconds we wait for sshfs to exit after the unmount before closing its
#: channel.
EXIT_TIMEOUT = 3.0
#: An sshfs that ends while the mount is wanted is mounted again, up to
#: REMOUNT_LIMIT times within REMOUNT_WINDOW seconds; then it is given up.
REMOUNT_LIMIT = 3
REMOUNT_WINDOW = 60.0


def _defaultAvatar(shares: ShareSet, reactor: object) -> object:
    from conchshare.sftp.avatar import ShareSFTPServer

    return ShareSFTPServer(shares, reactor=reactor)


def _defaultServerProtocol(avatar: object) -> IProtocol:
    from conchshare.sftp.protocol import SFTPServerProtocol

    protocol: IProtocol = SFTPServerProtocol(avatar)
    return protocol


class RemoteMount:
    """
    The shares, mounted on the remote host with its C{sshfs}.

    @ivar remotePath: the absolute remote path of the mount point once
        known, else L{None}.
    @ivar state: C{"idle"}, C{"mounting"}, C{"mounted"} or C{"unmounting"}.
    @ivar listener: the granted forward (a
        L{conchshare.tunnel.connection.Listener}) while mounted C{via} C{ssh},
        C{socket} or C{raw-tcp}; L{None} otherwise.
    """

    _log = Logger()

    def __init__(
        self,
        connection: ShareConnection,
        shares: ShareSet,
        remoteDir: str,
        *,
        via: str = "passive",
        reactor: Any = None,
        avatarFactory: Callable[[ShareSet], object] | None = None,
        observer: EventObserver | None = None,
        sshfsOptions: Sequence[str] = (),
        serverProtocolFactory: Callable[[object], IProtocol] | None = None,
        mountTimeout: float = MOUNT_TIMEOUT,
        hostKey: Key | None = None,
        authorizedKeys: Sequence[Key] = (),
    ) -> None:
        """
        @param connection: the connected outbound SSH connection.
        @param shares: what to mount.
        @param remoteDir: the mount point on the remote host; relative to
            the remote home directory unless absolute; C{~/} works.
        @param via: one of L{VIAS}.
        @param reactor: the reactor (default: the global one).
        @param avatarFactory: makes the SFTP avatar serving one mount from
            the shares (default: L{conchshare.sftp.avatar.ShareSFTPServer}).
        @param observer: receives the C{mounted} and C{unmounted} events.
        @param sshfsOptions: extra C{sshfs -o} options, e.g. C{["ro"]}.
        @param serverProtocolFactory: makes the SFTP server protocol for an
            avatar (default: L{conchshare.sftp.protocol.SFTPServerProtocol}).
        @param mountTimeout: seconds the mount may take to answer.
        @param hostKey: the nested server's host key for C{via="ssh"} (a
            Conch C{Key}; default: a new one for each mount).
        @param authorizedKeys: public keys (Conch C{Key}s) the nested server
            accepts for C{via="ssh"} besides the mount's session key, so
            others on the remote host can use the same forward.
        @raise ValueError: C{via} is not one of L{VIAS}, or an sshfs option
            contains a comma.
        """
        if via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}, not {via!r}")
        for option in sshfsOptions:
            if "," in option or not option:
                raise ValueError(f"an sshfs option cannot be empty or contain a comma: {option!r}")
        reactor = orGlobalReactor(reactor)
        self.connection = connection
        self.shares = shares
        self.remoteDir = remoteDir
        self.via = via
        self.sshfsOptions = tuple(sshfsOptions)
        self.mountTimeout = mountTimeout
        self.remotePath: str | None = None
        self.state = "idle"
        self._reactor = reactor
        self._avatarFactory = avatarFactory or (lambda s: _defaultAvatar(s, reactor))
        self._serverProtocolFactory = serverProtocolFactory or _defaultServerProtocol
        self._observer = observer
        self._fusermount = "fusermount"
        self._created: str | None = None
        self._wasMounted = False
        self._sshfs: ExecChannel | None = None
        self.listener: Listener | None = None
        self._sessionKey: InstalledSessionKey | None = None
        self._hostKey = hostKey
        self._authorizedKeys = list(authorizedKeys)
        self._mountWaiters: list[defer.Deferred[None]] = []
        self._unmountWaiters: list[defer.Deferred[None]] = []
        #: In the environment of our sshfs processes (see L{_marked}).
        self._token = secrets.token_hex(8)
        #: The process id of the current (or last) sshfs, once known.
        self._sshfsPid: int | None = None
        #: When sshfs ended on its own and was mounted again (seconds).
        self._endings: list[float] = []

    # -- events ------------------------------------------------------------

    def _emit(self, name: str, **fields: Any) -> None:
        if self._observer is not None:
            try:
                self._observer(makeEvent(name, self._reactor, **fields))
            except Exception:
                self._log.failure("mount event observer failed")

    # -- remote commands ---------------------------------------------------

    def _run(
        self, command: bytes, timeout: float = COMMAND_TIMEOUT
    ) -> defer.Deferred[tuple[int | None, bytes, bytes]]:
        from conchshare.tunnel.remote import runRemote

        if not self._connected():
            return defer.fail(ConnectionLost("the connection to the remote host is gone"))
        try:
            d = runRemote(self.connection, command)
        except Exception as e:
            return defer.fail(e)
        return d.addTimeout(timeout, self._reactor)

    def _connected(self) -> bool:
        """
        Whether the connection can still carry a command.  (Conch keeps
        C{transport} set after the connection is lost.)
        """
        return self.connection.isOpen()

    @property
    def _remotePathWord(self) -> str:
        if self.remotePath is not None:
            return shlex.quote(self.remotePath)
        return remoteShellPath(self.remoteDir)

    def _sshfsSource(self) -> str:
        return ":" + self.shares.home.decode("utf-8", "surrogateescape")

    def _sshfsOptionList(self, *first: str) -> str:
        return ",".join(first + ("idmap=user",) + self.sshfsOptions)

    def _sshfsCommand(self, listener: Listener | None = None) -> bytes:
        """
        The remote command that runs sshfs in the foreground for C{via}.
        """
        assert self.remotePath is not None
        source = self._sshfsSource()
        if self.via == "passive":
            words = ["exec", "sshfs", "-f", "-o", self._sshfsOptionList("passive")]
            words += [source, self.remotePath]
        elif self.via == "ssh":
            key = self._sessionKey
            assert key is not None and listener is not None
            options = self._sshfsOptionList(
                f"IdentityFile={key.keyPath}",
                "IdentitiesOnly=yes",
                f"UserKnownHostsFile={key.knownHostsPath}",
                "StrictHostKeyChecking=yes",
                "BatchMode=yes",
            )
            words = ["exec", "sshfs", "-f", "-p", str(listener.port), "-o", options]
            words += [f"{key.user}@127.0.0.1{source}", self.remotePath]
        elif self.via == "raw-tcp":
            assert listener is not None
            options = self._sshfsOptionList(f"directport={listener.port}")
            words = ["exec", "sshfs", "-f", "-o", options, "127.0.0.1" + source, self.remotePath]
        elif self.via == "socket":
            socketPath = listener.socketPath if listener is not None else None
            assert socketPath is not None
            # socat parses its address strings (quotes, commas, colons), so
            # the paths reach sshfs through the environment, unsplit
            # (IFS empty) and unglobbed (set -f).
            script = "SYSTEM:set -f; IFS=; exec sshfs -f -o $CS_OPTIONS $CS_SOURCE $CS_MOUNT"
            words = [
                f"CS_OPTIONS={self._sshfsOptionList('passive')}",
                f"CS_SOURCE={source}",
                f"CS_MOUNT={self.remotePath}",
                "exec",
                "socat",
                "UNIX-CONNECT:" + socatEscape(socketPath),
                script,
            ]
            return shellCommand(self._marked(" ".join(quoteAssignment(w) for w in words)))
        else:
            raise MountFailed(f"--via {self.via} is not available")
        return shellCommand(self._marked(" ".join(shlex.quote(w) for w in words)))

    def _marked(self, command: str) -> str:
        """
        C{command}, made to print its process id on stderr first and to
        carry this mount's token in its environment: a later remount can
        then tell this sshfs from any other process and kill it.
        """
        return (
            f"printf '{PID_MARK}%s\\n' \"$$\" >&2; export CONCHSHARE_MOUNT={self._token}; "
            + command
        )

    # -- mounting ----------------------------------------------------------

    def mount(self) -> defer.Deferred[str]:
        """
        Mount the shares on the remote host and wait until the mount answers.
        Callable again after L{unmount} or after the connection was replaced
        (see L{remount}).

        @return: a Deferred firing with the absolute remote path of the
            mount point once it answers (a C{mounted} event is sent then).
            It fails with L{MountFailed} (one sentence saying why: no sshfs,
            no FUSE, the mount point is not a directory or already a mount
            point, sshfs failed, timeout, connection lost); what this call
            created on the remote host is removed then.
        """
        if self.state != "idle":
            return defer.fail(MountFailed(f"the remote mount is already {self.state}"))
        self.state = "mounting"
        return defer.ensureDeferred(self._mountAndReport())

    async def _mountAndReport(self) -> str:
        try:
            path = await self._mount()
        except Exception as e:
            self.state = "idle"
            self._mountSettled()
            if isinstance(e, ConchShareError):
                raise
            raise MountFailed(f"the remote mount failed: {_reason(e)}") from e
        self.state = "mounted"
        self._wasMounted = True
        self._emit("mounted", remote_path=path)
        self._mountSettled()
        return path

    def _mountSettled(self) -> None:
        waiters, self._mountWaiters = self._mountWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def remount(self, connection: ShareConnection | None = None) -> defer.Deferred[str]:
        """
        Mount again, on a new connection after a reconnect: the previous
        C{sshfs} ended with the old connection.  A stale mount left at the
        mount point is unmounted lazily first.

        @param connection: the new connection (default: keep the current one).
        @return: as L{mount}.
        """
        if connection is not None:
            self.connection = connection
        if self.state == "mounted":
            # The old connection is gone: its channel is dead, though its
            # sshfs may still run (L{_mount} kills it before mounting).
            self.state = "idle"
            if self._sshfs is not None and self._sshfsPid is None:
                self._sshfsPid = sshfsPid(self._sshfs.stderr)
            self._sshfs = None
        # Forwards went with the old connection; the session key files are
        # left to the old connection's clean-ups.
        self.listener = None
        self._sessionKey = None
        return self.mount()

    async def _mount(self) -> str:
        extra = {"socket": "socat", "ssh": "ssh"}.get(self.via, "")
        try:
            status, out, err = await self._run(
                remoteScript(
                    PREPARE,
                    d=self._remotePathWord,
                    extra=shlex.quote(extra),
                    passive="1" if self.via in ("passive", "socket") else "''",
                    stale="1" if self._wasMounted else "''",
                    oldpid=str(self._sshfsPid or "''"),
                    token=self._token,
                )
            )
        except Exception as e:
            raise MountFailed(f"could not check the remote host for sshfs: {_reason(e)}")
        records = readRecords(out)
        where = self.remoteDir
        if "missing" in records:
            tool = records["missing"].split()[0]
            raise MountFailed(
                f"the remote host has no {tool}: {INSTALL_HINT.get(tool, 'install it')}"
            )
        if "nofuse" in records:
            raise MountFailed(
                "the remote host has no FUSE device (/dev/fuse): load the fuse module or install fuse3"
            )
        if "nopassive" in records:
            raise MountFailed(
                "the remote host's sshfs does not support -o passive: install sshfs 3.0 or later"
            )
        if "notdir" in records:
            raise MountFailed(f"the remote mount point {where} exists and is not a directory")
        if "mkdir" in records:
            raise MountFailed(
                f"could not create the remote mount point {where}: {records['mkdir']}"
            )
        if "mounted" in records:
            raise MountFailed(
                f"the remote mount point {records['mounted']} is already a mount point:"
                " unmount it first (fusermount -u)"
            )
        if "path" not in records or status != 0:
            raise MountFailed(
                f"could not prepare the remote mount point {where}: {lastLine(err) or 'unknown error'}"
            )
        self._fusermount = records.get("fusermount", "fusermount")
        if "created" in records and self._created is None:
            self._created = records["created"]
        self.remotePath = records["path"]
        self._sshfsPid = None
        try:
            await self._startSSHFS()
            await self._waitMounted()
        except BaseException:
            await self._cleanUp(quick=True)
            raise
        if self._sshfs is not None:
            self._sshfsPid = sshfsPid(self._sshfs.stderr)
        return self.remotePath

    async def _startSSHFS(self) -> None:
        from conchshare.tunnel.remote import openExecProtocol

        avatar = self._avatarFactory(self.shares)
        listener = None
        if self.via == "passive":
            protocol = self._serverProtocolFactory(avatar)
        else:
            # sshfs reaches our server through a forward; the exec
            # channel's stdio carries nothing.
            listener = await self._forward(avatar)
            protocol = Protocol()
        try:
            self._sshfs = await openExecProtocol(
                self.connection, self._sshfsCommand(listener), protocol
            )
        except Exception as e:
            raise MountFailed(f"could not start sshfs on the remote host: {_reason(e)}")
        self._sshfs.notifyOnClose(self._sshfsClosed)

    def _sshfsClosed(self, channel: ForwardedChannel) -> None:
        # Decide once the connection has finished closing, if it is: a lost
        # connection is the service's to handle (it reconnects and remounts).
        self._reactor.callLater(0, self._sshfsEnded, channel)

    def _sshfsEnded(self, channel: ForwardedChannel) -> None:
        """
        sshfs ended while mounted and the connection is up: it failed, or
        the mount went away on the remote host.  The mount is still wanted:
        mount again (L{REMOUNT_LIMIT} times within L{REMOUNT_WINDOW}
        seconds at most); if that fails, or it keeps ending, clean up and
        report C{unmounted}.
        """
        sshfs = self._sshfs
        if (
            sshfs is None
            or channel is not sshfs
            or self.state != "mounted"
            or not self._connected()
        ):
            return
        why = lastLine(sshfs.stderr) or f"exit status {sshfs.exitStatus}"
        path = self.remotePath
        now = self._reactor.seconds()
        self._endings = [t for t in self._endings if now - t < REMOUNT_WINDOW] + [now]
        if len(self._endings) <= REMOUNT_LIMIT:
            self._log.warn(
                "sshfs ended on the remote host ({why}); mounting {path} again",
                why=why,
                path=path,
            )
            self.state = "mounting"
            defer.ensureDeferred(self._mountAgain(why))
            return
        self.state = "unmounting"

        def done(_: object) -> None:
            self._emit(
                "unmounted",
                remote_path=path,
                message=f"sshfs ended on the remote host ({why}); {path} is no longer mounted",
            )
            self._unmountSettled()

        defer.ensureDeferred(self._cleanUp(quick=True)).addErrback(
            lambda f: self._log.failure("cleaning up after sshfs failed", f)
        ).addBoth(done)

    async def _mountAgain(self, why: str) -> None:
        """
        Mount again on the same connection after sshfs ended on its own
        (the state is C{mounting}); C{mounted} when it answers, else
        C{unmounted} saying why.
        """
        path = self.remotePath
        try:
            await self._cleanUp(quick=True)
            await self._mountAndReport()
        except Exception as e:
            if self.state == "mounting":
                self.state = "idle"
                self._mountSettled()
            self._wasMounted = False
            self._emit(
                "unmounted",
                remote_path=path,
                message=(
                    f"sshfs ended on the remote host ({why}) and mounting again failed"
                    f" ({_reason(e)}); {path} is no longer mounted"
                ),
            )

    async def _forward(self, avatar: object) -> Listener:
        """
        Ask the remote sshd for the forward that leads to our server: a
        Unix socket (C{socket}) or a loopback TCP port (C{raw-tcp}) to raw
        SFTP; or (C{ssh}, X2Go's way) a loopback TCP port to a nested SSH
        server that takes a session key made for this mount (installed on
        the remote host with a known_hosts line for the nested host key)
        and the C{authorizedKeys}.

        @raise ForwardRefused: the server refused the forward.
        """
        if self.via not in ("ssh", "socket", "raw-tcp"):
            raise MountFailed(f"--via {self.via} is not available")
        server = ForwardServer(
            "ssh" if self.via == "ssh" else "raw",
            lambda: self._serverProtocolFactory(avatar),
            hostKey=self._hostKey,
            authorizedKeys=self._authorizedKeys,
            withSessionKey=self.via == "ssh",
            reactor=self._reactor,
        )
        if self.via == "socket":
            wanted = server.listener(streamlocal=True)
        else:
            wanted = server.listener(address="127.0.0.1", port=0)
        listener = self.listener = await self.connection.requestForward(wanted)
        if self.via == "ssh":
            self._sessionKey = await server.installSessionKey(
                self.connection, listener.port, "conchshare"
            )
        return listener

    async def _waitMounted(self) -> None:
        assert self.remotePath is not None
        channel = self._sshfs
        deadline = self._reactor.seconds() + self.mountTimeout
        check = remoteScript(CHECK, d=shlex.quote(self.remotePath))
        while True:
            if channel is not None and channel.isClosed:
                raise MountFailed(
                    "sshfs failed on the remote host: "
                    + (lastLine(channel.stderr) or f"it exited with status {channel.exitStatus}")
                )
            try:
                status, _, _ = await self._run(check, timeout=max(1.0, self.mountTimeout))
            except Exception as e:
                raise MountFailed(f"lost the remote host while mounting: {_reason(e)}")
            if status == 0:
                return
            if self._reactor.seconds() >= deadline:
                raise MountFailed(
                    f"the remote mount at {self.remotePath} did not answer within"
                    f" {self.mountTimeout:g} s"
                )
            await _sleep(self._reactor, POLL_INTERVAL)

    # -- unmounting --------------------------------------------------------

    def unmount(self) -> defer.Deferred[None]:
        """
        Unmount (retrying a busy mount briefly, then lazily), remove the
        mount point if we created it, and close sshfs's channel.  An
        C{unmounted} event is sent (with C{"lazy": True} when the mount was
        busy and detached lazily).  Nothing happens if nothing is mounted.

        @return: a Deferred firing with L{None} when done; it never fails
            (a remote error is logged and reported in the event).
        """
        if self.state == "mounting":
            # Let the mount finish or fail (it is bounded), then undo it.
            waiting: defer.Deferred[None] = defer.Deferred()
            self._mountWaiters.append(waiting)
            return waiting.addCallback(lambda _: self.unmount())
        if self.state == "unmounting":
            # Already under way (stop, or sshfs ended): wait for it.
            waiting = defer.Deferred()
            self._unmountWaiters.append(waiting)
            return waiting
        if self.state != "mounted":
            return defer.succeed(None)
        self.state = "unmounting"
        return defer.ensureDeferred(self._unmount())

    def _unmountSettled(self) -> None:
        self.state = "idle"
        self._wasMounted = False
        waiters, self._unmountWaiters = self._unmountWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _unmount(self) -> None:
        path = self.remotePath
        try:
            result = await self._cleanUp(quick=False)
        except Exception as e:
            self._log.failure("unmounting failed")
            result = _reason(e)
        fields: dict[str, Any] = {"remote_path": path}
        if result == "lazy":
            fields["lazy"] = True
            fields["message"] = (
                f"{path} was busy on the remote host and was unmounted lazily:"
                " it goes away once its last open file is closed"
            )
        elif result not in ("unmounted", "notmounted", "gone"):
            fields["message"] = f"could not unmount {path} on the remote host: {result}"
        self._emit("unmounted", **fields)
        self._unmountSettled()

    async def _cleanUp(self, quick: bool) -> str:
        """
        Unmount, remove what we created, close sshfs's channel.

        @param quick: unmount lazily at once if the plain unmount fails
            (undoing a failed mount, or after sshfs ended), instead of
            retrying a busy mount.
        @return: C{"unmounted"}, C{"notmounted"}, C{"lazy"}, C{"gone"} (the
            connection is gone) or an error message.
        """
        channel, self._sshfs = self._sshfs, None
        result = "gone"
        if self.remotePath is not None and self._connected():
            try:
                _, out, _ = await self._run(
                    remoteScript(
                        UNMOUNT,
                        d=shlex.quote(self.remotePath),
                        fm=shlex.quote(self._fusermount),
                        created=shlex.quote(self._created or ""),
                        attempts=str(1 if quick else UNMOUNT_ATTEMPTS),
                        pause=str(UNMOUNT_PAUSE),
                    )
                )
                records = readRecords(out)
                result = records.get("result", "")
                if result == "failed":
                    result = records.get("error", "") or "fusermount failed"
                if result != "lazy":
                    self._created = None
            except Exception as e:
                result = _reason(e)
        if channel is not None:
            if result != "lazy":
                await _closedWithin(self._reactor, channel, EXIT_TIMEOUT)
            if not channel.isClosed:
                channel.loseConnection()
        listener, self.listener = self.listener, None
        sessionKey, self._sessionKey = self._sessionKey, None
        if self._connected():
            if listener is not None:
                await self._cancelForward(listener)
            if sessionKey is not None:
                await self._removeQuietly(sessionKey.directory)
        return result

    async def _removeQuietly(self, path: str) -> None:
        try:
            await self._run(shellCommand("rm -rf -- " + shlex.quote(path)))
        except Exception as e:
            self._log.warn("could not remove {path}: {error}", path=path, error=_reason(e))

    async def _cancelForward(self, listener: Listener) -> None:
        try:
            await self.connection.cancelForward(listener)
        except Exception as e:
            self._log.warn("could not cancel the forward: {error}", error=_reason(e))
        if listener.socketDirectory:
            await self._removeQuietly(listener.socketDirectory)


def _reason(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "the remote command timed out"
    text = str(e).strip()
    return text or e.__class__.__name__


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _closedWithin(reactor: Any, channel: ExecChannel, seconds: float) -> None:
    """
    Wait until C{channel} has closed, at most C{seconds}.
    """
    if channel.isClosed:
        return
    d: defer.Deferred[None] = defer.Deferred()

    def closed(_: object) -> None:
        if not d.called:
            d.callback(None)

    channel.notifyOnClose(closed)
    call = reactor.callLater(seconds, closed, None)
    await d
    if call.active():
        call.cancel()
