"""
The SFTP v3 server as sans-IO code: bytes in, replies out.

L{SFTPServerCore} parses requests from the bytes it is fed, calls the avatar
(an L{ISFTPServer}, and L{IShareSFTPServer} for OpenSSH's extensions) and
writes each reply through a callable when the avatar's answer is ready.  It
does no I/O itself; L{conchshare.sftp.protocol} plugs it into Twisted.

State and its rules, all kept on the core:
  - C{_buffer}: received bytes not yet dispatched.  Packets are dispatched
    in order, without waiting for earlier requests to be answered.
  - C{_head}, C{_headFill}: instead, when a feed ended part way into a
    packet (and nothing else is buffered), that packet allocated whole and
    filled as its rest comes, by feeds or read straight into it
    (L{SFTPServerCore.receiveBuffer}); dispatched as it is, not copied.
    Data is copied out of a feed at most once.
  - C{_headCharge}, C{_awaitingMemory}: with a memory budget, a large
    packet (WRITE data) is allocated only once its size is taken from the
    budget's packet share (L{conchshare.budget.MemoryBudget.takePacket}),
    and given back when its request is answered.  While the budget has no
    room, the start of the packet stays in C{_buffer} and reading is
    paused.
  - C{_initialised}: INIT was answered.  Any other packet before it, a second
    INIT, or a packet longer than L{wire.MAX_PACKET_LENGTH} disconnects.
  - C{_files}, C{_dirs}: open handles.  A handle leaves its table when CLOSE
    arrives, so later requests on it get "No such handle".
  - C{_inFlight}: requests dispatched and not yet answered.  At
    C{maxInFlight}, or while the output is paused, no packet is dispatched and
    reading is paused; reading resumes at half the bound.  The buffer thus
    holds at most what the transport delivered before it was paused.
  - Every request with a readable request id gets exactly one reply; every
    exception becomes a status in one place (L{_failed}, through
    L{statusForException}).
  - C{_outbox}: replies not yet written.  Replies are held back (corked)
    while a feed is dispatched and while the engine delivers a batch of
    results (the C{delivery} given), then written at once; never more
    than L{_CORK_LIMIT} bytes are held.
  - After the connection is lost nothing is written, and every handle, those
    that in-flight OPEN and OPENDIR requests create included, is closed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.sftp import wire
from conchshare.sftp.budget import HandleBudget, processBudget
from conchshare.sftp.engine import Delivery
from conchshare.sftp.errors import statusForException
from conchshare.sftp.extensions import (
    OK_MESSAGE,
    ExtensionRequests,
    asBytes,
    noSuchHandle,
    ourExtensions,
)
from conchshare.sftp.handles import HandleRequests, OpenDirectory
from conchshare.sftp.receiving import BULK, U32, PacketReceiving

if TYPE_CHECKING:
    from conchshare.budget import MemoryBudget

#: Default bound on requests in flight per client.
MAX_IN_FLIGHT = 64
#: Default bound on open handles per client (the process-wide budget may
#: allow fewer: see L{conchshare.sftp.budget}).
MAX_OPEN_HANDLES = 1024
# A transport that keeps delivering while paused must not make us buffer
# without bound.
_MAX_BUFFERED = 64 * wire.MAX_PACKET_LENGTH

_REPLY_HEADER = struct.Struct(">IBI")
# Replies held back to be written together, at most (bytes).
_CORK_LIMIT = 64 * 1024
# The most common replies, framed ahead: STATUS OK, and ATTRS with every
# field (what a stat gives); anything else goes through L{wire}.
_OK_BODY = wire.u32(wire.FX_OK) + wire.string(OK_MESSAGE) + wire.string(b"")
_OK_LENGTH = len(_OK_BODY) + 5
_ALL_ATTRS_KEYS = frozenset(("size", "uid", "gid", "permissions", "atime", "mtime"))


def _okReply(_: object, requestId: int) -> bytes:
    return _REPLY_HEADER.pack(_OK_LENGTH, wire.FXP_STATUS, requestId) + _OK_BODY


def _encodeAttrs(attrs: Any) -> bytes:
    if attrs.keys() == _ALL_ATTRS_KEYS:
        try:
            return wire.ALL_ATTRS_BODY.pack(
                wire.ALL_ATTRS,
                attrs["size"],
                attrs["uid"],
                attrs["gid"],
                attrs["permissions"],
                attrs["atime"],
                attrs["mtime"],
            )
        except struct.error:
            pass  # out of range, or not an int: wire masks and checks
    return wire.encodeAttrs(attrs)


def _attrsReply(attrs: Any, requestId: int) -> bytes:
    body = _encodeAttrs(attrs)
    return _REPLY_HEADER.pack(len(body) + 5, wire.FXP_ATTRS, requestId) + body


# The requests whose handlers parse their fields from the body themselves:
# the most frequent ones, so that no call into wire is on their way (see
# ARCHITECTURE.rst, One request).
_FIELDS_HERE = frozenset(
    (wire.FXP_READ, wire.FXP_WRITE, wire.FXP_STAT, wire.FXP_LSTAT, wire.FXP_FSTAT)
)
_U64_U32 = struct.Struct(">QI")


def _string(body: bytes | memoryview, offset: int) -> tuple[bytes, int]:
    # A string field at offset, and where the next field starts; as
    # wire.Reader.string.
    start = offset + 4
    if start > len(body):
        raise wire.BadMessage("Packet too short")
    (length,) = U32.unpack_from(body, offset)
    end = start + length
    if end > len(body):
        raise wire.BadMessage("Packet too short")
    return bytes(body[start:end]), end


def _dataReply(chunk: object, requestId: int, length: int) -> tuple[bytes, bytes | bytearray]:
    if not isinstance(chunk, bytes | bytearray):
        chunk = asBytes(chunk)
    if not chunk:
        raise EOFError()
    if len(chunk) > length:
        chunk = chunk[:length]
    return wire.dataHeader(requestId, len(chunk)), chunk


def _nameReply(path: object, requestId: int) -> bytes:
    # One entry whose long name is the path itself and no attributes, as
    # OpenSSH's sftp-server answers REALPATH and READLINK.
    path = asBytes(path)
    return wire.name(requestId, [wire.nameEntry(path, path, {})])


class SFTPServerCore(PacketReceiving, ExtensionRequests, HandleRequests):
    """
    An SFTP v3 server for one client, without I/O.

    @ivar avatar: the L{ISFTPServer} serving the requests.
    """

    _log = Logger()

    def __init__(
        self,
        avatar: object,
        write: Callable[[bytes], object],
        *,
        writeSequence: Callable[[list[bytes]], object] | None = None,
        writesBuffers: bool = False,
        pauseReading: Callable[[], object] = lambda: None,
        resumeReading: Callable[[], object] = lambda: None,
        disconnect: Callable[[], object] = lambda: None,
        maxInFlight: int = MAX_IN_FLIGHT,
        maxOpenHandles: int = MAX_OPEN_HANDLES,
        logRequests: bool = False,
        budget: HandleBudget | None = None,
        memory: MemoryBudget | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """
        @param avatar: an L{ISFTPServer} provider (or something adaptable to
            one); its L{IShareSFTPServer} methods serve the extensions when
            it provides that interface.
        @param write: called with the bytes of each reply (or of several).
        @param writeSequence: called with a list of byte strings to write
            at once (default: C{write} of them joined).
        @param writesBuffers: C{write} and C{writeSequence} take any
            buffer (a C{bytearray} of file data), not only C{bytes}.
        @param pauseReading: called to stop being fed (backpressure).
        @param resumeReading: called to be fed again.
        @param disconnect: called once, to close the connection on a
            protocol violation.
        @param maxInFlight: requests in flight before reading is paused.
        @param maxOpenHandles: open handles allowed; limits@openssh.com
            announces this or the budget's per-client cap, the lower.
        @param logRequests: log each request at debug level (costly: off
            unless debug logs are wanted).
        @param budget: the handles shared with the other clients (default:
            this process's, L{processBudget}).
        @param memory: a L{conchshare.budget.MemoryBudget} whose packet
            share large packets are taken from (default: none; give one only
            if C{pauseReading} does pause).
        @param delivery: the engine's
            L{conchshare.sftp.engine.ICallEngine.delivery}: replies made
            while it delivers a batch of results are written together, at
            its end (default: each at once).
        """
        self.avatar: ISFTPServer = ISFTPServer(avatar)
        self._write = write
        #: C{write} and C{writeSequence} take any buffer, not only bytes.
        self.writesBuffers = writesBuffers
        self._writeSequence: Callable[[list[bytes]], object] = (
            writeSequence if writeSequence is not None else lambda pieces: write(b"".join(pieces))
        )
        self._delivery = delivery if delivery is not None else Delivery()
        # The Deferred whose one callback _answer added: _packet adds none.
        self._answering: Deferred[Any] | None = None
        self._pauseReading = pauseReading
        self._resumeReading = resumeReading
        self._disconnect = disconnect
        self._maxInFlight = max(1, maxInFlight)
        self._resumeAt = self._maxInFlight // 2
        self._maxOpenHandles = maxOpenHandles
        self._logRequests = logRequests

        self._buffer = bytearray()
        # The packet being received, when its start was fed: allocated
        # whole (length prefix included) and filled as the rest comes
        # (receiveBuffer); then self._buffer is empty.
        self._head: bytearray | None = None
        self._headFill = 0
        self._memory = memory
        # Bytes of the memory budget taken for the packet being received.
        self._headCharge = 0
        self._awaitingMemory = False
        self._waitingFor = 0
        self._outbox: list[bytes] = []
        #: Whether the last feed carried a large packet (WRITE data).
        self.fedBulk = False
        #: Whether the last feed brought only small requests and left
        #: nothing buffered: their answers may come within a fraction of a
        #: millisecond (worth waiting for, see
        #: L{conchshare.sftp.engine.ICallEngine.waitBriefly}).
        self.settled = True
        self._outboxSize = 0
        self._corked = False
        self._processing = False
        # The memory being fed may be kept (see dataReceived's keepable).
        self._keepable = False
        self._initialised = False
        self._closing = False
        self._lost = False
        self._inFlight = 0
        self._opening = 0
        self._readingPaused = False
        self._outputPaused = False
        self._nextHandle = 0
        self._files: dict[bytes, ISFTPFile] = {}
        self._dirs: dict[bytes, OpenDirectory] = {}
        self._pendingCloses = 0
        self._budget = budget if budget is not None else processBudget()
        self._budget.join(self)
        self._lostWaiters: list[Deferred[None]] = []
        self._idleWaiters: list[Deferred[None]] = []
        self._extensions = ourExtensions(self.avatar)
        self._avatarExtensions: dict[bytes, bytes] = {}

        # Those of _FIELDS_HERE take the packet body, the others a Reader.
        self._handlers: dict[int, Callable[[int, Any], Any]] = {
            wire.FXP_OPEN: self._open,
            wire.FXP_CLOSE: self._close,
            wire.FXP_READ: self._read,
            wire.FXP_WRITE: self._writeChunk,
            wire.FXP_LSTAT: self._lstat,
            wire.FXP_FSTAT: self._fstat,
            wire.FXP_SETSTAT: self._setstat,
            wire.FXP_FSETSTAT: self._fsetstat,
            wire.FXP_OPENDIR: self._opendir,
            wire.FXP_READDIR: self._readdir,
            wire.FXP_REMOVE: self._remove,
            wire.FXP_MKDIR: self._mkdir,
            wire.FXP_RMDIR: self._rmdir,
            wire.FXP_REALPATH: self._realpath,
            wire.FXP_STAT: self._stat,
            wire.FXP_RENAME: self._rename,
            wire.FXP_READLINK: self._readlink,
            wire.FXP_SYMLINK: self._symlink,
            wire.FXP_EXTENDED: self._extended,
        }

    # Feeding and flow control

    def dataReceived(self, data: bytes | bytearray | memoryview, *, keepable: bool = False) -> None:
        """
        Feed bytes received from the client.

        @param keepable: whether C{data}'s memory is given away: then the
            data of large packets (WRITEs) is used where it is, through
            views, instead of copied out.  Otherwise C{data} is not kept,
            and the caller may reuse its memory afterwards.  C{bytes} never
            change: they are always keepable.
        """
        try:
            if self._closing:
                return
            self.fedBulk = False
            if self._processing:
                self._unhead()
                self._buffer += data
                self._process()
            elif self._head is not None:
                with memoryview(data) as view:
                    count = min(len(self._head) - self._headFill, len(view))
                    self._head[self._headFill : self._headFill + count] = view[:count]
                    self._headFill += count
                    self._headReceived(view[count:])
            elif self._buffer:
                self._completeHead(data)
            else:
                # Parsed where it is; only what is left over is copied.
                self._keepable = keepable or type(data) is bytes
                try:
                    self._process(data)
                finally:
                    self._keepable = False
            if not self._closing and len(self._buffer) > _MAX_BUFFERED:
                self._abort("Client kept sending while paused")
        finally:
            # Read by the engine's owner right after the feed (one
            # attribute, not a call: see ARCHITECTURE.rst, One request).
            self.settled = not self.fedBulk and not self.buffered

    def pauseOutput(self) -> None:
        """
        The consumer of our replies is full: dispatch nothing new.
        """
        self._outputPaused = True
        self._updateReading()

    def limitInFlight(self, limit: int) -> None:
        """
        Keep at most C{limit} (at least 1) requests in flight from now on;
        reading resumes at half of it.  Read at every dispatch: a change
        takes effect with the next packet.
        """
        self._maxInFlight = max(1, limit)
        self._resumeAt = self._maxInFlight // 2

    def resumeOutput(self) -> None:
        """
        The consumer of our replies has room again.
        """
        self._outputPaused = False
        self._process()

    def connectionLost(self) -> Deferred[None]:
        """
        The connection is gone: write nothing more, close every handle.

        @return: a Deferred firing with C{None} once every open file and
            directory is closed and no request is in flight.  Close errors
            are logged, never raised.
        """
        self._closing = True
        self._lost = True
        self._buffer.clear()
        self._head = None
        self._releaseMemory()
        waiter: Deferred[None] = Deferred()
        self._lostWaiters.append(waiter)
        self._reap()
        return waiter

    def whenIdle(self) -> Deferred[None]:
        """
        Wait until no request is in flight and nothing dispatchable is
        buffered (for example to close once the client closed its side).

        @return: a Deferred firing with C{None}; it never fails.
        """
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        self._checkIdle()
        return waiter

    def _checkIdle(self) -> None:
        if self._outputPaused and not self._closing:
            return
        if self._inFlight == 0 and not self._processing and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    @property
    def openHandles(self) -> int:
        """
        The number of open file and directory handles.
        """
        return len(self._files) + len(self._dirs)

    @property
    def buffered(self) -> int:
        """
        The number of bytes received and not yet dispatched (the start of a
        packet, or packets held back by backpressure).
        """
        return len(self._buffer) + (self._headFill if self._head is not None else 0)

    @property
    def inFlight(self) -> int:
        """
        The number of requests dispatched and not yet answered.
        """
        return self._inFlight

    def _dispatching(self) -> bool:
        # Whether a whole packet would be dispatched now.
        return not self._closing and self._inFlight < self._maxInFlight and not self._outputPaused

    def _process(
        self,
        data: bytes | bytearray | memoryview | None = None,
        *,
        head: bytearray | None = None,
    ) -> None:
        # Dispatch the packets of self._buffer, or of data (the buffer being
        # empty) after head (one whole packet, when given); what is left
        # goes back to the buffer.
        if self._processing:
            return
        self._processing = True
        # Replies made while dispatching go out in one write at the end.
        # (Worker threads are woken at the end of the feed, by its owner:
        # see ICallEngine.holdWakeups.)
        flush = not self._corked
        self._corked = True
        keep = self._keepable
        if data is None:
            # Detached, so that nothing resizes it while it is viewed (and
            # ours alone: its packets may be kept where they are).
            data, self._buffer = self._buffer, bytearray()
            keep = True
        view = memoryview(data)
        try:
            if head is not None:
                # Ours alone (detached from the buffer): the packet body is
                # a view of it, not a copy.
                if len(head) - 4 >= BULK:
                    self.fedBulk = True
                charge, self._headCharge = self._headCharge, 0
                result = self._packet(memoryview(head)[4:])
                if charge:
                    self._releaseWhenAnswered(result, charge)
            offset = 0
            size = len(view)
            partial = 0  # the length of a packet only begun
            while (
                not self._closing
                and self._inFlight < self._maxInFlight
                and not self._outputPaused
                and size - offset >= 4
            ):
                (length,) = U32.unpack_from(view, offset)
                if length > wire.MAX_PACKET_LENGTH:
                    self._abort(f"Packet of {length} bytes is over the limit")
                    return
                end = offset + 4 + length
                if end > size:
                    partial = length
                    break
                if length >= BULK:
                    self.fedBulk = True
                    # WRITE data: kept where it is if the feed allows.
                    body = view[offset + 4 : end] if keep else bytes(view[offset + 4 : end])
                else:
                    body = bytes(view[offset + 4 : end])
                offset = end
                self._packet(body)
            if not self._closing:
                if partial and not self._buffer and self._reserve(4 + partial):
                    # Its whole size at once, filled as the rest comes
                    # (read there directly: receiveBuffer).
                    head = self._head = bytearray(4 + partial)
                    self._headFill = size - offset
                    head[: self._headFill] = view[offset:]
                else:
                    # Ahead of anything fed meanwhile (from a callback).
                    self._buffer[:0] = view[offset:]
                self._updateReading()
        finally:
            view.release()
            self._processing = False
            if flush:
                self._flush()

    def _updateReading(self) -> None:
        if self._closing:
            return
        if self._readingPaused:
            if (
                not self._outputPaused
                and self._inFlight <= self._resumeAt
                and not self._awaitingMemory
            ):
                self._readingPaused = False
                self._resumeReading()
        elif self._outputPaused or self._inFlight >= self._maxInFlight or self._awaitingMemory:
            self._readingPaused = True
            self._pauseReading()

    def _abort(self, reason: str) -> None:
        self._log.warn("Disconnecting the SFTP client: {reason}", reason=reason)
        self._closing = True
        self._buffer.clear()
        self._head = None
        self._releaseMemory()
        self._disconnect()

    def _send(self, data: bytes | tuple[bytes, ...]) -> None:
        # A tuple is one reply in pieces (a DATA header and its chunk).
        if self._lost:
            return
        if isinstance(data, tuple):
            self._outbox.extend(data)
            self._outboxSize += sum(map(len, data))
        else:
            self._outbox.append(data)
            self._outboxSize += len(data)
        if self._corked:
            if self._outboxSize >= _CORK_LIMIT:
                # Bulk data: let the consumer start on it now (and push
                # back, pausing dispatch, if it cannot keep up).
                self._flush()
                self._corked = True
            return
        after = self._delivery.after
        if after is not None:
            # More replies come in this batch of results: one write for all.
            after.append(self._flush)
            self._corked = True
            return
        self._flush()

    def _flush(self) -> None:
        self._corked = False
        self._outboxSize = 0
        outbox = self._outbox
        if not outbox or self._lost:
            outbox.clear()
            return
        self._outbox = []
        if not self.writesBuffers:
            outbox = [bytes(p) if type(p) is not bytes else p for p in outbox]
        if len(outbox) == 1:
            self._write(outbox[0])
        else:
            self._writeSequence(outbox)

    # Dispatch: the one path from a packet to exactly one reply

    def _packet(self, body: bytes | memoryview) -> Any:
        # Returns the Deferred of the reply still to come, if any.
        if not body:
            self._send(wire.status(0, wire.FX_BAD_MESSAGE, b"Empty packet"))
            return
        kind = body[0]
        if not self._initialised:
            if kind != wire.FXP_INIT:
                self._abort(f"Packet of type {kind} before INIT")
                return
            self._init(wire.Reader(body, 1))
            return
        if kind == wire.FXP_INIT:
            self._abort("Duplicate INIT")
            return
        if len(body) < 5:
            self._send(wire.status(0, wire.FX_BAD_MESSAGE, b"Packet too short"))
            return
        (requestId,) = U32.unpack_from(body, 1)
        if self._logRequests:
            self._log.debug(
                "SFTP request type {kind} id {requestId}", kind=kind, requestId=requestId
            )
        handler = self._handlers.get(kind)
        if handler is None:
            self._send(wire.status(requestId, wire.FX_OP_UNSUPPORTED, b"Operation unsupported"))
            return
        self._inFlight += 1
        try:
            if kind in _FIELDS_HERE:
                result = handler(requestId, body)
            else:
                result = handler(requestId, wire.Reader(body, 5))
        except BaseException as e:
            self._replyFailed(Failure(e), requestId)
            return
        if isinstance(result, Deferred):
            if result is self._answering:
                self._answering = None
            else:
                result.addCallbacks(self._replied, self._replyFailed, errbackArgs=(requestId,))
            return result
        self._replied(result)
        return None

    def _answer(self, result: object, shape: Callable[..., Any], requestId: int, *args: Any) -> Any:
        # The reply shape(result, requestId, *args) now, or made and sent by
        # the one callback of result, a Deferred (see ARCHITECTURE.rst).
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._shaped,
                self._replyFailed,
                callbackArgs=(shape, requestId, *args),
                errbackArgs=(requestId,),
            )
            self._answering = result
            return result
        return shape(result, requestId, *args)

    def _shaped(self, value: object, shape: Callable[..., Any], requestId: int, *args: Any) -> None:
        try:
            reply = shape(value, requestId, *args)
        except BaseException:
            self._replyFailed(Failure(), requestId)
            return
        single = self._delivery.single and not (self._corked or self._buffer or self._readingPaused)
        if single:
            # The one result of the engine's batch, and answering it
            # dispatches nothing: written at the end of this callback, as at
            # the batch's end (the engine calls nothing more for it).
            self._corked = True
        self._replied(reply)
        if single:
            self._flush()

    def _replied(self, reply: bytes | tuple[bytes, ...]) -> None:
        try:
            self._send(reply)
        except Exception:
            self._log.failure("Writing an SFTP reply failed")
        self._finished(None)

    def _replyFailed(self, reason: Failure, requestId: int) -> None:
        try:
            reply = self._failed(reason, requestId)
        except Exception:
            self._log.failure("Making an SFTP error reply failed")
            reply = wire.status(requestId, wire.FX_FAILURE, b"Failure")
        self._replied(reply)

    def _failed(self, reason: Failure, requestId: int) -> bytes:
        error = reason.value
        if not isinstance(
            error, SFTPError | OSError | EOFError | NotImplementedError | OverflowError
        ):
            if not isinstance(error, wire.BadMessage):
                # A bug in the avatar or here: the client still gets a reply.
                self._log.failure("SFTP request {requestId} failed", reason, requestId=requestId)
        code, message = statusForException(error if error is not None else Exception())
        return wire.status(requestId, code, message)

    def _finished(self, _: object) -> None:
        self._inFlight -= 1
        if self._lost:
            self._reap()
        elif self._buffer or self._readingPaused:
            # Packets held back, or reading to resume.  Otherwise there is
            # nothing to dispatch (the reply is already sent or corked).
            self._process()
        self._checkIdle()

    def _file(self, handle: bytes) -> ISFTPFile:
        fileObj = self._files.get(handle)
        if fileObj is None:
            raise noSuchHandle()
        return fileObj

    # Requests (draft-02 section 6); each parses its fields, then calls the
    # avatar, and returns the reply or a Deferred firing with it.  A field
    # running past the end is BAD_MESSAGE with the request's id (and the
    # session goes on; OpenSSH's sftp-server exits).  Bytes after the last
    # field are ignored, as OpenSSH's sftp-server does (process() there
    # consumes the rest of the message).

    def _close(self, requestId: int, r: wire.Reader) -> Any:
        handle = r.string()
        if handle in self._files:
            result = self._files.pop(handle).close()
        elif handle in self._dirs:
            result = self._dirs.pop(handle).close()
        else:
            # OpenSSH's sftp-server: ENOENT here (FAILURE for the other
            # requests on an unknown handle).
            raise SFTPError(wire.FX_NO_SUCH_FILE, "No such handle")
        return self._answer(result, _okReply, requestId)

    # READ, WRITE, STAT, LSTAT and FSTAT parse their fields here (see
    # _FIELDS_HERE), as wire.Reader does, failing alike.

    def _read(self, requestId: int, body: bytes | memoryview) -> Any:
        handle, end = _string(body, 5)
        if end + 12 > len(body):
            raise wire.BadMessage("Packet too short")
        offset, length = _U64_U32.unpack_from(body, end)
        fileObj = self._file(handle)
        # Capped, not refused: a short read is legal and every client
        # re-requests the rest.  Stock Conch would build a DATA reply larger
        # than OpenSSH's client accepts.
        length = min(length, wire.MAX_READ_LENGTH)

        return self._answer(fileObj.readChunk(offset, length), _dataReply, requestId, length)

    def _writeChunk(self, requestId: int, body: bytes | memoryview) -> Any:
        handle, start = _string(body, 5)
        if start + 12 > len(body):
            raise wire.BadMessage("Packet too short")
        offset, length = _U64_U32.unpack_from(body, start)
        start += 12
        # The data is the rest of the packet: a view of it, not a copy
        # (what a string field would make).
        # Exactly length bytes are written: bytes after them are ignored,
        # as by every other request (a Go client reuses a 32 KiB buffer and
        # sends WRITE packets longer than their data).
        if start + length > len(body):
            raise wire.BadMessage("Packet too short")
        packet = memoryview(body)
        fileObj = self._file(handle)
        chunk: Any = packet[start : start + length]
        if not getattr(fileObj, "writesViews", False):
            chunk = bytes(chunk)
        return self._status(requestId, fileObj.writeChunk, offset, chunk)

    def _stat(self, requestId: int, body: bytes | memoryview) -> Any:
        path = _string(body, 5)[0]
        return self._attrs(requestId, self.avatar.getAttrs, path, True)

    def _lstat(self, requestId: int, body: bytes | memoryview) -> Any:
        path = _string(body, 5)[0]
        return self._attrs(requestId, self.avatar.getAttrs, path, False)

    def _fstat(self, requestId: int, body: bytes | memoryview) -> Any:
        handle = _string(body, 5)[0]
        return self._attrs(requestId, self._file(handle).getAttrs)

    def _setstat(self, requestId: int, r: wire.Reader) -> Any:
        path, attrs = r.string(), r.attrs()
        return self._status(requestId, self.avatar.setAttrs, path, attrs)

    def _fsetstat(self, requestId: int, r: wire.Reader) -> Any:
        handle, attrs = r.string(), r.attrs()
        return self._status(requestId, self._file(handle).setAttrs, attrs)

    def _remove(self, requestId: int, r: wire.Reader) -> Any:
        path = r.string()
        return self._status(requestId, self.avatar.removeFile, path)

    def _mkdir(self, requestId: int, r: wire.Reader) -> Any:
        path, attrs = r.string(), r.attrs()
        return self._status(requestId, self.avatar.makeDirectory, path, attrs)

    def _rmdir(self, requestId: int, r: wire.Reader) -> Any:
        path = r.string()
        return self._status(requestId, self.avatar.removeDirectory, path)

    def _realpath(self, requestId: int, r: wire.Reader) -> Any:
        path = r.string()
        return self._name(requestId, self.avatar.realPath, path)

    def _rename(self, requestId: int, r: wire.Reader) -> Any:
        oldPath, newPath = r.string(), r.string()
        return self._status(requestId, self.avatar.renameFile, oldPath, newPath)

    def _readlink(self, requestId: int, r: wire.Reader) -> Any:
        path = r.string()
        return self._name(requestId, self.avatar.readLink, path)

    def _symlink(self, requestId: int, r: wire.Reader) -> Any:
        # OpenSSH's sftp and sshfs send (targetpath, linkpath), the reverse
        # of draft-02's (linkpath, targetpath); every deployed server follows
        # OpenSSH, so do we.
        targetPath, linkPath = r.string(), r.string()
        return self._status(requestId, self.avatar.makeLink, linkPath, targetPath)

    # Reply shapes

    # The avatar's methods are called directly: what they raise becomes the
    # error reply in _packet, as a failed Deferred does.

    def _status(self, requestId: int, call: Callable[..., object], *args: object) -> Any:
        return self._answer(call(*args), _okReply, requestId)

    def _attrs(self, requestId: int, call: Callable[..., object], *args: object) -> Any:
        return self._answer(call(*args), _attrsReply, requestId)

    def _name(self, requestId: int, call: Callable[..., object], *args: object) -> Any:
        return self._answer(call(*args), _nameReply, requestId)

    # Extensions
