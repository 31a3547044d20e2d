"""
One process-wide bound on the bytes conchshare buffers for its peers, so
that memory does not grow with the number of channels, and memory given
back to the system once a load is over.

Three shares of one L{MemoryBudget}:
  - C{receive}: the receive windows of every open channel together.  A
    channel's window is C{receive} divided by the number of open channels,
    at most L{WINDOW_SIZE} (what one channel needs for full speed) and at
    least L{MIN_WINDOW}.  Credit is granted only for bytes the protocol has
    taken, so received-but-not-processed bytes stay within the windows.
  - C{replies}: the SFTP requests in flight (READ replies being made,
    WRITE data being written), counted as L{LARGEST_REQUEST} each (what
    OpenSSH's sftp asks for once the server announces its limits).  A
    server alone keeps its own bound (C{maxInFlight}, 64): one client is
    served as before.  With several, each may have C{replies} divided by
    the number of servers, over L{LARGEST_REQUEST}, requests in flight, at
    least L{MIN_IN_FLIGHT}.  The replies written and waiting in channels
    to be sent (the connection is the bottleneck) are bounded by the same
    share: while they fill it (L{MemoryBudget.outputFull}), a channel that
    has replies waiting pauses its server until others are sent, first
    paused first resumed (one client alone is never held).  The channels
    that carry SFTP replies count (L{addReplyChannel}), and so do those
    that carry a nested SSH connection (ssh mode): the replies of its
    channels wait there while the connection to the SSH server is full; a
    carrying channel that has bytes waiting while the share is full holds
    its nested connection's channels instead of its own input (see
    L{conchshare.tunnel.channels}).
  - C{packets}: the large SFTP packets (WRITE data) being received or
    written, every server together.  A server allocates such a packet whole
    once its length is known, and holds it until the request is answered;
    with many clients those packets were most of the memory (64 clients
    each with a 256 KiB WRITE under way: 16 MiB).  A server takes the
    packet's size from this share first (L{MemoryBudget.takePacket}); when
    it is spent, the server waits, first come first served, without reading
    more (the client's data waits within its channel's window), until
    packets of others are answered.  A packet is always granted when no
    other is held, so that one larger than the share still goes through;
    and one that has waited L{PACKET_WAIT} seconds is granted too, over
    the share: clients that begin large packets and never finish them
    (holding their share) must not stop everybody else's uploads.  Under
    that attack memory is bounded as without the share (a packet per
    connection), not by it.

Channels and servers join when they start and leave when they end (weakly
held: one that is dropped without ending leaves too).

Once no channel has received anything for about L{TRIM_AFTER} seconds
after a load, the C allocator is asked to give its free memory back
(C{malloc_trim} on glibc; nothing elsewhere): the allocator keeps what a
load freed otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "MIN_IN_FLIGHT",
    "MIN_WINDOW",
    "MemoryBudget",
    "PACKET_BUDGET",
    "PACKET_WAIT",
    "TRIM_AFTER",
    "LARGEST_REQUEST",
    "WINDOW_SIZE",
    "processMemoryBudget",
    "trimMemory",
]

#: The receive window one channel alone gets (OpenSSH uses the same).
WINDOW_SIZE = 2 * 1024 * 1024
#: The smallest window a channel gets, however many there are (two packets).
MIN_WINDOW = 64 * 1024
#: The receive share of the process's budget (one channel alone still gets
#: L{WINDOW_SIZE}).
RECEIVE_BUDGET = 4 * 1024 * 1024
#: The reply share: SFTP READ replies in flight, every server together.
REPLY_BUDGET = 4 * 1024 * 1024
#: The packet share: large SFTP packets (WRITE data) received and not yet
#: answered, every server together (sixteen of 256 KiB).
PACKET_BUDGET = 4 * 1024 * 1024
#: The longest a large packet waits for the packet share (seconds) before
#: it is granted anyway.
PACKET_WAIT = 2.0
#: What one SFTP request in flight may hold: a READ reply or WRITE data of
#: the largest size the server announces.
LARGEST_REQUEST = 256 * 1024
#: Requests in flight an SFTP server keeps however many there are.
MIN_IN_FLIGHT = 1
#: Seconds without traffic after which free memory is given back.
TRIM_AFTER = 1.0


def _mallocTrim() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_malloc_trim = _mallocTrim()


def trimMemory() -> bool:
    """
    Ask the C allocator to return its free memory to the system.

    @return: whether it could be asked (glibc only).
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class MemoryBudget:
    """
    The process's bound on buffered bytes (see the module docstring).

    @ivar receive: bytes of receive window shared by every channel.
    @ivar replies: bytes of SFTP replies in flight shared by every server.
    """

    def __init__(
        self,
        receive: int = RECEIVE_BUDGET,
        replies: int = REPLY_BUDGET,
        *,
        packets: int = PACKET_BUDGET,
        maxInFlight: int = 64,
        trim: Any = trimMemory,
        trimAfter: float = TRIM_AFTER,
        clock: Any = None,
    ) -> None:
        """
        @param clock: the L{IReactorTime} that times the packets' waits
            (default: the global reactor, when one first waits).
        """
        self._clock = clock
        self.receive = receive
        self.replies = replies
        self.packets = packets
        self._packetsHeld = 0
        # Each waiter: [size, granted, the call that grants it when overdue].
        self._packetWaiters: deque[list[Any]] = deque()
        self._outputWaiters: deque[Any] = deque()
        self._replyChannels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._maxInFlight = maxInFlight
        self._trim = trim
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.trimAfter = trimAfter
        self._moved = 0
        self._seen = 0
        self._trimmedAt = 0
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- receive windows -----------------------------------------------------

    def window(self, channel: Any = None) -> int:
        """
        The receive window of C{channel} now, or of one more channel (none
        given): its share of the budget, grown no further than what the
        other channels' windows leave of it (credit already granted is not
        taken back), between L{MIN_WINDOW} and L{WINDOW_SIZE}.
        """
        joining = channel is None or channel not in self._channels
        count = len(self._channels) + joining
        window = min(WINDOW_SIZE, self.receive // max(1, count))
        current = 0 if joining else channel.localWindowSize
        if window > current:
            held = sum(c.localWindowSize for c in list(self._channels))
            window = min(window, current + self.receive - held)
        return max(MIN_WINDOW, window)

    def addChannel(self, channel: Any) -> None:
        """
        C{channel} is open and holds a window.
        """
        self._channels.add(channel)

    def removeChannel(self, channel: Any) -> None:
        """
        C{channel} ended.
        """
        self._channels.discard(channel)
        self._replyChannels.discard(channel)

    @property
    def channels(self) -> int:
        """
        How many channels share the receive budget.
        """
        return len(self._channels)

    # -- SFTP requests in flight --------------------------------------------

    def inFlight(self) -> int:
        """
        How many requests each SFTP server may have in flight now.
        """
        count = len(self._servers)
        if count <= 1:
            return self._maxInFlight
        share = self.replies // (count * LARGEST_REQUEST)
        return max(MIN_IN_FLIGHT, min(self._maxInFlight, share))

    def addServer(self, server: Any) -> None:
        """
        C{server} (with a C{setMaxInFlight(n)} method) serves requests; every
        server's bound is updated.
        """
        self._servers.add(server)
        self._updateServers()

    def removeServer(self, server: Any) -> None:
        """
        C{server} ended; the others may have more in flight.
        """
        self._servers.discard(server)
        self._updateServers()

    def _updateServers(self) -> None:
        limit = self.inFlight()
        for server in list(self._servers):
            server.setMaxInFlight(limit)

    # -- replies waiting to be sent -------------------------------------------

    def addReplyChannel(self, channel: Any) -> None:
        """
        C{channel} (added with L{addChannel}, with a C{pendingOutput}
        attribute and an C{outputRoom()} method) carries replies, or a
        nested SSH connection whose channels carry them: what waits in it
        to be sent counts in the reply share.
        """
        self._replyChannels.add(channel)

    def _queuedReplies(self) -> int:
        # One client alone is never held: one channel carries replies, or
        # one SFTP server is served (in ssh mode its channel and the
        # channel that carries its nested connection both count).
        if len(self._replyChannels) <= 1 or len(self._servers) == 1:
            return 0
        queued: int = sum(c.pendingOutput for c in list(self._replyChannels))
        return queued

    def outputFull(self) -> bool:
        """
        Whether the bytes waiting to be sent in the channels that carry
        replies (C{pendingOutput}) fill the reply share; never with one
        such channel, nor with one SFTP server.
        """
        return self._queuedReplies() + LARGEST_REQUEST > self.replies

    def waitForOutput(self, channel: Any) -> None:
        """
        C{channel} holds its producer until the replies waiting elsewhere
        leave room: then its C{outputRoom()} is called (see L{outputSent}).
        """
        if channel not in self._outputWaiters:
            self._outputWaiters.append(channel)

    def outputSent(self) -> None:
        """
        Bytes waiting in a channel were sent (or dropped): call
        C{outputRoom()} of the channels that waited, first come first, as
        many as the room left fits replies of L{LARGEST_REQUEST}.
        """
        waiters = self._outputWaiters
        if not waiters:
            return
        queued = self._queuedReplies()
        room = max(1, (self.replies - queued) // LARGEST_REQUEST) if queued < self.replies else 0
        while waiters and room:
            room -= 1
            waiters.popleft().outputRoom()

    # -- large packets --------------------------------------------------------

    @property
    def packetsHeld(self) -> int:
        """
        The bytes of large packets granted and not yet given back.
        """
        return self._packetsHeld

    def takePacket(self, size: int, granted: Callable[[], object]) -> bool:
        """
        Take C{size} bytes of the packet share for one packet.

        @param granted: called (once, with no arguments) when the bytes are
            granted later, if they are not now.
        @return: whether they are granted now.  If not, C{granted} waits
            behind every earlier waiter until enough bytes are given back
            (L{releasePacket}), or until L{cancelPacket}.
        """
        if self._packetsHeld == 0 or (
            not self._packetWaiters and self._packetsHeld + size <= self.packets
        ):
            self._packetsHeld += size
            return True
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        entry: list[Any] = [size, granted, None]
        entry[2] = self._clock.callLater(PACKET_WAIT, self._overdue, entry)
        self._packetWaiters.append(entry)
        return False

    def _overdue(self, entry: list[Any]) -> None:
        # entry waited PACKET_WAIT: granted over the share.
        try:
            self._packetWaiters.remove(entry)
        except ValueError:
            return
        size, granted, _ = entry
        self._packetsHeld += size
        granted()

    def cancelPacket(self, granted: Callable[[], object]) -> None:
        """
        Stop waiting: C{granted} (given to L{takePacket}) will not be called.
        """
        for entry in self._packetWaiters:
            if entry[1] == granted:
                self._packetWaiters.remove(entry)
                if entry[2].active():
                    entry[2].cancel()
                break
        self._grantWaiting()

    def releasePacket(self, size: int) -> None:
        """
        Give back C{size} bytes taken by L{takePacket}; waiters they make
        room for are granted, in the order they came.
        """
        self._packetsHeld = max(0, self._packetsHeld - size)
        self._grantWaiting()

    def _grantWaiting(self) -> None:
        waiters = self._packetWaiters
        while waiters and (
            self._packetsHeld == 0 or self._packetsHeld + waiters[0][0] <= self.packets
        ):
            size, granted, overdue = waiters.popleft()
            if overdue.active():
                overdue.cancel()
            self._packetsHeld += size
            granted()

    # -- giving memory back -------------------------------------------------

    def touch(self) -> None:
        """
        Bytes moved: once nothing moves for L{TRIM_AFTER} seconds, free
        memory is given back (checked by a daemon thread, started on the
        first call, so that no timer of the reactor is involved).
        """
        self._moved += 1
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="conchshare-trim", daemon=True
            )
            self._watcher.start()

    def checkIdle(self) -> bool:
        """
        One check of the watcher: if bytes moved before the previous check
        and none since, give memory back.

        @return: whether memory was given back now.
        """
        moved = self._moved
        trim = moved == self._seen and moved != self._trimmedAt
        self._seen = moved
        if trim:
            self._trimmedAt = moved
            self._trim()
        return trim

    def _watch(self) -> None:
        while not self._stopped.wait(self.trimAfter):
            self.checkIdle()

    def stop(self) -> None:
        """
        End the watcher thread, if it runs.
        """
        self._stopped.set()


_processMemoryBudget = MemoryBudget()


def processMemoryBudget() -> MemoryBudget:
    """
    The budget every channel and SFTP server of this process shares unless
    given another.
    """
    return _processMemoryBudget
