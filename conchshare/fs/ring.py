"""
File system calls handed to the kernel with io_uring, completed in the
thread that submitted them (the reactor's): no worker thread to wake, and
none to wake us back.

Why: a worker thread costs two thread wake-ups per call (the worker's, then
the reactor's), 70-100 microseconds on a busy two-CPU machine for calls of
5-40, and Python threads cannot spin for each other because they share the
GIL.  The kernel's own workers (io-wq) need no GIL: the reactor submits an
openat2, statx, write or close and polls the completion queue (memory, no
system call) while the kernel runs it.  A call the kernel can do without
waiting (a close, a lookup it has cached) completes during the submission.

What is here: L{Ring}, a minimal io_uring through C{ctypes} (a submission
queue used from one thread, completions delivered to callbacks), with no
knowledge of any reactor (L{conchshare.sftp.ringwatch} has its eventfd
watched by one); L{usable}, whether io_uring may be used here (not where
it is not Linux x86-64, disabled by C{kernel.io_uring_disabled} or a
seccomp filter, an operation is missing, C{CONCHSHARE_IO_URING=0} or
C{CONCHSHARE_PORTABLE_FS=1}: callers then use worker threads); and
L{RingCall}, a call that may run in the kernel instead of a worker thread.

x86-64 only: the rings are shared memory read and written with plain loads
and stores, which x86's ordering makes safe (the kernel side uses the
barriers); other architectures would need explicit barriers.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import platform
import struct
import sys
import weakref
from collections.abc import Callable
from typing import Any

from conchshare.fs.syscalls import OpenHow
from conchshare.switches import switchedOn

__all__ = ["FALLBACK", "OpenHow", "Ring", "RingCall", "RingOutcome", "usable"]


def _logFailure(message: str) -> None:
    # The default of Ring.logFailure: the exception being handled, to the
    # standard library's logging.
    logging.getLogger(__name__).exception(message)


#: What L{RingCall.start} is given to report with: C{(True, result)},
#: C{(False, exception)}, or L{FALLBACK} (run the call in a thread after all).
RingOutcome = Any

#: Reported by a L{RingCall} that cannot finish its call in the kernel (a
#: symlink on the way, say): the call's function then runs in a worker
#: thread, still holding its keys.
FALLBACK = object()


class RingCall:
    """
    A call that may run in the kernel (io_uring) instead of a worker
    thread: what the avatar hands the engine beside the function.
    """

    def start(self, ring: Ring, report: Callable[[RingOutcome], None]) -> bool:
        """
        Submit the call's first operation to C{ring}, in the ring's thread.
        C{report} is called once, in that thread, with C{(True, result)},
        C{(False, exception)} or L{FALLBACK}: later, or at once (before
        returning L{True}) when the call needs no system call that may
        wait.

        @return: whether it was submitted (L{False}: nothing started; the
            call runs in a thread).
        """
        raise NotImplementedError()


_SYS_SETUP = 425
_SYS_ENTER = 426
_SYS_REGISTER = 427

_OFF_SQ_RING = 0
_OFF_SQES = 0x10000000
_FEAT_SINGLE_MMAP = 1 << 0
_FEAT_NODROP = 1 << 1
_REGISTER_EVENTFD = 4
_REGISTER_PROBE = 8
_OP_SUPPORTED = 1

OP_CLOSE = 19
OP_STATX = 21
OP_WRITE = 23
OP_OPENAT2 = 28
_NEEDED = (OP_CLOSE, OP_STATX, OP_WRITE, OP_OPENAT2)

_SQE = struct.Struct("=BBHiQQIIQHHiQQ")  # struct io_uring_sqe, 64 bytes
_CQE = struct.Struct("=QiI")  # struct io_uring_cqe, 16 bytes
assert _SQE.size == 64 and _CQE.size == 16


class _SqOffsets(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in ("head", "tail", "ringMask", "ringEntries", "flags", "dropped", "array", "r1")
    ] + [("userAddr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in ("head", "tail", "ringMask", "ringEntries", "overflow", "cqes", "flags", "r1")
    ] + [("userAddr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in (
            "sqEntries",
            "cqEntries",
            "flags",
            "sqThreadCpu",
            "sqThreadIdle",
            "features",
            "wqFd",
            "r0",
            "r1",
            "r2",
        )
    ] + [("sqOff", _SqOffsets), ("cqOff", _CqOffsets)]


#: What a completion is handed: the call's result (a count, a descriptor,
#: or minus an errno value).
Completion = Callable[[int], object]


def _syscall() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.syscall
    function.restype = ctypes.c_long
    return function


class Ring:
    """
    One io_uring, used from one thread (the reactor's).  Each call submits
    one operation at once and gives its result, later, to a callback: call
    L{reap} to deliver what has completed (or L{doRead}, when the ring's
    eventfd, L{fileno}, is readable; L{spin} waits for a while).

    Everything an operation points to (path, C{open_how}, buffers) is kept
    alive until its completion is delivered.  A ring dropped without
    L{close} is closed when collected (a C{weakref.finalize} holding its
    operations and descriptors, not the ring): what its operations in
    flight point to is kept for the life of the process all the same.
    """

    #: Called, in the except block, when a completion's callback raised
    #: (the exception is the one being handled), with what was being done.
    logFailure: Callable[[str], None] = staticmethod(_logFailure)

    #: Called with L{True} when an operation is submitted while none was in
    #: flight, and with L{False} when the last one in flight is delivered
    #: (L{conchshare.sftp.ringwatch} watches the eventfd only meanwhile).
    busy: Callable[[bool], object] | None = None

    def __init__(self, entries: int = 128, *, spin: bool | None = None) -> None:
        """
        @param spin: whether L{spin} may poll the completion queue (L{None}:
            what the switch C{CONCHSHARE_RING_SPIN} says, read now).
        @raise OSError: io_uring is not usable here.
        """
        self._spins = switchedOn("CONCHSHARE_RING_SPIN") if spin is None else spin
        self._syscall = _syscall()
        params = _Params()
        fd = int(self._syscall(_SYS_SETUP, entries, ctypes.byref(params)))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup failed")
        self._fd = fd
        self._eventfd = -1
        self._pending: dict[int, tuple[Completion, object]] = {}
        # The ring's descriptor and its eventfd's: what _release closes.
        self._fds = [fd, -1]
        self._finalizer = weakref.finalize(self, _release, self._pending, self._fds)
        self.closed = False
        try:
            if params.features & (_FEAT_SINGLE_MMAP | _FEAT_NODROP) != (
                _FEAT_SINGLE_MMAP | _FEAT_NODROP
            ):
                raise OSError(errno.ENOSYS, "io_uring too old (Linux >= 5.5 needed)")
            sq, cq = params.sqOff, params.cqOff
            size = max(sq.array + params.sqEntries * 4, cq.cqes + params.cqEntries * _CQE.size)
            self._rings = mmap.mmap(fd, size, mmap.MAP_SHARED, offset=_OFF_SQ_RING)
            self._sqes = mmap.mmap(
                fd, params.sqEntries * _SQE.size, mmap.MAP_SHARED, offset=_OFF_SQES
            )
            self._ringsView = (ctypes.c_char * size).from_buffer(self._rings)
            base = ctypes.addressof(self._ringsView)

            def u32(offset: int) -> Any:
                return ctypes.c_uint32.from_address(base + offset)

            self._sqHead = u32(sq.head)
            self._sqTail = u32(sq.tail)
            self._sqMask = u32(sq.ringMask).value
            self._sqArray = (ctypes.c_uint32 * params.sqEntries).from_address(base + sq.array)
            self._cqHead = u32(cq.head)
            self._cqTail = u32(cq.tail)
            self._cqMask = u32(cq.ringMask).value
            self._cqes = memoryview(self._rings)[cq.cqes : cq.cqes + params.cqEntries * _CQE.size]
            self._sqeView = memoryview(self._sqes)
            #: The most operations in flight at once: the completion
            #: queue's size, so that it never overflows.
            self.capacity = int(params.cqEntries)
            self._probe()
            self._eventfd = self._fds[1] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            value = ctypes.c_int32(self._eventfd)
            if self._syscall(_SYS_REGISTER, fd, _REGISTER_EVENTFD, ctypes.byref(value), 1) < 0:
                raise OSError(ctypes.get_errno(), "Cannot register the eventfd")
        except BaseException:
            self.close()
            raise
        self._next = 1

    def _probe(self) -> None:
        # struct io_uring_probe with room for 256 ops.
        count = 256
        buffer = ctypes.create_string_buffer(16 + 8 * count)
        if self._syscall(_SYS_REGISTER, self._fd, _REGISTER_PROBE, buffer, count) < 0:
            raise OSError(ctypes.get_errno(), "io_uring cannot be probed")
        raw = buffer.raw
        last = raw[0]
        for op in _NEEDED:
            if op > last or not struct.unpack_from("=BBH", raw, 16 + 8 * op)[2] & _OP_SUPPORTED:
                raise OSError(errno.ENOSYS, f"io_uring lacks operation {op}")

    def fileno(self) -> int:
        """
        An eventfd, readable once a completion is waiting.
        """
        return self._eventfd

    def __len__(self) -> int:
        """
        The number of operations in flight (submitted, not yet delivered).
        """
        return len(self._pending)

    def full(self) -> bool:
        """
        Whether no further operation may be submitted now.
        """
        return len(self._pending) >= self.capacity or self.closed

    def _submit(
        self,
        opcode: int,
        fd: int,
        address: int,
        length: int,
        offset: int,
        opFlags: int,
        callback: Completion,
        keep: object,
    ) -> bool:
        """
        Submit one operation.

        @return: whether it was submitted (L{False}: the ring is full or the
            kernel refused it for now; nothing was started).
        """
        if self.full():
            return False
        userData = self._next
        self._next = userData + 1 if userData < 0xFFFFFFFFFFFF else 1
        tail = self._sqTail.value
        index = tail & self._sqMask
        _SQE.pack_into(
            self._sqeView,
            index * 64,
            opcode,
            0,
            0,
            fd,
            offset,
            address,
            length,
            opFlags,
            userData,
            0,
            0,
            0,
            0,
            0,
        )
        self._sqArray[index] = index
        self._sqTail.value = (tail + 1) & 0xFFFFFFFF
        while True:
            submitted = int(self._syscall(_SYS_ENTER, self._fd, 1, 0, 0, None, 0))
            if submitted >= 0 or ctypes.get_errno() != errno.EINTR:
                break
        if submitted != 1:
            # Not consumed (EBUSY, EAGAIN, ENOMEM): take it back.  Without
            # a kernel thread polling, the kernel reads the queue only
            # during io_uring_enter.
            self._sqTail.value = tail
            return False
        pending = self._pending
        if not pending and self.busy is not None:
            self.busy(True)
        pending[userData] = (callback, keep)
        return True

    def ready(self) -> bool:
        """
        Whether completions are waiting for L{reap}.
        """
        return bool(self._cqHead.value != self._cqTail.value)

    def reap(self) -> int:
        """
        Deliver every completion waiting, each to its callback (errors
        logged, never raised).

        @return: how many were delivered.
        """
        delivered = 0
        while True:
            head = self._cqHead.value
            tail = self._cqTail.value
            if head == tail:
                if delivered and not self._pending and self.busy is not None:
                    self.busy(False)
                return delivered
            found = []
            while head != tail:
                found.append(_CQE.unpack_from(self._cqes, (head & self._cqMask) * 16))
                head = (head + 1) & 0xFFFFFFFF
            self._cqHead.value = head
            for userData, result, _flags in found:
                entry = self._pending.pop(userData, None)
                if entry is None:
                    continue
                delivered += 1
                try:
                    entry[0](result)
                except Exception:
                    self.logFailure("Delivering an io_uring completion")

    def spin(self, seconds: float, clock: Callable[[], float]) -> bool:
        """
        Poll the completion queue for up to C{seconds} (no system call, no
        sleep: for waits shorter than a thread wake-up); with the switch
        C{CONCHSHARE_RING_SPIN} off, only look.

        @return: whether a completion is waiting.
        """
        if self.ready():
            return True
        if not self._pending or not self._spins:
            return False
        deadline = clock() + seconds
        head, tail = self._cqHead, self._cqTail
        while head.value == tail.value:
            if clock() >= deadline:
                return False
        return True

    def doRead(self) -> None:
        """
        The eventfd is readable: clear it, then deliver the completions (in
        that order: one posted in between signals it again).
        """
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            pass
        self.reap()

    # -- operations ------------------------------------------------------

    def openat2(self, directory: int, path: bytes, how: OpenHow, callback: Completion) -> bool:
        """
        openat2(C{directory}, C{path}, C{how}): a descriptor or -errno.
        """
        name = ctypes.create_string_buffer(path)
        return self._submit(
            OP_OPENAT2,
            directory,
            ctypes.addressof(name),
            ctypes.sizeof(how),
            ctypes.addressof(how),
            0,
            callback,
            (name, how),
        )

    def statx(
        self, fd: int, flags: int, mask: int, into: ctypes.Structure, callback: Completion
    ) -> bool:
        """
        statx(C{fd}, "", C{flags} | AT_EMPTY_PATH, C{mask}) into C{into}:
        0 or -errno.
        """
        name = ctypes.create_string_buffer(b"")
        return self._submit(
            OP_STATX,
            fd,
            ctypes.addressof(name),
            mask,
            ctypes.addressof(into),
            flags | _AT_EMPTY_PATH,
            callback,
            (name, into),
        )

    def write(self, fd: int, data: Any, offset: int, callback: Completion) -> bool:
        """
        pwrite(C{fd}, C{data}, C{offset}): the count written or -errno.
        C{data} (any contiguous buffer) is not copied; do not change it
        until the completion.
        """
        address, length = _address(data)
        return self._submit(OP_WRITE, fd, address, length, offset, 0, callback, data)

    def close(self) -> None:
        """
        Stop using the ring; operations in flight are abandoned (their
        callbacks never run; what they point to is kept for the life of
        the process).  Idempotent.
        """
        self.closed = True
        if self._pending and self.busy is not None:
            self.busy(False)
        self._finalizer()
        self._eventfd = -1
        self._fd = -1

    def closeFile(self, fd: int, callback: Completion) -> bool:
        """
        close(C{fd}): 0 or -errno.
        """
        return self._submit(OP_CLOSE, fd, 0, 0, 0, 0, callback, None)


_AT_EMPTY_PATH = 0x1000

# What the operations of closed rings pointed to.
_abandoned: list[dict[int, tuple[Completion, object]]] = []


def _release(pending: dict[int, tuple[Completion, object]], fds: list[int]) -> None:
    """
    Close a ring (by L{Ring.close}, or when it is collected): keep what its
    operations in flight point to for the life of the process (the kernel
    may still read or write it), then close its descriptors.  Must not
    refer to the ring itself.
    """
    if pending:
        _abandoned.append(dict(pending))
        pending.clear()
    for index, fd in enumerate(fds):
        if fd >= 0:
            fds[index] = -1
            os.close(fd)


class _PyBuffer(ctypes.Structure):
    # Py_buffer (Include/pybuffer.h), enough of it to read buf and len.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_getBuffer = ctypes.pythonapi.PyObject_GetBuffer
_getBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_getBuffer.restype = ctypes.c_int
_releaseBuffer = ctypes.pythonapi.PyBuffer_Release
_releaseBuffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_releaseBuffer.restype = None


def _address(data: Any) -> tuple[int, int]:
    """
    Where C{data}'s bytes are, and how many: read-only buffers (C{bytes}, a
    view of them) included, which C{ctypes} alone only copies.  The memory
    stays put while C{data} lives: C{bytes} never move, and a
    C{memoryview} holds its base's buffer (a C{bytearray} cannot be
    resized under it).
    """
    buffer = _PyBuffer()
    if _getBuffer(data, ctypes.byref(buffer), 0) != 0:  # PyBUF_SIMPLE: contiguous
        raise BufferError("Not a contiguous buffer")
    try:
        return buffer.buf or 0, buffer.len
    finally:
        _releaseBuffer(ctypes.byref(buffer))


# Whether io_uring is usable here: probed once (None: not yet), and why not.
_usable: bool | None = None
_unusable: str | None = None


def usable() -> bool:
    """
    Whether io_uring may be used here (see the module docstring); probed
    once, the switches read then.
    """
    global _usable, _unusable
    if _usable is None:
        _usable = False
        if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
            _unusable = "not Linux x86-64"
        elif not switchedOn("CONCHSHARE_IO_URING"):
            _unusable = "CONCHSHARE_IO_URING=0"
        elif switchedOn("CONCHSHARE_PORTABLE_FS"):
            _unusable = "CONCHSHARE_PORTABLE_FS=1"
        elif not hasattr(os, "eventfd"):
            _unusable = "no eventfd"
        else:
            try:
                Ring(4).close()
            except (OSError, ValueError) as e:
                _unusable = str(e)
            else:
                _usable = True
    return _usable


def whyUnusable() -> str | None:
    """
    Why L{usable} said no (L{None}: it said yes, or was not asked yet).
    """
    return _unusable
