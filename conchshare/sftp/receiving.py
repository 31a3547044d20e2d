"""
How the SFTP core receives packets that span feeds, and what large ones
cost: the part of L{conchshare.sftp.core.SFTPServerCore} (its base class)
that assembles a packet begun in one feed (or read straight into it:
L{PacketReceiving.receiveBuffer}) and takes a large packet's memory from
the budget before allocating it.

The state it works on is the core's, and its rules are written at the top
of L{conchshare.sftp.core} (C{_buffer}, C{_head}, C{_headFill},
C{_headCharge}, C{_awaitingMemory}).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from conchshare.sftp import wire

if TYPE_CHECKING:
    from conchshare.budget import MemoryBudget

__all__ = ["BULK", "PacketReceiving", "U32"]

#: A packet this long carries data (a WRITE), not a metadata request.
BULK = 16 * 1024

#: A packet's length prefix.
U32 = struct.Struct(">I")


class PacketReceiving:
    """
    Receiving packets across feeds (see the module docstring).  A base class
    of L{conchshare.sftp.core.SFTPServerCore}, which sets the state below
    and provides the dispatching methods.
    """

    _buffer: bytearray
    _head: bytearray | None
    _headFill: int
    _memory: MemoryBudget | None
    _headCharge: int
    _awaitingMemory: bool
    _waitingFor: int
    _processing: bool
    _closing: bool
    fedBulk: bool

    def _process(
        self,
        data: bytes | bytearray | memoryview | None = None,
        *,
        head: bytearray | None = None,
    ) -> None:
        raise NotImplementedError()

    def _dispatching(self) -> bool:
        raise NotImplementedError()

    def _updateReading(self) -> None:
        raise NotImplementedError()

    def receiveBuffer(self) -> memoryview | None:
        """
        Where the rest of the packet being received goes, to read it there
        directly (no copy); then call L{receivedInto}.  Release the view
        first.

        @return: a writable view, or L{None} when no packet is part way
            received (feed L{dataReceived} instead).
        """
        if self._head is None or self._processing or self._closing:
            return None
        return memoryview(self._head)[self._headFill :]

    def receivedInto(self, count: int) -> None:
        """
        C{count} bytes were written at the start of the view that
        L{receiveBuffer} gave (and released since).
        """
        if self._head is None or self._closing:
            return
        self.fedBulk = False
        self._headFill += count
        self._headReceived(b"")

    def _headReceived(self, rest: bytes | memoryview) -> None:
        # Bytes were added to the packet being received; rest follows it.
        head = self._head
        assert head is not None
        if self._headFill < len(head):
            return
        self._head = None
        if self._dispatching():
            self._process(rest, head=head)
        else:
            self._buffer = head
            self._buffer += rest
            self._process()

    def _unhead(self) -> None:
        # The packet being received goes back to the buffer (a feed from a
        # callback, while packets are dispatched).
        if self._head is not None:
            self._buffer[:0] = memoryview(self._head)[: self._headFill]
            self._head = None

    def _completeHead(self, data: bytes | bytearray | memoryview) -> None:
        # The buffer holds the start of a packet (what the last feed left
        # over): complete it with the first bytes of data, dispatch it as
        # it is (no copy), then the rest of data where it is.  Appending
        # all of data to the buffer instead copied every byte of bulk
        # uploads twice more (into the buffer, then out of it).
        buffer = self._buffer
        with memoryview(data) as view:
            taken = 0
            if self._dispatching() and not self._awaitingMemory:
                if len(buffer) < 4:
                    taken = min(4 - len(buffer), len(view))
                    buffer += view[:taken]
                if len(buffer) >= 4:
                    (length,) = U32.unpack_from(buffer)
                    missing = 4 + length - len(buffer)
                    if 0 < missing and length <= wire.MAX_PACKET_LENGTH:
                        count = min(missing, len(view) - taken)
                        buffer += view[taken : taken + count]
                        taken += count
                    if length <= wire.MAX_PACKET_LENGTH:
                        if len(buffer) == 4 + length:
                            # Exactly one whole packet: dispatched from here.
                            self._buffer = bytearray()
                            self._process(view[taken:], head=buffer)
                            return
                        if taken == len(view):
                            # Still short of a whole packet: nothing to
                            # dispatch (and the buffer stays as it is).
                            self._updateReading()
                            return
            if taken < len(view):
                buffer += view[taken:]
        self._process()

    def _reserve(self, size: int) -> bool:
        # Whether a packet of size bytes (prefix included) may be allocated
        # now; if not, wait for the memory budget (reading pauses).
        if self._memory is None or size - 4 < BULK or self._headCharge >= size:
            return True
        if self._awaitingMemory:
            return False
        if self._headCharge:
            self._memory.releasePacket(self._headCharge)
            self._headCharge = 0
        if self._memory.takePacket(size, self._memoryGranted):
            self._headCharge = size
            return True
        self._awaitingMemory = True
        self._waitingFor = size
        return False

    def _memoryGranted(self) -> None:
        # The budget took the bytes the packet in the buffer waited for.
        self._awaitingMemory = False
        self._headCharge = self._waitingFor
        if self._closing:
            self._releaseMemory()
            return
        self._process()
        self._updateReading()

    def _releaseWhenAnswered(self, result: object, charge: int) -> None:
        memory = self._memory
        assert memory is not None  # a charge was taken from it
        if isinstance(result, Deferred) and not result.called:

            def release(value: object) -> object:
                memory.releasePacket(charge)
                return value

            result.addBoth(release)
        else:
            memory.releasePacket(charge)

    def _releaseMemory(self) -> None:
        # The connection ends: give back what the packet being received
        # holds, and stop waiting.
        if self._memory is None:
            return
        if self._awaitingMemory:
            self._awaitingMemory = False
            self._memory.cancelPacket(self._memoryGranted)
        if self._headCharge:
            charge, self._headCharge = self._headCharge, 0
            self._memory.releasePacket(charge)
