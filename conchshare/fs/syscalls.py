"""
The system calls the file system layer makes through C{ctypes}: C{openat2}
(Linux >= 5.6), C{statx} and C{statfs} read from memory (C{RESOLVE_CACHED},
Linux >= 5.12) and C{renameat2} (C{RENAME_NOREPLACE}).

Nothing is probed at import: L{systemCalls} finds, on first use, which of
them this system offers, and gives L{PORTABLE} (none of them: the portable
code paths, as on macOS or an old kernel) when the switch
C{CONCHSHARE_PORTABLE_FS} is on.  Callers read the result once, when they
are set up.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

from conchshare.switches import switchedOn

__all__ = [
    "LOCAL_FILESYSTEMS",
    "PORTABLE",
    "CachedCalls",
    "MountKey",
    "OpenHow",
    "Statx",
    "SystemCalls",
    "processUmask",
    "renameNoReplace",
    "systemCalls",
]

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: C{O_PATH} where there is one (Linux): a descriptor that only names.
O_PATH = getattr(os, "O_PATH", os.O_RDONLY)

SYS_OPENAT2 = 437  # the same number on every Linux architecture
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_CACHED = 0x20
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC = 0x07FF
STATX_WANTED = STATX_BASIC | 0x1000  # BASIC_STATS | MNT_ID
_RENAME_NOREPLACE = 1

# statfs(2) f_type of filesystems whose attributes and dentries live in
# this machine's memory (no server to revalidate with): ext2/3/4, XFS,
# Btrfs, tmpfs, ramfs, F2FS, overlayfs, ZFS, bcachefs.
LOCAL_FILESYSTEMS = frozenset(
    {
        0xEF53,
        0x58465342,
        0x9123683E,
        0x01021994,
        0x858458F6,
        0xF2F52010,
        0x794C7630,
        0x2FC12FC1,
        0xCA451A4E,
    }
)


class OpenHow(ctypes.Structure):
    """
    struct open_how, for openat2.
    """

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """
    struct statx.
    """

    _fields_ = [
        ("mask", ctypes.c_uint32),
        ("blksize", ctypes.c_uint32),
        ("attributes", ctypes.c_uint64),
        ("nlink", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16),
        ("spare0", ctypes.c_uint16),
        ("ino", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("attributesMask", ctypes.c_uint64),
        ("atime", _StatxTimestamp),
        ("btime", _StatxTimestamp),
        ("ctime", _StatxTimestamp),
        ("mtime", _StatxTimestamp),
        ("rdevMajor", ctypes.c_uint32),
        ("rdevMinor", ctypes.c_uint32),
        ("devMajor", ctypes.c_uint32),
        ("devMinor", ctypes.c_uint32),
        ("mntId", ctypes.c_uint64),
        ("spare", ctypes.c_uint64 * 13),
    ]


#: Where an entry lives: (mount id, device major, device minor).
MountKey = tuple[int, int, int]


class CachedCalls:
    """
    C{statx} from memory and C{statfs}, through ctypes; built only where
    they and C{openat2} with C{RESOLVE_CACHED} work (L{None} otherwise).
    """

    def __init__(self, libc: Any) -> None:
        self._statx = libc.statx
        self._statx.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
        ]
        self._statx.restype = ctypes.c_int
        self._statfs = libc.statfs
        self._statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        self._statfs.restype = ctypes.c_int
        self._fstatfs = libc.fstatfs
        self._fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self._fstatfs.restype = ctypes.c_int

    def statx(self, fd: int) -> Statx | None:
        """
        What the kernel has in memory about C{fd}'s file (never asking a
        server); L{None} if statx fails or leaves out a field.
        """
        result = Statx()
        if self._statx(
            fd, b"", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_WANTED, ctypes.byref(result)
        ):
            return None
        if result.mask & STATX_WANTED != STATX_WANTED:
            return None
        return result

    def isLocal(self, fd: int) -> bool:
        """
        Whether the descriptor C{fd} is of a local filesystem (see
        L{LOCAL_FILESYSTEMS}): closing it waits for no server.  May block
        (C{fstatfs}): call it in a worker.
        """
        buffer = ctypes.create_string_buffer(256)
        if self._fstatfs(fd, buffer):
            return False
        return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF in LOCAL_FILESYSTEMS

    def localMount(self, path: str) -> MountKey | None:
        """
        Where the directory C{path} lives, if on a local filesystem (see
        L{LOCAL_FILESYSTEMS}); L{None} otherwise.  May block: call it once,
        when the share is opened.
        """
        buffer = ctypes.create_string_buffer(256)
        if self._statfs(os.fsencode(path), buffer):
            return None
        fsType = ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF
        if fsType not in LOCAL_FILESYSTEMS:
            return None
        fd = os.open(path, O_PATH | os.O_DIRECTORY | CLOEXEC)
        try:
            found = self.statx(fd)
        finally:
            os.close(fd)
        if found is None:
            return None
        return (found.mntId, found.devMajor, found.devMinor)


class SystemCalls:
    """
    Which of the Linux-only calls this system offers (each L{None} where
    missing).

    @ivar openat2: libc's C{syscall}, typed for C{openat2(dirfd, path, how,
        size)}: call it through L{open}.
    @ivar memory: the calls that read from the kernel's memory.
    @ivar renameat2: libc's C{renameat2}.
    """

    def __init__(
        self,
        openat2: Any = None,
        memory: CachedCalls | None = None,
        renameat2: Callable[..., int] | None = None,
    ) -> None:
        self.openat2 = openat2
        self.memory = memory
        self.renameat2 = renameat2

    def open(self, directory: int, path: bytes, how: OpenHow) -> int:
        """
        C{openat2(directory, path, how)}: a descriptor, or -1 (then
        C{ctypes.get_errno()} says why).  Only where L{openat2} is there.
        """
        return int(
            self.openat2(SYS_OPENAT2, directory, path, ctypes.addressof(how), ctypes.sizeof(how))
        )


#: None of the Linux-only calls: the portable code paths.
PORTABLE = SystemCalls()


def _renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


def _openat2() -> Any:
    """
    libc's C{syscall}, typed for C{openat2}, if the call is there; L{None}
    where it is missing (or no C{O_PATH}: not Linux).
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "O_PATH"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.argtypes = [
        ctypes.c_long,
        ctypes.c_long,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    syscall.restype = ctypes.c_long
    how = OpenHow(O_PATH | os.O_DIRECTORY | CLOEXEC, 0, RESOLVE_BENEATH)
    try:
        probe = int(syscall(SYS_OPENAT2, -1, b"probe", ctypes.addressof(how), ctypes.sizeof(how)))
    except Exception:
        return None
    if probe >= 0:  # cannot happen; never leak it
        os.close(probe)
        return None
    # EBADF: the call exists.  ENOSYS (old kernel), EPERM (a seccomp
    # filter), EINVAL/E2BIG: not usable here.
    return syscall if ctypes.get_errno() == errno.EBADF else None


def _cachedCalls(calls: SystemCalls) -> CachedCalls | None:
    if calls.openat2 is None:
        return None
    try:
        memory = CachedCalls(ctypes.CDLL(None, use_errno=True))
    except (OSError, AttributeError):
        return None
    # RESOLVE_CACHED is refused (EINVAL) before Linux 5.12.
    fd = calls.open(AT_FDCWD, b"/", OpenHow(O_PATH | os.O_DIRECTORY | CLOEXEC, 0, RESOLVE_CACHED))
    if fd < 0:
        return None
    try:
        if memory.statx(fd) is None:
            return None
    finally:
        os.close(fd)
    return memory


_found: SystemCalls | None = None
_probeLock = threading.Lock()


def systemCalls(portable: bool | None = None) -> SystemCalls:
    """
    The Linux-only calls this system offers, found on the first call (a
    command that never opens a share pays nothing).

    @param portable: L{True}: none of them (L{PORTABLE}); L{None}: what
        the switch C{CONCHSHARE_PORTABLE_FS} says, read now.
    """
    global _found
    if portable is None:
        portable = switchedOn("CONCHSHARE_PORTABLE_FS")
    if portable:
        return PORTABLE
    if _found is None:
        with _probeLock:
            if _found is None:
                calls = SystemCalls(_openat2(), None, _renameat2())
                calls.memory = _cachedCalls(calls)
                _found = calls
    return _found


def renameNoReplace(
    renameat2: Callable[..., int] | None, srcFd: int, src: bytes, dstFd: int, dst: bytes
) -> None:
    """
    Rename without replacing an existing destination (EEXIST instead), with
    C{renameat2} where there is one.
    """
    if renameat2 is not None:
        result = renameat2(srcFd, src, dstFd, dst, _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code))
    # The filesystem lacks RENAME_NOREPLACE: link+unlink is atomic for
    # files; for the rest, check then rename (a narrow race, no escape).
    st = os.stat(src, dir_fd=srcFd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.link(src, dst, src_dir_fd=srcFd, dst_dir_fd=dstFd, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise
        else:
            os.unlink(src, dir_fd=srcFd)
            return
    try:
        os.stat(dst, dir_fd=dstFd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=srcFd, dst_dir_fd=dstFd)
    else:
        raise FileExistsError(errno.EEXIST, "File exists")


def processUmask() -> int:
    """
    The process' umask, read without changing it where C{/proc} says it.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
