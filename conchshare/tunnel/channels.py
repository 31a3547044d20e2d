"""
Channels that carry a protocol, with receive-side backpressure and pausing.

State rules (the whole module follows them):
  - A channel is I{paused} while any reason is set: C{"group"} (the
    L{ChannelGroup} paused everything), C{"protocol"} (our protocol called
    C{pauseProducing} on its transport, the channel), C{"output"} (more than
    L{OUTPUT_HIGH} bytes wait to be sent), C{"transport"} (the TCP
    connection's send buffer is full) or C{"carrier"} (the channel that
    carries our nested SSH connection cannot send now).
  - A channel that carries a nested SSH connection (L{carriesConnection})
    holds that connection (its L{GroupPressure}: every channel of it
    gets C{"carrier"}) while it is paused for C{"group"}, C{"output"} or
    C{"transport"}, and while the replies waiting in all channels fill the
    memory budget's reply share and bytes wait in it; it keeps taking
    input meanwhile, since the window credit of the nested channels
    arrives that way.
  - While paused, received bytes are kept in order, not handed to the
    protocol, and no window credit is granted: the peer can send at most one
    window more.  Credit is sent only for bytes the protocol has consumed.
  - The C{"group"} and C{"transport"} reasons hold our writes; they are
    kept in order and sent on resume (more than L{OUTPUT_HIGH} of them
    pause the protocol's output: no new request is dispatched).  Writes are never sent beyond the peer's window either.
  - Resume hands over the kept bytes, in order, then grants the credit.

Conch's L{SSHConnection} re-opens the receive window before C{dataReceived}
runs; a connection that uses these channels must mix in
L{ChannelServingMixin} so that the channel alone decides when to grant.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.conch.error import ConchError
from twisted.conch.ssh import common
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.connection import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_OPEN_CONFIRMATION,
    MSG_CHANNEL_OPEN_FAILURE,
    OPEN_CONNECT_FAILED,
    SSHConnection,
)
from twisted.internet import interfaces
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from conchshare.budget import WINDOW_SIZE as _WINDOW_SIZE
from conchshare.budget import MemoryBudget, processMemoryBudget

#: Receive window of a channel alone (OpenSSH uses the same; 8 MiB is
#: slower).  With more channels open, each gets its share of the process's
#: L{MemoryBudget} (see L{conchshare.budget}).
WINDOW_SIZE = _WINDOW_SIZE
#: Largest data packet we accept.
MAX_PACKET = 32768
#: Pending output above which the channel stops taking input ("output" pause).
OUTPUT_HIGH = 1024 * 1024
#: Pending output below which it takes input again.
OUTPUT_LOW = 256 * 1024

_MSG_CHANNEL_DATA = MSG_CHANNEL_DATA
_packTwo = struct.Struct(">2L").pack
_unpackTwo = struct.Struct(">2L").unpack_from

GROUP = "group"
PROTOCOL = "protocol"
OUTPUT = "output"
TRANSPORT = "transport"
CARRIER = "carrier"
#: The reasons that pause the protocol's producer too (it makes no more
#: output), not only our delivery of received bytes.
_PRODUCER = frozenset((GROUP, OUTPUT, TRANSPORT, CARRIER))
#: The reasons that hold our writes too: a paused group, and a full TCP
#: send buffer (what would go there waits here, where it counts as
#: pending output and stops the protocol from making more).
_HOLDING = frozenset((GROUP, TRANSPORT))


class ChannelServingMixin:
    """
    Mix into an L{SSHConnection} subclass (before it) that serves
    L{ForwardedChannel}s:
      - window credit of those channels is left to the channel (Conch grants
        it before the data is even handed over, which defeats backpressure);
      - a refused channel open is answered with OPEN_FAILURE without logging
        a traceback (a peer asking for what we do not offer is no error);
      - L{channelAccepted} is called once an accepted channel has its id.
    """

    _log: Logger
    transport: Any
    localChannelID: int
    channels: dict[int, Any]
    channelsToRemoteChannel: dict[Any, int]
    localToRemoteChannel: dict[int, int]

    def adjustWindow(self, channel: SSHChannel, bytesToAdd: int) -> None:
        if isinstance(channel, ForwardedChannel):
            return
        super().adjustWindow(channel, bytesToAdd)  # type: ignore[misc]

    def channelAccepted(self, channel: Any) -> None:
        """
        Called after a channel the peer opened was confirmed.
        """

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        """
        As Conch's (RFC 4254 5.2), with one copy of the data instead of
        three: this runs for every packet of every channel.
        """
        localChannel, dataLength = _unpackTwo(packet)
        channel = self.channels[localChannel]
        if dataLength > channel.localWindowLeft or dataLength > channel.localMaxPacket:
            self._log.error("too much data")
            self.sendClose(channel)  # type: ignore[attr-defined]
            return
        data = packet[8 : 8 + dataLength]
        channel.localWindowLeft -= dataLength
        if channel.localWindowLeft < channel.localWindowSize // 2:
            self.adjustWindow(channel, channel.localWindowSize - channel.localWindowLeft)
        channel.dataReceived(data)

    def sendData(self, channel: Any, data: bytes) -> None:
        """
        As Conch's, with one copy of the data instead of two.
        """
        if channel.localClosed:
            return
        self.transport.sendPacket(
            _MSG_CHANNEL_DATA,
            _packTwo(self.channelsToRemoteChannel[channel], len(data)) + data,
        )

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        """
        As Conch's (RFC 4254 5.1), with the differences above.
        """
        channelType, rest = common.getNS(packet)
        senderChannel, windowSize, maxPacket = struct.unpack(">3L", rest[:12])
        packet = rest[12:]
        try:
            channel = self.getChannel(channelType, windowSize, maxPacket, packet)  # type: ignore[attr-defined]
        except Exception as e:
            if isinstance(e, ConchError) and len(e.args) == 2:
                textualInfo, reason = e.args
            else:
                self._log.failure("could not serve a {type!r} channel", type=channelType)
                textualInfo, reason = "internal error", OPEN_CONNECT_FAILED
            if isinstance(textualInfo, int):  # Conch is not consistent (#3657)
                textualInfo, reason = reason, textualInfo
            if isinstance(textualInfo, bytes):
                textualInfo = textualInfo.decode("utf-8", "replace")
            self._log.info("refused {type!r} channel: {why}", type=channelType, why=textualInfo)
            self.transport.sendPacket(
                MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", senderChannel, reason)
                + common.NS(str(textualInfo).encode("utf-8"))
                + common.NS(b""),
            )
            return
        localChannel = self.localChannelID
        self.localChannelID += 1
        channel.id = localChannel
        self.channels[localChannel] = channel
        self.channelsToRemoteChannel[channel] = senderChannel
        self.localToRemoteChannel[localChannel] = senderChannel
        self.transport.sendPacket(
            MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(
                ">4L", senderChannel, localChannel, channel.localWindowSize, channel.localMaxPacket
            )
            + channel.specificData,
        )
        channel.channelOpen(packet)
        self.channelAccepted(channel)


@implementer(interfaces.IPushProducer, interfaces.IConsumer)
class ForwardedChannel(SSHChannel):
    """
    A channel that is the transport of a protocol: C{forwarded-tcpip},
    C{forwarded-streamlocal@openssh.com}, the nested server's session
    channel and exec channels all use it.

    @ivar bytesIn: bytes received from the peer.
    @ivar bytesOut: bytes written toward the peer (sent or still queued).
    @ivar protocol: the attached protocol, or L{None} before L{attach}.
    """

    _log = Logger()
    name = b"forwarded-tcpip"

    def __init__(
        self,
        protocol: interfaces.IProtocol | None = None,
        *,
        localWindow: int | None = None,
        localMaxPacket: int = MAX_PACKET,
        remoteWindow: int = 0,
        remoteMaxPacket: int = 0,
        conn: SSHConnection | None = None,
        data: bytes | None = None,
        avatar: Any = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        if budget is None:
            budget = getattr(conn, "memoryBudget", None) or processMemoryBudget()
        self._budget = budget
        if localWindow is None:
            localWindow = budget.window()
        budget.addChannel(self)
        super().__init__(
            localWindow=localWindow,
            localMaxPacket=localMaxPacket,
            remoteWindow=remoteWindow,
            remoteMaxPacket=remoteMaxPacket,
            conn=conn,
            data=data,
            avatar=avatar,
        )
        self.protocol: interfaces.IProtocol | None = None
        self.bytesIn = 0
        self.bytesOut = 0
        self._reasons: set[str] = set()
        self._kept: deque[bytes] = deque()
        self._keptBytes = 0
        self._outgoing: deque[bytes] = deque()
        #: How much of C{_outgoing[0]} was already sent.
        self._outgoingStart = 0
        self._outgoingBytes = 0
        self._delivering = False
        self._eofPending = False
        self._isOpen = False
        self._isClosed = False
        self._producer: interfaces.IPushProducer | None = None
        self._producerPaused = False
        self._closeObservers: list[Callable[[ForwardedChannel], None]] = []
        self._pendingProtocol = protocol
        self._deliveryCall: Any = None
        self._flushCall: Any = None
        self._roomCall: Any = None
        self._carriesReplies = False
        self._carrier = False
        self._roomWait = False

    # -- state -------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """
        Whether received bytes are being kept back (any pause reason set).
        """
        return bool(self._reasons)

    @property
    def keptBytes(self) -> int:
        """
        How many received bytes wait for the protocol.
        """
        return self._keptBytes

    @property
    def pendingOutput(self) -> int:
        """
        How many written bytes wait for the peer's window (or for resume).
        """
        return self._outgoingBytes

    @property
    def isClosed(self) -> bool:
        """
        Whether the channel has closed on both sides (or the connection is gone).
        """
        return self._isClosed

    def notifyOnClose(self, observer: Callable[[ForwardedChannel], None]) -> None:
        """
        Call C{observer(channel)} once, when the channel has closed.
        """
        if self._isClosed:
            observer(self)
        else:
            self._closeObservers.append(observer)

    # -- attaching a protocol ---------------------------------------------

    def attach(self, protocol: interfaces.IProtocol) -> None:
        """
        Make C{protocol} the receiver of this channel's bytes; the channel is
        its transport.  Bytes received before are handed over now.
        """
        self.protocol = protocol
        protocol.makeConnection(self)
        self._deliver()
        self._maybeGrant()

    def channelOpen(self, specificData: bytes) -> None:
        self._isOpen = True
        if self._pendingProtocol is not None:
            protocol, self._pendingProtocol = self._pendingProtocol, None
            self.attach(protocol)

    # -- receiving ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.bytesIn += len(data)
        self._budget.touch()
        self._kept.append(data)
        self._keptBytes += len(data)
        self._deliver()
        self._maybeGrant()

    def eofReceived(self) -> None:
        self._eofPending = True
        self._deliver()

    def _deliver(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._kept and not self._reasons and self.protocol is not None:
                data = self._kept.popleft()
                self._keptBytes -= len(data)
                self.protocol.dataReceived(data)
        finally:
            self._delivering = False
        if self._eofPending and not self._kept and self.protocol is not None:
            self._eofPending = False
            half = interfaces.IHalfCloseableProtocol(self.protocol, None)
            if half is not None:
                half.readConnectionLost()
            else:
                self.loseConnection()

    def _maybeGrant(self) -> None:
        """
        Send window credit for the bytes the protocol has consumed, once
        they amount to half a window, and only while not paused.  The
        window is this channel's share of the budget now: it shrinks as
        channels open (credit already granted is never taken back) and
        grows as they close.
        """
        if self._reasons or self.localClosed or self.conn is None:
            return
        if self.id is None or self not in self.conn.channelsToRemoteChannel:
            return
        window = self._budget.window(self)
        grant = window - self.localWindowLeft - self._keptBytes
        if grant >= window // 2:
            self.localWindowSize = window
            SSHConnection.adjustWindow(self.conn, self, grant)

    # -- pausing -----------------------------------------------------------

    def pause(self, reason: str) -> bool:
        """
        Set a pause reason.

        @return: whether the channel was not paused for this reason before.
        """
        if reason in self._reasons or self._isClosed:
            return False
        self._reasons.add(reason)
        if reason in _PRODUCER:
            self._pauseProducer()
        return True

    def resume(self, reason: str) -> bool:
        """
        Clear a pause reason; if none is left, hand over kept bytes and grant
        the window credit.  Held writes are sent once C{"group"} is cleared.

        @return: whether the channel was paused for this reason.
        """
        if reason not in self._reasons:
            return False
        self._reasons.discard(reason)
        if reason in _HOLDING:
            self._flush()
        if not (self._reasons & _PRODUCER or self._roomWait):
            self._resumeProducer()
        if not self._isClosed and not self._reasons:
            # Never hand bytes over from inside resumeProducing or write:
            # the protocol may be in the middle of its own dataReceived (as
            # Twisted's TCP transport, deliver on a later reactor turn).
            self._scheduleDelivery()
        return True

    def _scheduleDelivery(self) -> None:
        if not self._kept and not self._eofPending:
            self._maybeGrant()  # nothing to hand over: no re-entry risk
            return
        if self._deliveryCall is not None:
            return
        self._deliveryCall = self._reactor().callLater(0, self._scheduledDelivery)

    def _scheduledDelivery(self) -> None:
        self._deliveryCall = None
        if not self._isClosed:
            self._deliver()
            self._maybeGrant()

    def _reactor(self) -> Any:
        reactor = getattr(self.conn, "_reactor", None)
        if reactor is None:
            from twisted.internet import reactor
        return reactor

    def pauseProducing(self) -> None:
        """
        The protocol asks for no more bytes for now (SFTP backpressure).
        """
        self.pause(PROTOCOL)

    def resumeProducing(self) -> None:
        """
        The protocol takes bytes again.
        """
        self.resume(PROTOCOL)

    def stopProducing(self) -> None:
        """
        Close the channel.
        """
        self.loseConnection()

    # -- the protocol's producer (IConsumer) -------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._producerPaused = False
        if self._reasons & _PRODUCER or self._roomWait:
            self._pauseProducer()
        elif not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producerPaused = False

    def _pauseProducer(self) -> None:
        if self._producer is not None and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _resumeProducer(self) -> None:
        if self._producer is not None and self._producerPaused:
            self._producerPaused = False
            self._producer.resumeProducing()

    # -- sending -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Queue C{data} for the peer.  Bytes are sent as a stream cut into
        full packets.  A write smaller than a packet is a whole message
        (an SFTP reply batch, a nested SSH packet): it goes out at once,
        with whatever waits before it, since a request/response peer waits
        for it.  The partial tail of a bigger write goes out at the end of
        the reactor turn (or at once, with the next write), so that bulk
        writes share full packets instead of adding a small one each.
        """
        if not data or self.localClosed or self._isClosed:
            return
        n = len(data)
        self.bytesOut += n
        self._outgoing.append(bytes(data))
        self._outgoingBytes += n
        self._flush(final=n < (self.remoteMaxPacket or MAX_PACKET))
        if self._outgoing and self._flushCall is None and not self._reasons & _HOLDING:
            self._flushCall = self._reactor().callLater(0, self._scheduledFlush)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        self._flush()

    def _scheduledFlush(self) -> None:
        self._flushCall = None
        self._flush()

    def _take(self, n: int) -> bytes:
        """
        Remove and return the first C{n} queued bytes.  Only those C{n}
        bytes are copied: the rest of a queued write stays where it is (its
        sent part is skipped by C{_outgoingStart}), so that a reply of any
        size is taken in linear time.
        """
        first = self._outgoing[0]
        start = self._outgoingStart
        end = start + n
        size = len(first)
        if end <= size:
            if end == size:
                self._outgoing.popleft()
                self._outgoingStart = 0
                if start:
                    first = first[start:]
            else:
                self._outgoingStart = end
                first = first[start:end]
            self._outgoingBytes -= n
            return first
        pieces = [first[start:] if start else first]
        self._outgoing.popleft()
        need = n - (size - start)
        while need:
            chunk = self._outgoing.popleft()
            if len(chunk) > need:
                self._outgoing.appendleft(chunk)
                self._outgoingStart = need
                chunk = chunk[:need]
            else:
                self._outgoingStart = 0
            pieces.append(chunk)
            need -= len(chunk)
        self._outgoingBytes -= n
        return b"".join(pieces)

    def _flush(self, final: bool = True) -> None:
        """
        Send queued bytes within the peer's window, in full packets; with
        C{final}, the last partial packet too.
        """
        if self._reasons & _HOLDING or self.conn is None or self.localClosed:
            return
        if self.id is None or self not in self.conn.channelsToRemoteChannel:
            return
        send = self.conn.sendData
        step = self.remoteMaxPacket or MAX_PACKET
        sent = False
        while self._outgoing and self.remoteWindowLeft > 0:
            n = min(step, self.remoteWindowLeft, self._outgoingBytes)
            if n < step and not final and n == self._outgoingBytes:
                break  # a partial packet: wait for more bytes this turn
            self.remoteWindowLeft -= n
            send(self, self._take(n))
            sent = True
        if self._outgoingBytes > OUTPUT_HIGH:
            self.pause(OUTPUT)
        elif self._carriesReplies and self._budget.outputFull():
            # The replies of every channel together fill the budget: make
            # no more here until others are sent.
            if self._carrier:
                # Hold the nested connection, not our input: the nested
                # channels' window credit comes that way.
                if self._outgoingBytes and not self._roomWait:
                    self._roomWait = True
                    self._pauseProducer()
                    self._budget.waitForOutput(self)
            elif self._outgoingBytes or OUTPUT in self._reasons:
                self.pause(OUTPUT)
                self._budget.waitForOutput(self)
        elif self._outgoingBytes < OUTPUT_LOW and OUTPUT in self._reasons:
            self.resume(OUTPUT)
        if sent:
            self._budget.outputSent()
        if self.closing and not self._outgoing:
            self.conn.sendClose(self)

    def carriesReplies(self) -> None:
        """
        The attached protocol writes replies (an SFTP server): what waits
        here to be sent counts in the budget's reply share, and while the
        replies of all channels fill it, the protocol is paused (see
        L{conchshare.budget}).
        """
        self._carriesReplies = True
        self._budget.addReplyChannel(self)

    def carriesConnection(self) -> None:
        """
        The attached protocol is a nested SSH connection whose channels
        carry replies: what waits here to be sent counts in the budget's
        reply share too, and the connection (the producer registered here,
        a L{GroupPressure}) is held while this channel cannot send or
        while the replies of all channels fill the share.
        """
        self._carrier = True
        self.carriesReplies()

    def outputRoom(self) -> None:
        """
        The replies waiting in all channels left room (the budget calls
        this for a channel that waited): resume the producer on a later
        reactor turn, if this channel's own bytes allow.
        """
        waiting = OUTPUT in self._reasons or self._roomWait
        if waiting and self._roomCall is None and not self._isClosed:
            self._roomCall = self._reactor().callLater(0, self._scheduledRoom)

    def _scheduledRoom(self) -> None:
        self._roomCall = None
        if self._roomWait:
            self._roomWait = False
            if not self._reasons & _PRODUCER:
                self._resumeProducer()
        if self._outgoingBytes < OUTPUT_LOW and OUTPUT in self._reasons:
            self.resume(OUTPUT)

    def loseConnection(self) -> None:
        """
        Close the channel once written bytes are sent (held writes of a
        paused channel wait for resume; use L{abort} to close now).
        """
        self.closing = 1
        if self.conn is None or self.id is None:
            return
        self._flush()
        if not self._outgoing and self in self.conn.channelsToRemoteChannel:
            self.conn.sendClose(self)

    def abort(self) -> None:
        """
        Close the channel now, dropping kept and held bytes.
        """
        self.closing = 1
        self._outgoing.clear()
        self._outgoingStart = 0
        self._outgoingBytes = 0
        self._kept.clear()
        self._keptBytes = 0
        if self.conn is not None and self in self.conn.channelsToRemoteChannel:
            self.conn.sendClose(self)

    # -- closing -----------------------------------------------------------

    def closeReceived(self) -> None:
        # The peer reads nothing more and grants no more window: whatever
        # waits to be sent (or is held by a pause) can never go; close now.
        self._eofPending = False
        self.abort()

    def openFailed(self, reason: Any) -> None:
        self._closed(Failure(ConnectionLost(str(reason))))

    def closed(self) -> None:
        self._closed(Failure(ConnectionDone()))

    def _closed(self, reason: Failure) -> None:
        if self._isClosed:
            return
        self._isClosed = True
        self._budget.removeChannel(self)
        self._budget.touch()  # what it held is freed now: give it back soon
        for call in (self._deliveryCall, self._flushCall, self._roomCall):
            if call is not None and call.active():
                call.cancel()
        self._deliveryCall = self._flushCall = self._roomCall = None
        self._kept.clear()
        self._keptBytes = 0
        self._outgoing.clear()
        self._outgoingStart = 0
        self._outgoingBytes = 0
        self._budget.outputSent()
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            try:
                protocol.connectionLost(reason)
            except Exception:
                self._log.failure("protocol failed in connectionLost")
        observers, self._closeObservers = self._closeObservers, []
        for observer in observers:
            try:
                observer(self)
            except Exception:
                self._log.failure("channel close observer failed")


@implementer(interfaces.IPushProducer)
class GroupPressure:
    """
    The producer registered with what carries a connection's channels, for
    the time it cannot send: every channel of the group is paused for
    C{reason} meanwhile.  Two uses:
      - the TCP transport to the SSH server, C{"transport"}: while its send
        buffer is full, every channel stops taking requests until it drains;
      - a channel that carries a nested SSH connection (see
        L{ForwardedChannel.carriesConnection}), C{"carrier"}: while it
        cannot send, the protocols of the nested connection's channels make
        no more replies.  Replies already made still go to the carrying
        channel, where they count in the memory budget's reply share.
    """

    def __init__(self, group: ChannelGroup, reason: str) -> None:
        self.group = group
        self.reason = reason

    def pauseProducing(self) -> None:
        self.group.setReason(self.reason, True)

    def resumeProducing(self) -> None:
        self.group.setReason(self.reason, False)

    def stopProducing(self) -> None:
        pass


class ChannelGroup:
    """
    Every live channel of a connection, paused and resumed together.
    Channels added while the group is paused start paused.
    """

    def __init__(self) -> None:
        self._channels: set[ForwardedChannel] = set()
        self._extraReasons: set[str] = set()
        self.paused = False

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Any:
        return iter(list(self._channels))

    def add(self, channel: ForwardedChannel) -> None:
        """
        Add C{channel}; it leaves the group when it closes.
        """
        if channel.isClosed:
            return
        self._channels.add(channel)
        channel.notifyOnClose(self._channels.discard)
        if self.paused:
            channel.pause(GROUP)
        for reason in self._extraReasons:
            channel.pause(reason)

    def pause(self) -> int:
        """
        Pause every live channel and every channel added from now on.

        @return: how many channels were paused by this call.
        """
        self.paused = True
        return sum(1 for c in list(self._channels) if c.pause(GROUP))

    def resume(self) -> int:
        """
        Resume every channel paused by L{pause}.

        @return: how many channels were resumed.
        """
        self.paused = False
        return sum(1 for c in list(self._channels) if c.resume(GROUP))

    def setReason(self, reason: str, on: bool) -> None:
        """
        Set or clear another pause reason (e.g. C{"transport"}) on every
        channel, and on channels added while it is set.
        """
        if on:
            self._extraReasons.add(reason)
        else:
            self._extraReasons.discard(reason)
        for c in list(self._channels):
            if on:
                c.pause(reason)
            else:
                c.resume(reason)
            if (reason in self._extraReasons) != on:
                break  # set again meanwhile (a resumed channel filled the buffer)
