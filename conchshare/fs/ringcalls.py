"""
The file system's calls made by the kernel through io_uring (L{Ring}), the
same fast paths as the calls made in a worker: STAT and LSTAT (an
C{openat2} by the resolver's rule, then C{statx}), the creation of a new
file, WRITE and CLOSE.  Anything other than the plain case (a symlink on
the way, an existing file to open, an error the walk reports better)
reports L{FALLBACK}: the call then runs in a worker thread.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conchshare.fs.attrs import Attrs, attrsFromStatx
from conchshare.fs.ring import FALLBACK, Ring, RingCall, RingOutcome
from conchshare.fs.syscalls import AT_SYMLINK_NOFOLLOW, STATX_BASIC, OpenHow, Statx

if TYPE_CHECKING:
    from conchshare.fs.file import ConfinedFile

__all__ = ["RingClose", "RingCreate", "RingStat", "RingWrite"]


def _errorOf(result: int) -> OSError:
    code = -result
    return OSError(code, os.strerror(code))


def _closeLater(ring: Ring, fd: int) -> None:
    # A descriptor we are done with, closed by the kernel (the last close
    # of a deleted file frees it, which may wait for the disk).
    if not ring.closeFile(fd, _ignoreResult):
        os.close(fd)


def _ignoreResult(result: int) -> None:
    pass


class RingStat(RingCall):
    """
    STAT or LSTAT of an entry below a share's root: from the kernel's
    caches if it has the entry (it often has by the time this call's turn
    comes: sshfs asks for the attributes of a file it is creating), else
    openat2 (O_PATH, no symlink on the way), then statx of the descriptor.
    """

    def __init__(
        self,
        root: int,
        path: bytes,
        how: OpenHow,
        follow: bool,
        cached: Callable[[], Attrs | None] | None,
    ) -> None:
        self.root = root
        self.path = path
        self.how = how
        self.follow = follow
        self.cached = cached

    def start(self, ring: Ring, report: Callable[[RingOutcome], None]) -> bool:
        if self.cached is not None:
            try:
                attrs = self.cached()
            except OSError as e:
                report((False, e))
                return True
            if attrs is not None:
                report((True, attrs))
                return True
        self.ring = ring
        self.report = report
        return bool(ring.openat2(self.root, self.path, self.how, self._opened))

    def _opened(self, result: int) -> None:
        if result < 0:
            if result == -errno.ENOENT:
                self.report((False, _errorOf(result)))  # a FileNotFoundError
            else:
                self.report(FALLBACK)
            return
        self.fd = result
        self.found = Statx()
        if not self.ring.statx(result, AT_SYMLINK_NOFOLLOW, STATX_BASIC, self.found, self._statted):
            _closeLater(self.ring, result)
            self.report(FALLBACK)

    def _statted(self, result: int) -> None:
        _closeLater(self.ring, self.fd)
        found = self.found
        if (
            result < 0
            or found.mask & STATX_BASIC != STATX_BASIC
            or (self.follow and stat.S_ISLNK(found.mode))
        ):
            self.report(FALLBACK)
        else:
            self.report((True, attrsFromStatx(found)))


class RingCreate(RingCall):
    """
    OPEN creating a new file: one openat2 with O_CREAT|O_EXCL.
    """

    def __init__(
        self, root: int, path: bytes, how: OpenHow, exclusive: bool, made: Callable[[int], Any]
    ) -> None:
        self.root = root
        self.path = path
        self.how = how
        self.exclusive = exclusive
        self.made = made

    def start(self, ring: Ring, report: Callable[[RingOutcome], None]) -> bool:
        self.report = report
        return bool(ring.openat2(self.root, self.path, self.how, self._opened))

    def _opened(self, result: int) -> None:
        if result >= 0:
            self.report((True, self.made(result)))
        elif result == -errno.EEXIST and self.exclusive:
            self.report((False, _errorOf(result)))  # a FileExistsError
        else:
            self.report(FALLBACK)


class RingWrite(RingCall):
    """
    WRITE at an offset (not in append mode), continued after a short write.
    """

    def __init__(self, confined: ConfinedFile, offset: int, data: Any) -> None:
        self.confined = confined
        self.offset = offset
        self.data = data

    def start(self, ring: Ring, report: Callable[[RingOutcome], None]) -> bool:
        if self.confined.closed:
            return False  # the thread's write fails as it should (EBADF)
        self.fd = self.confined._fd
        self.ring = ring
        self.report = report
        return bool(ring.write(self.fd, self.data, self.offset, self._wrote))

    def _wrote(self, result: int) -> None:
        if result < 0:
            self.report((False, _errorOf(result)))
            return
        rest = memoryview(self.data)[result:]
        if not rest:
            self.report((True, None))
            return
        if result == 0:
            self.report(FALLBACK)  # the thread's pwrite says why
            return
        self.offset += result
        self.data = rest
        if not self.ring.write(self.fd, rest, self.offset, self._wrote):
            self.report(FALLBACK)


class RingClose(RingCall):
    """
    CLOSE of an open file.
    """

    def __init__(self, confined: ConfinedFile) -> None:
        self.confined = confined

    def start(self, ring: Ring, report: Callable[[RingOutcome], None]) -> bool:
        confined = self.confined
        if confined.closed:
            return False
        self.report = report
        confined.closed = True
        if ring.closeFile(confined._fd, self._closed):
            return True
        confined.closed = False
        return False

    def _closed(self, result: int) -> None:
        self.report((True, None) if result >= 0 else (False, _errorOf(result)))
