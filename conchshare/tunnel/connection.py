"""
The C{ssh-connection} service of the outbound client: asks the remote sshd
to listen (C{tcpip-forward}, C{streamlocal-forward@openssh.com}), serves the
channels it forwards back with each listener's endpoint protocol, pauses and
resumes them together, and stops cleanly.

State rules:
  - C{_listeners} holds every forward the server granted, by route key
    (C{("tcp", address, allocatedPort)} or C{("unix", path)}).  A forwarded
    channel for any other listener is refused with OPEN_FAILURE.
  - Every served channel is in L{ShareConnection.group}; pausing the group
    pauses them all, and channels opened while paused start paused.
  - L{ShareConnection.stop} cancels forwards with the address string exactly
    as requested and the allocated port, closes channels, runs the remote
    clean-ups, disconnects; it fires once the connection is gone and never
    waits longer than its timeout.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import common
from twisted.conch.ssh.connection import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    SSHConnection,
)
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION
from twisted.internet import defer, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.budget import MemoryBudget, processMemoryBudget
from conchshare.errors import ConnectionFailed, ForwardRefused
from conchshare.reactors import orGlobalReactor
from conchshare.tunnel.channels import (
    TRANSPORT,
    ChannelGroup,
    ChannelServingMixin,
    ForwardedChannel,
    GroupPressure,
)
from conchshare.tunnel.remote import quote, runRemote

Event = dict[str, Any]
Observer = Callable[[Event], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: The longest Unix socket path on Linux (C{sun_path} holds 108 bytes
#: with the NUL); sshd refuses a forward on a longer one.
MAX_SOCKET_PATH = 107


def _tooLong(path: str) -> bool:
    return len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH


@dataclasses.dataclass
class Listener:
    """
    One remote listener and what serves the channels that arrive on it.

    @ivar mode: the endpoint mode, C{"raw"} or C{"ssh"} (for events).
    @ivar protocolFactory: makes the protocol of each forwarded channel (an
        SFTP server protocol for C{raw}, a nested SSH server transport for
        C{ssh}).
    @ivar address: the address to listen on, sent exactly as given.
    @ivar port: the port asked for (0: the server picks); after
        L{ShareConnection.requestForward}, the allocated port.
    @ivar socketPath: a remote Unix socket path (streamlocal) instead of
        address and port; L{None} for TCP.
    @ivar streamlocal: forward a Unix socket; with C{socketPath} L{None} a
        fresh path in a new 0700 directory is made on the remote host.
    """

    mode: str
    protocolFactory: Callable[[], interfaces.IProtocol]
    address: str = "127.0.0.1"
    port: int = 0
    socketPath: str | None = None
    streamlocal: bool = False
    socketDirectory: str | None = None

    @property
    def isUnix(self) -> bool:
        return self.streamlocal or self.socketPath is not None

    def describe(self) -> str:
        """
        C{"address:port"} (IPv6 in brackets) or the socket path.
        """
        if self.isUnix:
            return self.socketPath or ""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def routeKey(self) -> tuple[str, ...]:
        if self.isUnix:
            return ("unix", self.socketPath or "")
        return ("tcp", self.address, str(self.port))

    def event(self) -> Event:
        """
        The fields of the C{forwarding} event.
        """
        if self.isUnix:
            return {"mode": self.mode, "socket": self.socketPath}
        return {"mode": self.mode, "address": self.address, "port": self.port}


class ShareConnection(ChannelServingMixin, SSHConnection):
    """
    The client C{ssh-connection} service of conchshare.

    @ivar group: every channel we serve, paused and resumed together.
    @ivar listeners: the granted forwards, in the order they were granted.
    @ivar stopping: whether L{stop} was called (a loss is then expected).
    @ivar memoryBudget: the L{MemoryBudget} our channels' windows come from.
    """

    _log = Logger()

    def __init__(self, *, reactor: Any = None, memoryBudget: MemoryBudget | None = None) -> None:
        """
        @param reactor: the reactor (default: the global one).
        @param memoryBudget: what the receive windows of our channels share
            (default: the process's, L{processMemoryBudget}).
        """
        super().__init__()
        self._reactor = orGlobalReactor(reactor)
        self.memoryBudget = memoryBudget if memoryBudget is not None else processMemoryBudget()
        self.group = ChannelGroup()
        self.listeners: list[Listener] = []
        self._routes: dict[tuple[str, ...], Listener] = {}
        self._observers: list[Observer] = []
        self._remoteCleanups: list[bytes] = []
        self._lostWaiters: list[defer.Deferred[None]] = []
        self._lost = False
        self.stopping = False
        self._stopDeferred: defer.Deferred[None] | None = None
        self._openReports: dict[ForwardedChannel, Callable[[], None]] = {}

    # -- events --------------------------------------------------------------

    def addObserver(self, observer: Observer) -> None:
        """
        Call C{observer(event)} for each event: a dict with C{"event"},
        C{"time"} and the fields of DESIGN.md's table (C{forwarding},
        C{channel-opened}, C{channel-closed}, C{paused}, C{resumed}).
        """
        self._observers.append(observer)

    def removeObserver(self, observer: Observer) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def emit(self, event: str, **fields: Any) -> None:
        """
        Send an event to every observer.
        """
        record: Event = {"event": event, "time": _now(), **fields}
        for observer in list(self._observers):
            try:
                observer(record)
            except Exception:
                self._log.failure("event observer failed")

    # -- service life --------------------------------------------------------

    def serviceStarted(self) -> None:
        super().serviceStarted()
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None and hasattr(tcp, "registerProducer"):
            try:
                tcp.registerProducer(GroupPressure(self.group, TRANSPORT), True)
            except RuntimeError:
                pass  # someone else already watches the send buffer

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self._lost = True
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def whenLost(self) -> defer.Deferred[None]:
        """
        @return: a Deferred firing with L{None} when the connection is gone
            (stopped or lost).  Check L{stopping} to tell which.
        """
        if self._lost:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._lostWaiters.append(d)
        return d

    def isOpen(self) -> bool:
        """
        Whether the connection can still carry a command, a channel or a
        forward request: not lost, and its SSH transport still connected.
        (Conch keeps C{transport} set after the connection is lost.)
        """
        if self._lost:
            return False
        tcp = getattr(self.transport, "transport", None)
        return tcp is not None and bool(getattr(tcp, "connected", True))

    # -- channels ----------------------------------------------------------

    def channelAccepted(self, channel: Any) -> None:
        report = self._openReports.pop(channel, None)
        if report is not None:
            report()

    def channel_forwarded_tcpip(
        self, windowSize: int, maxPacket: int, data: bytes
    ) -> ForwardedChannel:
        """
        A connection arrived on one of our TCP listeners.  Payload
        (RFC 4254 7.2): address, port connected; originator address, port.
        """
        try:
            address, rest = common.getNS(data)
            (port,) = struct.unpack(">L", rest[:4])
            origin, rest = common.getNS(rest[4:])
            (originPort,) = struct.unpack(">L", rest[:4])
        except (struct.error, ValueError, IndexError):
            raise ConchError("malformed forwarded-tcpip request", OPEN_CONNECT_FAILED)
        addressText = address.decode("utf-8", "replace")
        listener = self._routes.get(("tcp", addressText, str(port)))
        if listener is None:
            # OpenSSH reports the address as requested; tolerate a spelling
            # difference only when the port identifies one listener.
            matches = [lis for lis in self.listeners if not lis.isUnix and lis.port == port]
            listener = matches[0] if len(matches) == 1 else None
        if listener is None:
            raise ConchError(
                f"no forward for {addressText}:{port}", OPEN_ADMINISTRATIVELY_PROHIBITED
            )
        originText = origin.decode("utf-8", "replace")
        if ":" in originText:
            originText = f"[{originText}]"
        return self._serve(listener, windowSize, maxPacket, f"{originText}:{originPort}")

    def channel_forwarded_streamlocal_openssh_com(
        self, windowSize: int, maxPacket: int, data: bytes
    ) -> ForwardedChannel:
        """
        A connection arrived on one of our Unix socket listeners.  Payload
        (OpenSSH PROTOCOL 2.4): socket path, reserved string.
        """
        try:
            path, _ = common.getNS(data)
        except (struct.error, ValueError, IndexError):
            raise ConchError("malformed forwarded-streamlocal request", OPEN_CONNECT_FAILED)
        pathText = path.decode("utf-8", "surrogateescape")
        listener = self._routes.get(("unix", pathText))
        if listener is None:
            raise ConchError(f"no forward for {pathText}", OPEN_ADMINISTRATIVELY_PROHIBITED)
        return self._serve(listener, windowSize, maxPacket, pathText)

    def _serve(
        self, listener: Listener, windowSize: int, maxPacket: int, origin: str
    ) -> ForwardedChannel:
        if self.stopping:
            raise ConchError("shutting down", OPEN_ADMINISTRATIVELY_PROHIBITED)
        protocol = listener.protocolFactory()
        channel = ForwardedChannel(
            protocol, remoteWindow=windowSize, remoteMaxPacket=maxPacket, conn=self
        )
        self.group.add(channel)

        def opened() -> None:
            self.emit(
                "channel-opened",
                channel=channel.id,
                listener=listener.describe(),
                origin=origin,
            )

        def closed(ch: ForwardedChannel) -> None:
            self.emit("channel-closed", channel=ch.id, bytes_in=ch.bytesIn, bytes_out=ch.bytesOut)

        channel.notifyOnClose(closed)
        self._openReports[channel] = opened  # once the channel has its id
        return channel

    # -- pausing -------------------------------------------------------------

    def pause(self) -> int:
        """
        Pause every channel (and those that open while paused); emits
        C{paused}.

        @return: how many channels were paused.
        """
        count = self.group.pause()
        self.emit("paused", channels=count)
        return count

    def resume(self) -> int:
        """
        Resume every channel; emits C{resumed}.

        @return: how many channels were resumed.
        """
        count = self.group.resume()
        self.emit("resumed", channels=count)
        return count

    # -- forwards ------------------------------------------------------------

    def requestForward(self, listener: Listener) -> defer.Deferred[Listener]:
        """
        Ask the server to listen for C{listener} and route what arrives there
        to its protocol.  Emits C{forwarding}.

        @return: a Deferred firing with a copy of C{listener} carrying the
            allocated port (TCP) or the socket path (streamlocal); failing
            with L{ForwardRefused} if the server refused, and with
            L{ConnectionFailed} if the connection is stopping or gone.
        """
        return defer.ensureDeferred(self._requestForward(listener))

    async def _requestForward(self, listener: Listener) -> Listener:
        if self.stopping or self._lost:
            raise ConnectionFailed(
                f"Cannot forward {listener.describe() or 'a Unix socket'}: the connection is closed."
            )
        granted = dataclasses.replace(listener)
        if granted.isUnix:
            if granted.socketPath is None:
                granted.socketDirectory = await self._makeRemoteDirectory()
                if _tooLong(granted.socketDirectory + "/sftp.sock"):
                    # A long $TMPDIR on the remote host: /tmp is short.
                    await self._runQuietly(b"rm -rf -- " + quote(granted.socketDirectory).encode())
                    granted.socketDirectory = await self._makeRemoteDirectory("/tmp")
                granted.socketPath = granted.socketDirectory + "/sftp.sock"
            else:
                if not granted.socketPath.startswith("/"):
                    # sshd would bind a relative path in its own working
                    # directory (usually /), while our commands (the stale
                    # socket's removal, the cleanup, mount's socat) run in
                    # the remote home: take it from the home, for all.
                    home = await self._remoteWorkingDirectory()
                    granted.socketPath = home.rstrip("/") + "/" + granted.socketPath
                # sshd leaves a stale socket behind; a new forward on the
                # path fails until it is gone.
                await self._runQuietly(
                    b"[ -S %s ] && rm -f -- %s"
                    % (quote(granted.socketPath).encode(), quote(granted.socketPath).encode())
                )
            request = b"streamlocal-forward@openssh.com"
            data = common.NS(granted.socketPath.encode("utf-8", "surrogateescape"))
            what = f"the Unix socket {granted.socketPath}"
            hint = "AllowStreamLocalForwarding may be off, or the path is taken"
            if _tooLong(granted.socketPath):
                hint = (
                    f"the path is longer than {MAX_SOCKET_PATH} bytes, too long for a Unix socket"
                )
        else:
            request = b"tcpip-forward"
            data = common.NS(granted.address.encode("utf-8")) + struct.pack(">L", granted.port)
            what = granted.describe()
            hint = "AllowTcpForwarding may be off, or the port is taken"
        try:
            reply = await self.sendGlobalRequest(request, data, wantReply=True)
        except ConchError:
            if granted.socketDirectory:
                await self._runQuietly(b"rm -rf -- " + quote(granted.socketDirectory).encode())
            raise ForwardRefused(f"The server refused to forward {what} ({hint}).")
        if not granted.isUnix and granted.port == 0:
            if len(reply) < 4:
                raise ForwardRefused(f"The server did not say which port it allocated for {what}.")
            (granted.port,) = struct.unpack(">L", reply[:4])
        if granted.socketDirectory:
            self._remoteCleanups.append(b"rm -rf -- " + quote(granted.socketDirectory).encode())
        elif granted.isUnix:
            self._remoteCleanups.append(b"rm -f -- " + quote(granted.socketPath or "").encode())
        self.listeners.append(granted)
        self._routes[granted.routeKey()] = granted
        self.emit("forwarding", **granted.event())
        return granted

    async def _remoteWorkingDirectory(self) -> str:
        """
        The directory the remote user's commands start in (the home).

        @raise ForwardRefused: it could not be found.
        """
        status, out, err = await runRemote(self, b"pwd")
        path = out.decode("utf-8", "surrogateescape")
        path = path[:-1] if path.endswith("\n") else path
        if status != 0 or not path.startswith("/"):
            raise ForwardRefused(
                "Could not find the home directory on the remote host for a relative socket path: "
                + (err.decode("utf-8", "replace").strip() or f"exit status {status}")
                + "."
            )
        return path

    async def _makeRemoteDirectory(self, parent: str | None = None) -> str:
        where = b'"${TMPDIR:-/tmp}"' if parent is None else quote(parent).encode()
        status, out, err = await runRemote(
            self, b"umask 077; mktemp -d " + where + b"/conchshare.XXXXXXXX"
        )
        path = out.decode("utf-8", "surrogateescape").strip()
        if status != 0 or not path.startswith("/"):
            raise ForwardRefused(
                "Could not make a private directory for the socket on the remote host: "
                + (err.decode("utf-8", "replace").strip() or f"exit status {status}")
                + "."
            )
        return path

    async def _runQuietly(self, command: bytes) -> None:
        try:
            await runRemote(self, command)
        except Exception:
            pass

    def cancelForward(self, listener: Listener) -> defer.Deferred[None]:
        """
        Cancel a forward granted by L{requestForward}, with the same address
        string and the allocated port (or the socket path).  Channels already
        open stay open.

        @return: a Deferred firing with L{None}, whether the server agreed or
            not (it refuses to cancel what it no longer has).
        """
        self._routes.pop(listener.routeKey(), None)
        self.listeners = [lis for lis in self.listeners if lis.routeKey() != listener.routeKey()]
        if listener.isUnix:
            request = b"cancel-streamlocal-forward@openssh.com"
            data = common.NS((listener.socketPath or "").encode("utf-8", "surrogateescape"))
        else:
            request = b"cancel-tcpip-forward"
            data = common.NS(listener.address.encode("utf-8")) + struct.pack(">L", listener.port)
        if self._lost:
            return defer.succeed(None)
        d: defer.Deferred[None] = self.sendGlobalRequest(request, data, wantReply=True)
        d.addCallbacks(lambda _: None, lambda _: None)
        return d

    def addRemoteCleanup(self, command: bytes) -> None:
        """
        Run C{command} on the remote host during L{stop} (e.g. removing
        installed files).
        """
        self._remoteCleanups.append(command)

    # -- stopping ------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> defer.Deferred[None]:
        """
        Cancel every forward, close every channel (even paused ones), run the
        remote clean-ups, then disconnect.

        @param timeout: seconds after which the TCP connection is aborted if
            the steps have not finished.
        @return: a Deferred firing with L{None} once the connection is gone;
            it does not fail.
        """
        if self._stopDeferred is not None:
            return _chain(self._stopDeferred)
        self.stopping = True
        lost = self.whenLost()
        self._stopDeferred = lost
        if self._lost:
            return _chain(lost)
        timer = self._reactor.callLater(timeout, self._abort)

        def cancelTimer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        lost.addBoth(cancelTimer)
        defer.ensureDeferred(self._stopSteps()).addErrback(
            lambda f: self._log.failure("stopping failed", f)
        )
        return _chain(lost)

    async def _stopSteps(self) -> None:
        cancels = [self.cancelForward(lis) for lis in list(self.listeners)]
        if cancels:
            await defer.DeferredList(cancels, consumeErrors=True)
        for channel in list(self.group):
            channel.abort()
        cleanups, self._remoteCleanups = self._remoteCleanups, []
        if cleanups and not self._lost:
            await self._runQuietly(b"; ".join(cleanups))
        if not self._lost and self.transport is not None:
            self.transport.sendDisconnect(DISCONNECT_BY_APPLICATION, b"conchshare stopped")

    def _abort(self) -> None:
        tcp = getattr(self.transport, "transport", None)
        if tcp is None:
            return
        abort = getattr(tcp, "abortConnection", None) or tcp.loseConnection
        abort()


def _chain(d: defer.Deferred[None]) -> defer.Deferred[None]:
    result: defer.Deferred[None] = defer.Deferred()

    def fire(value: object) -> object:
        result.callback(None)
        return value if not isinstance(value, Failure) else None

    d.addBoth(fire)
    return result
