"""
An open regular file of a share (L{ConfinedFile}), and the calls on a
descriptor that a file and a path share: setting attributes (never a
set-id bit a client could leave behind) and C{statvfs}.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from conchshare.fs.attrs import Attrs, attrsFromStat, number, readOnly
from conchshare.fs.ring import RingCall
from conchshare.fs.ringcalls import RingClose, RingWrite
from conchshare.shares import Share

__all__ = ["MAX_READ", "ConfinedFile", "setAttrsOnFd", "statVFSOf"]

#: The most bytes one read returns, whatever the client asks (a cap, so a
#: huge READ length cannot make us allocate that much).
MAX_READ = 1 << 20

_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None


class ConfinedFile:
    """
    An open regular file of a share.  Blocking; not thread-safe (the avatar
    serialises the calls).
    """

    def __init__(self, fd: int, share: Share, *, append: bool, virtualPath: bytes) -> None:
        self._fd = fd
        self.share = share
        self.append = append
        self.virtualPath = virtualPath
        self.closed = False

    @property
    def fd(self) -> int:
        """
        The descriptor.

        @raise OSError: C{EBADF} once closed (its number may name another
            file by now).
        """
        if self.closed:
            raise OSError(errno.EBADF, "The file is closed")
        return self._fd

    def read(self, offset: int, length: int) -> bytes:
        """
        Read up to C{length} bytes at C{offset} (at most L{MAX_READ}).

        @raise EOFError: at or past the end of the file.
        """
        length = min(length, MAX_READ)
        chunks = []
        while length > 0:
            data = os.pread(self.fd, length, offset)
            if not data:
                break
            chunks.append(data)
            offset += len(data)
            length -= len(data)
        if not chunks:
            raise EOFError("End of file")
        return b"".join(chunks)

    def readCached(self, offset: int, length: int) -> bytearray | None:
        """
        Read C{length} bytes at C{offset} (at most L{MAX_READ}) if they are
        all in the page cache, without ever blocking: C{preadv} with
        C{RWF_NOWAIT}, which fails rather than wait for the disk or a lock.
        Safe to call from the reactor thread.

        @return: the bytes (a C{bytearray}, not copied again), or L{None}
            when L{read} must do it (not cached, a short read, the end of
            the file, no C{RWF_NOWAIT} here).
        """
        if _NOWAIT is None or self.closed:
            return None
        length = min(length, MAX_READ)
        buffer = bytearray(length)
        try:
            count = os.preadv(self._fd, (buffer,), offset, _NOWAIT)
        except OSError:
            return None
        if count != length:
            return None
        return buffer

    def write(self, offset: int, data: bytes) -> None:
        """
        Write all of C{data} at C{offset} (at the end in append mode).
        """
        view = memoryview(data)
        while view:
            if self.append:
                # O_APPEND: the kernel writes at the end, whatever the offset.
                written = os.write(self.fd, view)
            else:
                written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written

    def writeVector(self, offset: int, pieces: Sequence[Any]) -> int:
        """
        Write C{pieces} (buffers) one after the other from C{offset} with one
        C{pwritev}.  Not in append mode (see L{write}).

        @return: the number of bytes written: all of them, or fewer (a
            short write, to be continued by the caller).
        """
        if self.append:
            raise OSError(errno.EINVAL, "Vectored writes at an offset in append mode")
        return os.pwritev(self.fd, pieces, offset)

    def stat(self) -> Attrs:
        return attrsFromStat(os.fstat(self.fd))

    def setAttrs(self, attrs: Mapping[str, object]) -> None:
        if self.share.readOnly:
            raise readOnly()
        setAttrsOnFd(self.fd, attrs)

    def statVFS(self) -> dict[str, int]:
        return statVFSOf(self.fd, self.share.readOnly)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def ringWrite(self, offset: int, data: Any) -> RingCall | None:
        """
        L{write} as a call in the kernel (see L{conchshare.fs.ring});
        L{None} in append mode.
        """
        if self.append or self.closed:
            return None
        return RingWrite(self, offset, data)

    def ringClose(self) -> RingCall:
        """
        L{close} as a call in the kernel.
        """
        return RingClose(self)


_SET_ID = stat.S_ISUID | stat.S_ISGID


def permissions(attrs: Mapping[str, object], fd: int) -> int:
    """
    The permissions a SETSTAT, FSETSTAT or lsetstat applies to the file
    open as C{fd}: what the client asked for, but never the set-user-id
    bit, and the set-group-id bit on a directory only (there it only makes
    new entries take the directory's group), so that a client cannot leave
    a set-id program on this machine.
    """
    mode = number(attrs, "permissions") & 0o7777
    if mode & _SET_ID:
        mode &= ~stat.S_ISUID
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            mode &= ~stat.S_ISGID
    return mode


def setAttrsOnFd(fd: int, attrs: Mapping[str, object]) -> None:
    """
    Set C{attrs} (size, owner, permissions, times) on the file open as
    C{fd}.
    """
    if "size" in attrs:
        os.ftruncate(fd, number(attrs, "size"))
    if "uid" in attrs or "gid" in attrs:
        os.chown(fd, number(attrs, "uid", -1), number(attrs, "gid", -1))
    if "permissions" in attrs:
        os.chmod(fd, permissions(attrs, fd))
    if "atime" in attrs and "mtime" in attrs:
        os.utime(fd, (number(attrs, "atime"), number(attrs, "mtime")))


def statVFSOf(fd: int, readOnly: bool) -> dict[str, int]:
    """
    C{statvfs} of the file system of C{fd}: the fields of
    statvfs@openssh.com, its flag read-only (1) in a read-only share.
    """
    st = os.statvfs(fd)
    flag = 0
    if readOnly or st.f_flag & os.ST_RDONLY:
        flag |= 1
    if st.f_flag & os.ST_NOSUID:
        flag |= 2
    return {
        "bsize": st.f_bsize,
        "frsize": st.f_frsize,
        "blocks": st.f_blocks,
        "bfree": st.f_bfree,
        "bavail": st.f_bavail,
        "files": st.f_files,
        "ffree": st.f_ffree,
        "favail": st.f_favail,
        "fsid": st.f_fsid,
        "flag": flag,
        "namemax": st.f_namemax,
    }
