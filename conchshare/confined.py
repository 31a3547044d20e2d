"""
Blocking filesystem operations confined to a L{ShareSet}.

This is the one place where a client path becomes a real location.  Every
operation normalises the virtual path lexically, finds its share, then walks
the real folder component by component from the share's root with
C{O_NOFOLLOW|O_DIRECTORY} opens relative to the previous directory's file
descriptor, and performs the final operation relative to the last directory's
descriptor, never following a final symlink in the kernel.  A concurrent
process that swaps a directory for a symlink can therefore only make a request
fail, never reach outside.

Symlinks met on the way are resolved here, lexically and component by
component, as long as their target stays inside the same share (a relative
target whose C{..} stay below the share root, or an absolute target under the
share's real folder).  Any other symlink is listed but never followed:
following it fails with L{PermissionError}.

Pure Python: no Twisted.  Every method blocks; the SFTP avatar runs them in a
thread pool.  Failures are L{OSError} (errno mapped to an SFTP status by the
protocol layer) and L{EOFError}.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import math
import os
import pwd
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from typing import Any

from conchshare.sftp import wire
from conchshare.sftp.workers import FALLBACK, RingCall
from conchshare.shares import Share, ShareSet, VirtualDirectory, splitPath
from conchshare.uring import OpenHow

__all__ = [
    "MAX_READ",
    "ConfinedDirectory",
    "ConfinedFile",
    "ConfinedFilesystem",
    "Place",
    "attrsFromStat",
    "groupName",
    "longname",
    "probeSystemCalls",
    "userName",
]

Attrs = dict[str, object]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_PATH lets us walk through directories we may search but not read.
_WALK = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
# Any entry, to read its status (a symlink itself).
_ENTRY = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW
# A share's folder, kept open to resolve below (its path may be a symlink).
_ROOT = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC

#: Seconds a share folder's descriptor is used before its path is checked
#: again (renaming the folder away ends the share within this long).
ROOT_RECHECK = 0.05
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None) if hasattr(os, "preadv") else None
_MAX_HOPS = 40
#: The most components one walk goes through, those of symlink targets
#: included (Linux's PATH_MAX, in components): past it, ELOOP.
MAX_WALKED = 4096
_RENAME_NOREPLACE = 1
_BATCH = 100

#: The most bytes one read returns, whatever the client asks (a cap, so a
#: huge READ length cannot make us allocate that much).
MAX_READ = 1 << 20

FXF_READ = 0x01
FXF_WRITE = 0x02
FXF_APPEND = 0x04
FXF_CREAT = 0x08
FXF_TRUNC = 0x10
FXF_EXCL = 0x20


def _denied(message: str = "Permission denied") -> PermissionError:
    return PermissionError(errno.EACCES, message)


def _readOnly() -> PermissionError:
    return _denied("The share is read-only")


@lru_cache(maxsize=1024)
def userName(uid: int) -> bytes:
    """
    The login name of C{uid}, or the empty string when unknown.
    """
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except (KeyError, OverflowError):
        return b""


@lru_cache(maxsize=1024)
def groupName(gid: int) -> bytes:
    """
    The name of group C{gid}, or the empty string when unknown.
    """
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except (KeyError, OverflowError):
        return b""


def _number(attrs: Mapping[str, object], key: str, default: int | None = None) -> int:
    """
    An integer attribute (C{default} when absent).
    """
    value = attrs.get(key, default)
    if not isinstance(value, int):
        raise OSError(errno.EINVAL, f"The attribute {key} is not an integer")
    return value


def _u32(value: float) -> int:
    return min(max(int(value), 0), 0xFFFFFFFF)


def _attrs(size: int, uid: int, gid: int, mode: int, atime: int, mtime: int) -> Attrs:
    # SFTP v3 attributes; times (whole seconds) clamped to 32 bits.
    if not (0 <= atime <= 0xFFFFFFFF and 0 <= mtime <= 0xFFFFFFFF):
        atime, mtime = _u32(atime), _u32(mtime)
    return {
        "size": size,
        "uid": uid,
        "gid": gid,
        "permissions": mode,
        "atime": atime,
        "mtime": mtime,
    }


def attrsFromStat(st: os.stat_result) -> Attrs:
    """
    SFTP v3 attributes of a stat result (times clamped to 32 bits).
    """
    # The whole seconds (as statx gives them): int(st.st_mtime) would
    # round up a time within 0.2 us of the next second (a double).
    return _attrs(
        st.st_size, st.st_uid, st.st_gid, st.st_mode, int(st[stat.ST_ATIME]), int(st[stat.ST_MTIME])
    )


_MONTHS = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun"]
_MONTHS += [b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"]


def _modeString(mode: int) -> bytes:
    kinds = {
        stat.S_IFDIR: "d",
        stat.S_IFLNK: "l",
        stat.S_IFCHR: "c",
        stat.S_IFBLK: "b",
        stat.S_IFIFO: "p",
        stat.S_IFSOCK: "s",
    }
    chars = [kinds.get(stat.S_IFMT(mode), "-")]
    for shift, special, lower, upper in (
        (6, stat.S_ISUID, "s", "S"),
        (3, stat.S_ISGID, "s", "S"),
        (0, stat.S_ISVTX, "t", "T"),
    ):
        bits = (mode >> shift) & 7
        chars.append("r" if bits & 4 else "-")
        chars.append("w" if bits & 2 else "-")
        if mode & special:
            chars.append(lower if bits & 1 else upper)
        else:
            chars.append("x" if bits & 1 else "-")
    return "".join(chars).encode() + b" "


# Caches for long names: a listing repeats the same modes, owners and
# minutes.  Bounded: cleared when full.
_CACHE_SIZE = 4096
_modes: dict[int, bytes] = {}
_owners: dict[tuple[int, int], bytes] = {}
# Keyed by the minute (a multiple of 60) plus whether it is recent.
_dates: dict[int, bytes] = {}
_heads: dict[tuple[int, int, int, int], bytes] = {}


def _cached(cache: dict[Any, bytes], key: Any, make: Callable[[], bytes]) -> bytes:
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        value = cache[key] = make()
    return value


def _owner(uid: int, gid: int) -> bytes:
    user = userName(uid) or str(uid).encode()
    group = groupName(gid) or str(gid).encode()
    return b"%-*s %-*s" % (max(len(user), 8), user, max(len(group), 8), group)


def _date(mtime: int, recent: bool) -> bytes:
    t = time.localtime(mtime)
    day = b"%s %2d" % (_MONTHS[t.tm_mon - 1], t.tm_mday)
    # OpenSSH: the time for the last six months, the year otherwise.
    if recent:
        return day + b" %02d:%02d" % (t.tm_hour, t.tm_min)
    return day + b"  %d" % t.tm_year


def _head(mode: int, nlink: int, uid: int, gid: int) -> bytes:
    modeString = _modes.get(mode)
    if modeString is None:
        modeString = _cached(_modes, mode, lambda: _modeString(mode))
    owner = _owners.get((uid, gid))
    if owner is None:
        owner = _cached(_owners, (uid, gid), lambda: _owner(uid, gid))
    return b"%s %3d %s " % (modeString, nlink, owner)


_HALF_YEAR = (365 * 24 * 60 * 60) / 2


def _longname(
    name: bytes, mode: int, nlink: int, uid: int, gid: int, size: int, mtime: int, now: float
) -> bytes:
    # What precedes the size: the same for most entries of a listing.
    key = (mode, nlink, uid, gid)
    head = _heads.get(key)
    if head is None:
        head = _cached(_heads, key, lambda: _head(mode, nlink, uid, gid))
    recent = now - _HALF_YEAR < mtime <= now
    # The minute is all the date shows (recent), or the day (older); a
    # day or a minute starts at a multiple of 60 s in every time zone in use.
    minute = mtime - mtime % 60 + recent
    date = _dates.get(minute)
    if date is None:
        date = _cached(_dates, minute, lambda: _date(mtime, recent))
    return b"%s%8d %s %s" % (head, size, date, name)


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
# os.fsencode is str.encode() then, but for undecodable names (surrogates).
_FS_UTF8 = (_FS_ENCODING, _FS_ERRORS) == ("utf-8", "surrogateescape")
_U32 = struct.Struct(">I")


# An entry's packers by the lengths of its name and long name: a listing's
# names are mostly of a few lengths.  Bounded: cleared when full.
_entryPackers: dict[tuple[int, int], Callable[..., bytes]] = {}


def _entryPacker(nameLength: int, lineLength: int) -> Callable[..., bytes]:
    """
    Pack a NAME reply's entry with every attribute: name length, name, long
    name length, long name, then the ATTRS fields of L{wire.ALL_ATTRS_BODY}.
    """
    if len(_entryPackers) >= _CACHE_SIZE:
        _entryPackers.clear()
    pack = struct.Struct(f">I{nameLength}sI{lineLength}s{wire.ALL_ATTRS_BODY.format[1:]}").pack
    _entryPackers[nameLength, lineLength] = pack
    return pack


def _encodeAttrs(size: int, uid: int, gid: int, mode: int, atime: int, mtime: int) -> bytes:
    # What does not fit its field: masked, as wire.encodeAttrs does.
    attrs = {"size": size, "uid": uid, "gid": gid, "permissions": mode}
    return wire.encodeAttrs({**attrs, "atime": atime, "mtime": mtime})


def _encodeEntry(filename: bytes, longname: bytes, attrs: Mapping[str, object]) -> bytes:
    return wire.nameEntry(filename, longname, attrs)


def _decodeEntry(data: bytes) -> Entry:
    reader = wire.Reader(data)
    filename = reader.string()
    line = reader.string()
    return filename, line, reader.attrs()


def longname(
    name: bytes, attrs: Mapping[str, object], nlink: int = 1, *, now: float | None = None
) -> bytes:
    """
    An C{ls -l} line, formatted like OpenSSH's C{ls_file}.

    @param name: the file name.
    @param attrs: its attributes (see L{attrsFromStat}).
    @param nlink: its link count.
    @param now: the current time (for the recent/old date format).
    """
    return _longname(
        name,
        _number(attrs, "permissions", 0),
        nlink,
        _number(attrs, "uid", 0),
        _number(attrs, "gid", 0),
        _number(attrs, "size", 0),
        _number(attrs, "mtime", 0),
        time.time() if now is None else now,
    )


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


# What the system offers (renameat2, openat2, the in-memory calls): found on
# first use by probeSystemCalls, not at import (a command that never opens a
# share pays nothing); None until then and where missing.
_renameat2Function: Callable[..., int] | None = None


# openat2(2) (Linux >= 5.6): the directory of a path resolved in one call,
# by the kernel, below the share's root and refusing every symlink on the
# way (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS).  A
# path it refuses (a symlink, a missing entry, ...) is walked again
# component by component, which follows links that stay inside the share
# and reports the right error.  Same guarantee, one system call instead of
# an open and a close per component.
_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE = 0x02 | 0x04 | 0x08  # NO_MAGICLINKS | NO_SYMLINKS | BENEATH


# Read-only for the kernel: one structure serves every thread.
_HOW = OpenHow(_WALK & ~os.O_NOFOLLOW, 0, _RESOLVE)


def _openat2Syscall() -> Any:
    """
    libc's C{syscall}, typed for C{openat2(dirfd, path, how, size)}; L{None}
    where there is none (or no C{O_PATH}: not Linux).
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
    return syscall


_openat2SyscallFunction: Any = None


def _openat2() -> Callable[[int, bytes], int] | None:
    syscall = _openat2SyscallFunction
    if syscall is None:
        return None
    address, size = ctypes.addressof(_HOW), ctypes.sizeof(_HOW)

    def openat2(directory: int, path: bytes) -> int:
        """
        A descriptor (O_PATH) of the directory C{path} below C{directory},
        or -1 (then C{ctypes.get_errno()} says why).
        """
        return int(syscall(_SYS_OPENAT2, directory, path, address, size))

    try:
        probe = openat2(-1, b"probe")
    except Exception:
        return None
    if probe >= 0:  # cannot happen; never leak it
        os.close(probe)
        return None
    # EBADF: the call exists.  ENOSYS (old kernel), EPERM (a seccomp
    # filter), EINVAL/E2BIG: not usable here.
    return openat2 if ctypes.get_errno() == errno.EBADF else None


_openat2Function: Callable[[int, bytes], int] | None = None

# The open_how of each (flags, mode) opened below a share, by _openEntry or
# the ring (few: a handful of flag sets, and the modes clients create files
# with).  Whoever gets one keeps it while the kernel reads it.
_hows: dict[tuple[int, int], OpenHow] = {}
_HOWS_KEPT = 256


def _openHow(flags: int, mode: int) -> OpenHow:
    """
    The open_how of an entry opened with C{flags} (plus O_NOFOLLOW) and
    C{mode}, refusing every symlink on the way and leaving the share.
    """
    how = _hows.get((flags, mode))
    if how is None:
        if len(_hows) >= _HOWS_KEPT:
            _hows.clear()
        how = _hows[flags, mode] = OpenHow(flags | os.O_NOFOLLOW, mode, _RESOLVE)
    return how


def _openEntry(directory: int, path: bytes, flags: int, mode: int = 0) -> int:
    """
    Open C{path} below C{directory} with one openat2, refusing every
    symlink on the way, a final one included (ELOOP), as C{_openat2Function}
    does for directories; L{_openat2Function} must be there.

    @return: the descriptor, or -1 (then C{ctypes.get_errno()} says why).
    """
    syscall = _openat2SyscallFunction
    assert syscall is not None
    how = _openHow(flags, mode)
    return int(syscall(_SYS_OPENAT2, directory, path, ctypes.addressof(how), ctypes.sizeof(how)))


# Answering STAT, LSTAT and FSTAT in the reactor thread, only where the
# kernel promises not to wait: openat2 with RESOLVE_CACHED (Linux >= 5.12)
# fails with EAGAIN instead of reading a directory from disk or asking a
# network filesystem to revalidate; RESOLVE_NO_XDEV keeps the walk on the
# share's own mount; statx with AT_STATX_DONT_SYNC never asks a server.
# The answer is used only when statx says the entry is on the mount noted
# when the share was opened, and that mount is a local filesystem, whose
# attributes are in memory once its dentry is.  Anything else goes to a
# worker as before.
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_CACHED = 0x20
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_STATX_DONT_SYNC = 0x4000
_STATX_WANTED = 0x07FF | 0x1000  # BASIC_STATS | MNT_ID

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


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("pad", ctypes.c_int32)]


class _Statx(ctypes.Structure):
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


class _CachedCalls:
    """
    openat2 with any resolve flags, statx and statfs, through ctypes; built
    only where all of them work (L{None} otherwise).
    """

    def __init__(self, libc: Any, syscall: Any) -> None:
        self._syscall = syscall
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
        self._howPath = OpenHow(
            getattr(os, "O_PATH", 0) | os.O_NOFOLLOW | _CLOEXEC,
            0,
            _RESOLVE | _RESOLVE_NO_XDEV | _RESOLVE_CACHED,
        )
        self._howRoot = OpenHow(
            getattr(os, "O_PATH", 0) | os.O_DIRECTORY | _CLOEXEC, 0, _RESOLVE_CACHED
        )
        self._howDirectory = OpenHow(
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC,
            0,
            _RESOLVE | _RESOLVE_NO_XDEV | _RESOLVE_CACHED,
        )
        self._size = ctypes.sizeof(OpenHow)

    def _open(self, directory: int, path: bytes, how: OpenHow) -> int:
        return int(self._syscall(_SYS_OPENAT2, directory, path, ctypes.addressof(how), self._size))

    def openRoot(self, path: bytes) -> int:
        """
        An O_PATH descriptor of the directory C{path} (absolute), or -1 if
        that needs anything not in the kernel's caches (or fails).
        """
        return self._open(_AT_FDCWD, path, self._howRoot)

    def openBeneath(self, directory: int, path: bytes) -> int:
        """
        An O_PATH descriptor of C{path} below C{directory} (a final symlink
        itself), with no symlink, no mount crossing and nothing uncached on
        the way; or -1, with C{ctypes.get_errno()} saying why.
        """
        return self._open(directory, path, self._howPath)

    def openDirectoryBeneath(self, directory: int, path: bytes) -> int:
        """
        Like L{openBeneath}, but a descriptor to list the directory C{path}
        (a symlink at the end is refused too).
        """
        return self._open(directory, path, self._howDirectory)

    def statx(self, fd: int) -> _Statx | None:
        """
        What the kernel has in memory about C{fd}'s file (never asking a
        server); L{None} if statx fails or leaves out a field.
        """
        result = _Statx()
        if self._statx(
            fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, _STATX_WANTED, ctypes.byref(result)
        ):
            return None
        if result.mask & _STATX_WANTED != _STATX_WANTED:
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
        fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC)
        try:
            found = self.statx(fd)
        finally:
            os.close(fd)
        if found is None:
            return None
        return (found.mntId, found.devMajor, found.devMinor)


def _cachedCalls() -> _CachedCalls | None:
    if _openat2Function is None:
        return None
    try:
        calls = _CachedCalls(ctypes.CDLL(None, use_errno=True), _openat2SyscallFunction)
    except (OSError, AttributeError):
        return None
    # RESOLVE_CACHED is refused (EINVAL) before Linux 5.12.
    fd = calls.openRoot(b"/")
    if fd < 0:
        return None
    try:
        if calls.statx(fd) is None:
            return None
    finally:
        os.close(fd)
    return calls


_memory: _CachedCalls | None = None
_probed = False
_probeLock = threading.Lock()


def probeSystemCalls() -> None:
    """
    Find once, on first use, which of renameat2, openat2 and the in-memory
    calls (L{_CachedCalls}) this system offers; later calls return at once.
    Everything here that uses them calls this first (a filesystem when it
    is made).
    """
    global _renameat2Function, _openat2SyscallFunction, _openat2Function, _memory, _probed
    if _probed:
        return
    with _probeLock:
        if _probed:
            return
        _renameat2Function = _renameat2()
        _openat2SyscallFunction = _openat2Syscall()
        _openat2Function = _openat2()
        _memory = _cachedCalls()
        _probed = True


def _attrsFromStatx(found: _Statx) -> Attrs:
    return _attrs(found.size, found.uid, found.gid, found.mode, found.atime.sec, found.mtime.sec)


def _renameNoReplace(srcFd: int, src: bytes, dstFd: int, dst: bytes) -> None:
    """
    Rename without replacing an existing destination (EEXIST instead).
    """
    if _renameat2Function is not None:
        result = _renameat2Function(srcFd, src, dstFd, dst, _RENAME_NOREPLACE)
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


def _processUmask() -> int:
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


@dataclass
class Place:
    """
    A confined real location: the entry C{name} of the directory open as
    C{parent}.  Valid only inside the L{ConfinedFilesystem.place} context.

    @ivar share: the share it is in.
    @ivar parent: a descriptor of the containing directory.
    @ivar name: the entry's name (C{b"."} for the share's root).
    @ivar components: the resolved components from the share's root,
        C{name} included (empty for the root).
    @ivar seen: the entry's own status (a symlink not followed), if the
        walk read it on the way; L{None} if not.
    """

    share: Share
    parent: int
    name: bytes
    components: tuple[bytes, ...]
    seen: os.stat_result | None = None

    @property
    def isRoot(self) -> bool:
        return not self.components

    @property
    def virtualPath(self) -> bytes:
        return b"/".join((self.share.virtualPath,) + self.components)


class _Unresolved(Exception):
    """
    Raised by the walker in lenient mode: what could be resolved, and the
    rest, lexically.
    """

    def __init__(self, components: tuple[bytes, ...], rest: list[bytes]) -> None:
        self.components = components
        self.rest = rest


# -- calls in the kernel (io_uring) ---------------------------------------
#
# The same fast paths as ConfinedFilesystem._direct and ConfinedFile's
# calls, made by the kernel (conchshare.uring) and completed on the
# reactor thread: anything other than the plain case (a symlink on the
# way, an existing file to open, an error the walk reports better) falls
# back to the call in a worker thread.

_STATX_BASIC = 0x07FF
_AT_SYMLINK_NOFOLLOW = 0x100
_RING_PATH = OpenHow(_ENTRY | _CLOEXEC, 0, _RESOLVE)


def _errorOf(result: int) -> OSError:
    code = -result
    return OSError(code, os.strerror(code))


def _closeLater(ring: Any, fd: int) -> None:
    # A descriptor we are done with, closed by the kernel (the last close
    # of a deleted file frees it, which may wait for the disk).
    if not ring.closeFile(fd, _ignoreResult):
        os.close(fd)


def _ignoreResult(result: int) -> None:
    pass


class _RingStat(RingCall):
    """
    STAT or LSTAT of an entry below a share's root: from the kernel's
    caches if it has the entry (it often has by the time this call's turn
    comes: sshfs asks for the attributes of a file it is creating), else
    openat2 (O_PATH, no symlink on the way), then statx of the descriptor.
    """

    def __init__(
        self, root: int, path: bytes, follow: bool, cached: Callable[[], Attrs | None] | None
    ) -> None:
        self.root = root
        self.path = path
        self.follow = follow
        self.cached = cached

    def start(self, ring: Any, report: Callable[[Any], None]) -> bool:
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
        return bool(ring.openat2(self.root, self.path, _RING_PATH, self._opened))

    def _opened(self, result: int) -> None:
        if result < 0:
            if result == -errno.ENOENT:
                self.report((False, _errorOf(result)))  # a FileNotFoundError
            else:
                self.report(FALLBACK)
            return
        self.fd = result
        self.found = _Statx()
        if not self.ring.statx(
            result, _AT_SYMLINK_NOFOLLOW, _STATX_BASIC, self.found, self._statted
        ):
            _closeLater(self.ring, result)
            self.report(FALLBACK)

    def _statted(self, result: int) -> None:
        _closeLater(self.ring, self.fd)
        found = self.found
        if (
            result < 0
            or found.mask & _STATX_BASIC != _STATX_BASIC
            or (self.follow and stat.S_ISLNK(found.mode))
        ):
            self.report(FALLBACK)
        else:
            self.report((True, _attrsFromStatx(found)))


class _RingCreate(RingCall):
    """
    OPEN with FXF_CREAT of a new file: one openat2 with O_CREAT|O_EXCL.
    """

    def __init__(
        self, root: int, path: bytes, how: OpenHow, exclusive: bool, made: Callable[[int], Any]
    ) -> None:
        self.root = root
        self.path = path
        self.how = how
        self.exclusive = exclusive
        self.made = made

    def start(self, ring: Any, report: Callable[[Any], None]) -> bool:
        self.report = report
        return bool(ring.openat2(self.root, self.path, self.how, self._opened))

    def _opened(self, result: int) -> None:
        if result >= 0:
            self.report((True, self.made(result)))
        elif result == -errno.EEXIST and self.exclusive:
            self.report((False, _errorOf(result)))  # a FileExistsError
        else:
            self.report(FALLBACK)


class _RingWrite(RingCall):
    """
    WRITE at an offset (not in append mode), continued after a short write.
    """

    def __init__(self, confined: ConfinedFile, offset: int, data: Any) -> None:
        self.confined = confined
        self.offset = offset
        self.data = data

    def start(self, ring: Any, report: Callable[[Any], None]) -> bool:
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


class _RingClose(RingCall):
    """
    CLOSE of an open file.
    """

    def __init__(self, confined: ConfinedFile) -> None:
        self.confined = confined

    def start(self, ring: Any, report: Callable[[Any], None]) -> bool:
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
            raise _readOnly()
        _setAttrsOnFd(self.fd, attrs)

    def statVFS(self) -> dict[str, int]:
        return _statvfs(self.fd, self.share.readOnly)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def ringWrite(self, offset: int, data: Any) -> RingCall | None:
        """
        L{write} as a call in the kernel (see L{conchshare.uring}); L{None}
        in append mode.
        """
        if self.append or self.closed:
            return None
        return _RingWrite(self, offset, data)

    def ringClose(self) -> RingCall:
        """
        L{close} as a call in the kernel.
        """
        return _RingClose(self)


_SET_ID = stat.S_ISUID | stat.S_ISGID


def _permissions(attrs: Mapping[str, object], fd: int) -> int:
    """
    The permissions a SETSTAT, FSETSTAT or lsetstat applies to the file
    open as C{fd}: what the client asked for, but never the set-user-id
    bit, and the set-group-id bit on a directory only (there it only makes
    new entries take the directory's group), so that a client cannot leave
    a set-id program on this machine.
    """
    mode = _number(attrs, "permissions") & 0o7777
    if mode & _SET_ID:
        mode &= ~stat.S_ISUID
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            mode &= ~stat.S_ISGID
    return mode


def _setAttrsOnFd(fd: int, attrs: Mapping[str, object]) -> None:
    if "size" in attrs:
        os.ftruncate(fd, _number(attrs, "size"))
    if "uid" in attrs or "gid" in attrs:
        os.chown(fd, _number(attrs, "uid", -1), _number(attrs, "gid", -1))
    if "permissions" in attrs:
        os.chmod(fd, _permissions(attrs, fd))
    if "atime" in attrs and "mtime" in attrs:
        os.utime(fd, (_number(attrs, "atime"), _number(attrs, "mtime")))


def _statvfs(fd: int, readOnly: bool) -> dict[str, int]:
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


Entry = tuple[bytes, bytes, Attrs]


class ConfinedDirectory:
    """
    An open directory listing (real or virtual).  Blocking; not thread-safe.

    Entries come as C{(filename, longname, attrs)} (L{read}) or already in
    the form a NAME reply carries them (L{readEncoded}, what the SFTP core
    sends: a real directory's entries are made in that form, in one pass).
    """

    def __init__(
        self,
        fd: int | None,
        entries: list[Entry] | None = None,
        *,
        now: float | None = None,
        linkTargets: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """
        @param linkTargets: what READLINK answers for a stored symlink
            target; a symlink's size is reported as its length (L{None}:
            as stored).
        """
        self._fd = fd
        self._linkTargets = linkTargets
        #: Closing it waits for nothing: a virtual directory, or one of a
        #: local filesystem (see L{checkLocal}).
        self.closesAtOnce = fd is None
        self._scan: Iterator[os.DirEntry[str]] | None = None
        self._entries = entries
        self._now = now
        # Read ahead by prefetch: encoded (a real directory), or entries (a
        # virtual one, whose attributes need not be what ATTRS carries).
        self._prefetched: list[bytes] = []
        self._prefetchedEntries: list[Entry] = []
        #: Every entry was read (L{read} would raise L{EOFError} once
        #: L{takePrefetched} returns nothing).
        self.exhausted = False
        if fd is not None:
            self._scan = os.scandir(fd)

    def prefetch(self, maximum: int = _BATCH) -> None:
        """
        Read the next batch ahead (see L{takePrefetched}); errors are left
        for L{read} to meet again.
        """
        try:
            if self._entries is not None:
                self._prefetchedEntries = self.read(maximum)
            else:
                self._prefetched = self.readEncoded(maximum)
        except (OSError, EOFError):
            pass

    def restart(self) -> None:
        """
        Forget what was read ahead and list a real directory again from its
        start, as it is now (call it before any entry was returned).  A
        virtual directory's listing stays as it was read.
        """
        if self._fd is None:
            return
        self._prefetched = []
        if self._scan is not None:
            self._scan.close()  # type: ignore[attr-defined]
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._scan = os.scandir(self._fd)
        self.exhausted = False

    def takePrefetched(self, maximum: int = _BATCH) -> list[Entry]:
        """
        Up to C{maximum} entries read ahead by L{prefetch}, without any
        system call (so from any thread that owns the directory).
        """
        if self._prefetched:
            return [_decodeEntry(entry) for entry in self.takePrefetchedEncoded(maximum)]
        entries = self._prefetchedEntries
        batch, self._prefetchedEntries = entries[:maximum], entries[maximum:]
        return batch

    def takePrefetchedEncoded(self, maximum: int = _BATCH) -> list[bytes]:
        """
        L{takePrefetched}, encoded as L{readEncoded}.
        """
        if self._prefetchedEntries:
            return [_encodeEntry(*entry) for entry in self.takePrefetched(maximum)]
        batch, self._prefetched = self._prefetched[:maximum], self._prefetched[maximum:]
        return batch

    def read(self, maximum: int = _BATCH) -> list[Entry]:
        """
        Up to C{maximum} entries with lstat attributes and long names.

        @raise EOFError: no entries are left.
        """
        maximum = max(1, maximum)
        batch = self.takePrefetched(maximum)
        if batch:
            return batch
        if self._entries is None:
            return [_decodeEntry(entry) for entry in self.readEncoded(maximum)]
        batch, self._entries = self._entries[:maximum], self._entries[maximum:]
        self.exhausted = not self._entries
        if not batch:
            raise EOFError("End of directory")
        return batch

    def readEncoded(self, maximum: int = _BATCH) -> list[bytes]:
        """
        L{read}, each entry encoded as in a NAME reply: the filename and
        long name as SFTP strings, then the ATTRS.

        @raise EOFError: no entries are left.
        """
        maximum = max(1, maximum)
        batch = self.takePrefetchedEncoded(maximum)
        if batch:
            return batch
        if self._entries is not None:
            return [_encodeEntry(*entry) for entry in self.read(maximum)]
        scan = self._scan
        if scan is None or self._fd is None:
            self.exhausted = True
            raise EOFError("End of directory")
        now = time.time() if self._now is None else self._now
        # Whole seconds (an int compares faster): for an integer mtime,
        # old < mtime <= now says the same with floor(old) and floor(now).
        old, now = math.floor(now - _HALF_YEAR), math.floor(now)
        encoding, errors, utf8 = _FS_ENCODING, _FS_ERRORS, _FS_UTF8
        heads, dates = _heads, _dates
        seconds: dict[int, bytes] = {}
        u32, packers = _U32.pack, _entryPackers
        append = batch.append
        linkTargets = self._linkTargets
        atime: int
        mtime: int
        # attrsFromStat, longname and the SFTP encoding, inline: this runs
        # per entry.
        for entry in scan:
            try:
                # lstat relative to the directory's descriptor.
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since listed
            if utf8:
                try:
                    name = entry.name.encode()  # the fastest
                except UnicodeEncodeError:
                    name = entry.name.encode(encoding, errors)
            else:
                name = entry.name.encode(encoding, errors)
            # The fields as integers (times in whole seconds), in one step.
            # (typeshed says float for the times: they are int.)
            mode, _, _, nlink, uid, gid, size, atime, mtime, _ = st  # type: ignore[assignment]
            if linkTargets is not None and mode & 0o170000 == 0o120000:  # a symlink
                size = self._linkSize(linkTargets, entry.name, size)
            if not (0 <= atime <= 0xFFFFFFFF and 0 <= mtime <= 0xFFFFFFFF):
                atime, mtime = _u32(atime), _u32(mtime)
            key = (mode, nlink, uid, gid)
            head = heads.get(key)
            if head is None:
                head = _cached(heads, key, partial(_head, mode, nlink, uid, gid))
            # Files are often made or changed together: their dates by the
            # exact second first (for this batch, whose now is the same).
            date = seconds.get(mtime)
            if date is None:
                recent = old < mtime <= now
                minute = mtime - mtime % 60 + recent
                date = dates.get(minute)
                if date is None:
                    date = _cached(dates, minute, partial(_date, mtime, recent))
                seconds[mtime] = date
            line = b"%s%8d %s %s" % (head, size, date, name)
            n, m = len(name), len(line)
            pack = packers.get((n, m))
            if pack is None:
                pack = _entryPacker(n, m)
            try:
                append(pack(n, name, m, line, wire.ALL_ATTRS, size, uid, gid, mode, atime, mtime))
            except struct.error:
                attrs = _encodeAttrs(size, uid, gid, mode, atime, mtime)
                append(b"%s%s%s%s%s" % (u32(n), name, u32(m), line, attrs))
            if len(batch) >= maximum:
                break
        else:
            self.exhausted = True
        if not batch:
            raise EOFError("End of directory")
        return batch

    def _linkSize(self, linkTargets: Callable[[bytes], bytes], name: str, size: int) -> int:
        # A symlink's size: the length of what READLINK gives for it.
        try:
            return len(linkTargets(os.readlink(os.fsencode(name), dir_fd=self._fd)))
        except OSError:
            return size

    def checkLocal(self) -> None:
        """
        Find out whether closing it waits for nothing (L{closesAtOnce}):
        whether its filesystem is a local one.  May block: call it where
        it was opened, in a worker.
        """
        if self._fd is not None and _memory is not None:
            self.closesAtOnce = _memory.isLocal(self._fd)

    def close(self) -> None:
        if self._scan is not None:
            self._scan.close()  # type: ignore[attr-defined]
            self._scan = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._entries = None


class _Placed:
    """
    What L{ConfinedFilesystem.place} found, and the descriptors to close
    when the C{with} statement ends (a plain class: cheaper than a
    generator-based context manager, on every request's path).
    """

    __slots__ = ("found", "fds")

    def __init__(self, found: Place | VirtualDirectory, fds: list[int]) -> None:
        self.found = found
        self.fds = fds

    def __enter__(self) -> Place | VirtualDirectory:
        return self.found

    def __exit__(self, *exc_info: object) -> None:
        for fd in self.fds:
            os.close(fd)


def _closeAll(roots: dict[str, tuple[int, int, int, float]]) -> None:
    for fd in [entry[0] for entry in roots.values()]:
        try:
            os.close(fd)
        except OSError:
            pass
    roots.clear()


# A share's folder by its absolute path, with no symlink anywhere on the
# way (the folder itself included): RESOLVE_NO_SYMLINKS from "/".
_HOW_FOLDER = OpenHow(_ROOT | os.O_NOFOLLOW, 0, 0x02 | 0x04)  # NO_MAGICLINKS | NO_SYMLINKS


def _openFolder(path: str) -> int:
    """
    An C{O_PATH} descriptor of the directory at the absolute C{path},
    reached without following any symlink (one C{openat2} with
    C{RESOLVE_NO_SYMLINKS}, else an C{O_NOFOLLOW} open per component from
    C{/}).  Never waits for anything but the filesystem: call it in a worker.

    @raise OSError: the path is missing, not a directory, or has a symlink
        on the way (C{ELOOP} or C{ENOTDIR}).
    """
    probeSystemCalls()
    encoded = os.fsencode(path)
    syscall = _openat2SyscallFunction
    if syscall is not None and _openat2Function is not None:
        fd = int(
            syscall(
                _SYS_OPENAT2,
                _AT_FDCWD,
                encoded,
                ctypes.addressof(_HOW_FOLDER),
                ctypes.sizeof(_HOW_FOLDER),
            )
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return fd
    fd = os.open("/", _ROOT)
    try:
        for component in splitPath(encoded):
            if component == b"..":
                raise OSError(errno.EINVAL, "A share's path is absolute and canonical", path)
            following = os.open(component, _WALK, dir_fd=fd)
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def movedMessage(share: Share) -> str:
    """
    The sentence that says C{share}'s folder is no longer at its path.
    """
    return (
        f"The folder of the share {os.fsdecode(share.name)!r} is no longer at "
        f"{share.path}: its files are not served until that folder is back there "
        "(a folder deleted and made again, or remounted, needs a restart)."
    )


class ConfinedFilesystem:
    """
    The blocking, confined filesystem over a share set.

    Paths are client (virtual) bytes.  See the module docstring for the
    confinement rules.
    """

    def __init__(self, shares: ShareSet, *, umask: int = 0o022) -> None:
        self.shares = shares
        self.umask = umask & 0o777
        self._processUmask = _processUmask()
        probeSystemCalls()
        self._started = int(time.time())
        # What _lookup found for a client path (bounded: cleared when full).
        self._located: dict[bytes, tuple[Share, tuple[bytes, ...]] | VirtualDirectory] = {}
        # The mount of each share on a local filesystem (by its path): its
        # attributes may be read in the reactor thread (statCached).
        self._localMounts: dict[str, MountKey] = {}
        if _memory is not None:
            for share in shares.shares:
                try:
                    mount = _memory.localMount(share.path)
                except OSError:
                    mount = None
                if mount is not None:
                    self._localMounts[share.path] = mount
        # A descriptor of each share's folder, by its path, with the
        # folder's identity (st_dev, st_ino) and when its path last led
        # there: requests resolve below it instead of opening the folder
        # each time.  The path is checked again every ROOT_RECHECK seconds
        # without following any symlink; while it leads anywhere else the
        # share serves nothing (ENOENT), and the folder served never
        # changes: the one opened first, kept open (so its inode number
        # cannot be reused).
        self._roots: dict[str, tuple[int, int, int, float]] = {}
        self._rootLock = threading.Lock()
        # The paths of the shares whose folder is not there (reported).
        self._moved: set[str] = set()
        #: Called (in whatever thread noticed it) once each time a share's
        #: path stops leading to its folder, with the share and a sentence
        #: saying so; L{None}: nobody is told.
        self.shareMoved: Callable[[Share, str], None] | None = None
        for share in shares.shares:
            try:
                self._root(share)
            except OSError:
                pass  # each request fails until the folder is there
        weakref.finalize(self, _closeAll, self._roots)

    # -- walking --------------------------------------------------------

    def _root(self, share: Share) -> int:
        """
        The descriptor of C{share}'s folder (owned here: never close it).
        May wait for the filesystem every L{ROOT_RECHECK} seconds: never on
        the reactor thread.

        @raise FileNotFoundError: the share's path leads nowhere, or not to
            the folder it led to first (a symlink on the way included).
        """
        entry = self._roots.get(share.path)
        now = time.monotonic()
        if entry is not None and now - entry[3] < ROOT_RECHECK:
            return entry[0]
        with self._rootLock:
            entry = self._roots.get(share.path)
            try:
                fd = _openFolder(share.path)
            except OSError:
                if entry is not None:
                    self._lost(share)
                raise FileNotFoundError(
                    errno.ENOENT, "The share's folder is not at its path"
                ) from None
            try:
                found = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if entry is None:
                self._roots[share.path] = (fd, found.st_dev, found.st_ino, now)
                return fd
            os.close(fd)
            if (found.st_dev, found.st_ino) != entry[1:3]:
                self._lost(share)
                raise FileNotFoundError(errno.ENOENT, "The share's folder is not at its path")
            self._roots[share.path] = (*entry[:3], now)
            self._moved.discard(share.path)
            return entry[0]

    def _lost(self, share: Share) -> None:
        # Once per loss: again only after the folder was back.
        if share.path in self._moved:
            return
        self._moved.add(share.path)
        report = self.shareMoved
        if report is not None:
            report(share, movedMessage(share))

    def _inMemory(self, share: Share) -> tuple[MountKey, int] | None:
        """
        The mount of C{share} and its folder's descriptor, if what is below
        may be read from the kernel's memory (see L{statCached}): the share
        is on a local filesystem and its path was checked lately.  Never
        blocks.
        """
        mount = self._localMounts.get(share.path)
        entry = self._roots.get(share.path)
        if mount is None or entry is None or time.monotonic() - entry[3] >= ROOT_RECHECK:
            return None
        return mount, entry[0]

    def _lookup(
        self, path: bytes, *, creating: bool = False
    ) -> tuple[Share, tuple[bytes, ...]] | VirtualDirectory:
        # Lexical only (the share set never changes): clients name the
        # same paths again and again (sshfs: LSTAT, OPEN, SETSTAT, ...).
        found = self._located.get(path)
        if found is not None:
            return found
        components = self.shares.normalize(path)
        try:
            found = self.shares.locate(components)
        except FileNotFoundError:
            # A new entry in a virtual directory: refused, not missing.
            if creating and components:
                parent = self.shares.locate(components[:-1])
                if isinstance(parent, VirtualDirectory):
                    raise _denied("The virtual directories above the shares are read-only")
            raise
        located = self._located
        if len(located) >= _CACHE_SIZE:
            located.clear()
        located[path] = found
        return found

    def place(self, path: bytes, *, follow: bool, creating: bool = False) -> _Placed:
        """
        Resolve C{path} to a confined location, for a C{with} statement:
        C{with fs.place(path, follow=True) as found:}.  The descriptors it
        opened are closed when the statement ends.

        @param follow: resolve a final symlink (inside its share) too.
        @param creating: the caller means to create the entry, so a new name
            in a virtual directory is refused (EACCES) rather than missing.
        @raise PermissionError: a symlink on the way leads out of the share.
        @raise OSError: a directory on the way is missing or not a directory.
        """
        found = self._lookup(path, creating=creating)
        if isinstance(found, VirtualDirectory):
            return _Placed(found, [])
        fds: list[int] = []
        try:
            return _Placed(self._walk(found[0], found[1], follow, fds), fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _walk(
        self,
        share: Share,
        components: tuple[bytes, ...],
        follow: bool,
        fds: list[int],
        *,
        lenient: bool = False,
    ) -> Place:
        root = self._root(share)
        if _openat2Function is not None and len(components) > 1:
            place = self._fastWalk(share, root, components, follow, fds)
            if place is not None:
                return place
        # stack[1:] are the descriptors at the end of fds (those the fast
        # path left come first): a directory left by ".." or an absolute
        # link is closed at once, so one walk holds at most one descriptor
        # per component of the directory it is in.
        stack = [root]
        first = len(fds)
        names: list[bytes] = []
        # Never empty or "." (normalised, and filtered from link targets).
        pending = list(components)
        hops = _MAX_HOPS
        walked = 0

        # Lenient mode (realPath): the state before the first symlink, so
        # that a link out of the share is reported by its own name.
        firstLink: tuple[tuple[bytes, ...], list[bytes]] | None = None

        def fail(error: OSError, component: bytes) -> OSError:
            if lenient:
                if isinstance(error, PermissionError) and firstLink is not None:
                    raise _Unresolved(*firstLink)
                raise _Unresolved(tuple(names), [component] + pending)
            return error

        while pending:
            component = pending.pop(0)
            walked += 1
            if walked > MAX_WALKED:
                raise fail(OSError(errno.ELOOP, "Too many path components"), component)
            if component == b"..":
                if not names:
                    raise fail(_denied("A symlink leads out of the share"), component)
                names.pop()
                stack.pop()
                os.close(fds.pop())
                continue
            last = not pending
            parent = stack[-1]
            if last:
                if not follow:
                    return Place(share, parent, component, tuple(names) + (component,))
                try:
                    st = os.stat(component, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError as e:
                    if lenient:
                        raise _Unresolved(tuple(names), [component])
                    # The parent exists: a new entry may be made here.
                    del e
                    return Place(share, parent, component, tuple(names) + (component,))
                if not stat.S_ISLNK(st.st_mode):
                    return Place(share, parent, component, tuple(names) + (component,), st)
            else:
                try:
                    fd = os.open(component, _WALK, dir_fd=parent)
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise fail(e, component)
                    try:
                        st = os.stat(component, dir_fd=parent, follow_symlinks=False)
                    except OSError as e2:
                        raise fail(e2, component)
                    if not stat.S_ISLNK(st.st_mode):
                        raise fail(NotADirectoryError(errno.ENOTDIR, "Not a directory"), component)
                else:
                    fds.append(fd)
                    stack.append(fd)
                    names.append(component)
                    continue
            # A symlink: expand it, if it stays in the share.
            if firstLink is None:
                firstLink = (tuple(names), [component] + pending)
            hops -= 1
            if hops < 0:
                raise fail(OSError(errno.ELOOP, "Too many levels of symbolic links"), component)
            try:
                target = os.readlink(component, dir_fd=parent)
            except OSError as e:
                raise fail(e, component)
            parts = splitPath(target)
            if target.startswith(b"/"):
                rootParts = splitPath(os.fsencode(share.path))
                if parts[: len(rootParts)] != rootParts:
                    raise fail(_denied("A symlink leads out of the share"), component)
                del stack[1:]
                for fd in fds[first:]:
                    os.close(fd)
                del fds[first:]
                names.clear()
                pending[:0] = parts[len(rootParts) :]
            else:
                pending[:0] = parts
        # The path ended on a directory reached through a symlink or "..".
        if not names:
            return Place(share, root, b".", ())
        return Place(share, stack[-2], names[-1], tuple(names))

    def _fastWalk(
        self,
        share: Share,
        root: int,
        components: tuple[bytes, ...],
        follow: bool,
        fds: list[int],
    ) -> Place | None:
        """
        The place of C{components} (normalised: no C{..}, C{.} or empty
        component) when its directory is reached without any symlink, with
        one C{openat2} confined below C{root}; L{None} when the walk must
        be done component by component (a symlink on the way or at the end,
        a missing directory, an error).
        """
        assert _openat2Function is not None
        name = components[-1]
        parent = _openat2Function(root, b"/".join(components[:-1]))
        if parent < 0:
            return None
        fds.append(parent)
        st = None
        if follow:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                pass  # a new entry may be made here
            except OSError:
                return None
            else:
                if stat.S_ISLNK(st.st_mode):
                    return None
        return Place(share, parent, name, components, st)

    def _writable(self, found: Place | VirtualDirectory) -> Place:
        if isinstance(found, VirtualDirectory):
            raise _denied("The virtual directories above the shares are read-only")
        if found.share.readOnly:
            raise _readOnly()
        return found

    def _entry(self, found: Place | VirtualDirectory) -> Place:
        """
        A place that names a removable/renamable entry (not a share root).
        """
        place = self._writable(found)
        if place.isRoot:
            raise _denied("A share itself cannot be removed or renamed")
        return place

    # -- attributes -----------------------------------------------------

    def _virtualAttrs(self) -> Attrs:
        return {
            "size": 0,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "permissions": stat.S_IFDIR | 0o555,
            "atime": self._started,
            "mtime": self._started,
        }

    def statCached(self, path: bytes, *, follow: bool = True) -> Attrs | None:
        """
        STAT (C{follow}) or LSTAT answered from the kernel's caches without
        ever blocking, for the reactor thread: the path must resolve with
        no symlink (a final one too, for STAT), no mount crossing and
        nothing the kernel would have to read from disk, on a share on a
        local filesystem.  Same answers as L{stat}.

        @return: the attributes, or L{None} when L{stat} must do it.
        @raise FileNotFoundError: the kernel knows the path does not exist.
        """
        if _memory is None:
            return None
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return self._virtualAttrs()
        share, components = found
        inMemory = self._inMemory(share)
        if inMemory is None:
            return None
        mount, root = inMemory
        if components:
            fd = _memory.openBeneath(root, b"/".join(components))
            if fd < 0:
                if ctypes.get_errno() == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                return None
            try:
                got = _memory.statx(fd)
            finally:
                os.close(fd)
        else:
            got = _memory.statx(root)
        if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
            return None
        if stat.S_ISLNK(got.mode) and (follow or self._mapsLinks):
            return None  # followed, or its size is what READLINK gives
        return _attrsFromStatx(got)

    def openDirectoryCached(self, path: bytes) -> ConfinedDirectory | None:
        """
        OPENDIR without ever blocking, for the reactor thread, under the
        same conditions as L{statCached} (opening a directory reads
        nothing on a local filesystem; listing it is left to the caller,
        in a worker).

        @return: the open directory, or L{None} when L{openDirectory} must
            do it (a virtual directory, a symlink on the way, ...).
        @raise FileNotFoundError: the kernel knows the path does not exist.
        """
        if _memory is None:
            return None
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return None
        share, components = found
        inMemory = self._inMemory(share)
        if inMemory is None:
            return None
        mount, root = inMemory
        fd = _memory.openDirectoryBeneath(root, b"/".join(components) or b".")
        failure = ctypes.get_errno()
        if fd < 0:
            if failure == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            return None
        try:
            got = _memory.statx(fd)
            if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
                os.close(fd)
                return None
            return ConfinedDirectory(fd, now=time.time(), linkTargets=self._linkTargets)
        except BaseException:
            os.close(fd)
            raise

    def fstatCached(self, confined: ConfinedFile) -> Attrs | None:
        """
        FSTAT of an open file from memory, for the reactor thread: on a
        share on a local filesystem only (see L{statCached}).

        @return: the attributes, or L{None} when L{ConfinedFile.stat} must
            do it.
        """
        if _memory is None or confined.closed:
            return None
        mount = self._localMounts.get(confined.share.path)
        if mount is None:
            return None
        got = _memory.statx(confined.fd)
        if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
            return None
        return _attrsFromStatx(got)

    def _ringRoot(self, path: bytes, *, creating: bool = False) -> tuple[Share, int, bytes] | None:
        # The share, its folder's descriptor and the relative path for a
        # call in the kernel, without blocking: the folder checked lately,
        # an entry below it.  None: the call runs in a thread.
        if _openat2Function is None:
            return None
        try:
            found = self._lookup(path, creating=creating)
        except OSError:
            return None
        if isinstance(found, VirtualDirectory) or not found[1]:
            return None
        share, components = found
        entry = self._roots.get(share.path)
        if entry is None or time.monotonic() - entry[3] >= ROOT_RECHECK:
            return None
        return share, entry[0], b"/".join(components)

    def ringStat(
        self, path: bytes, *, follow: bool = True, cachedFirst: bool = True
    ) -> RingCall | None:
        """
        L{stat} as a call in the kernel (see L{conchshare.uring}), when
        it can be one; L{None} otherwise.

        @param cachedFirst: try L{statCached} first, when the call starts
            (L{False}: the caller just did, and the call starts at once).
        """
        found = self._ringRoot(path)
        if found is None:
            return None
        cached = partial(self.statCached, path, follow=follow) if cachedFirst else None
        # A symlink met is left to stat (falling back) where it is followed
        # or its size is what READLINK gives.
        linkFallback = follow or self._mapsLinks
        return _RingStat(found[1], found[2], linkFallback, cached)

    def ringOpenFile(self, path: bytes, flags: int, attrs: Mapping[str, object]) -> RingCall | None:
        """
        L{openFile} as a call in the kernel, for the creation of a new file
        (FXF_CREAT) in a writable share; L{None} otherwise.
        """
        if not flags & FXF_CREAT:
            return None
        mode = _number(attrs, "permissions", 0o666) & 0o777 & ~self.umask
        if mode & self._processUmask:
            return None  # needs an fchmod after the open
        found = self._ringRoot(path, creating=True)
        if found is None or found[0].readOnly:
            return None
        share, root, relative = found
        osFlags = self._osFlags(flags) & ~os.O_NONBLOCK
        how = _openHow(osFlags | os.O_CREAT | os.O_EXCL | _CLOEXEC, mode)
        append = bool(flags & FXF_APPEND)
        virtualPath = share.virtualPath + b"/" + relative

        def made(fd: int) -> ConfinedFile:
            return ConfinedFile(fd, share, append=append, virtualPath=virtualPath)

        return _RingCreate(root, relative, how, bool(flags & FXF_EXCL), made)

    def _direct(
        self,
        path: bytes,
        flags: int,
        mode: int = 0,
        *,
        writing: bool = False,
        creating: bool = False,
    ) -> int:
        """
        The fast path of a request on one entry: C{path}'s entry opened with
        one openat2 below its share's root (see L{_openEntry}), when no
        symlink is on the way and the entry is not a share's root.

        @return: the descriptor, or -1 when the caller must take the slow
            path (the walk), which follows symlinks that stay in the share
            and reports any other failure as it should.
        @raise FileNotFoundError: no such entry (nor symlink on the way).
        @param writing: the request changes the entry (refused in a
            read-only share).
        @param creating: the entry is to be created (see L{place}).
        @raise PermissionError: the request would change a read-only share.
        """
        if _openat2Function is None:
            return -1
        found = self._lookup(path, creating=creating)
        if isinstance(found, VirtualDirectory) or not found[1]:
            return -1
        share, components = found
        if writing and share.readOnly:
            raise _readOnly()
        fd = _openEntry(self._root(share), b"/".join(components), flags | _CLOEXEC, mode)
        if fd < 0 and ctypes.get_errno() == errno.ENOENT and not flags & os.O_CREAT:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return fd

    def stat(self, path: bytes, *, follow: bool = True) -> Attrs:
        """
        STAT (C{follow}) or LSTAT.
        """
        fd = self._direct(path, _ENTRY)
        if fd >= 0:
            try:
                entry = os.fstat(fd)
                if not (follow and stat.S_ISLNK(entry.st_mode)):
                    return self._linkAttrs(attrsFromStat(entry), fd, b"")
            finally:
                os.close(fd)
        with self.place(path, follow=follow) as found:
            if isinstance(found, VirtualDirectory):
                return self._virtualAttrs()
            st = found.seen
            if st is None:
                st = os.stat(found.name, dir_fd=found.parent, follow_symlinks=False)
            return self._linkAttrs(attrsFromStat(st), found.parent, found.name)

    def setAttrs(self, path: bytes, attrs: Mapping[str, object], *, follow: bool = True) -> None:
        """
        SETSTAT (C{follow}) or lsetstat: size, uid/gid, permissions,
        atime/mtime.
        """
        flags = (os.O_WRONLY if "size" in attrs else os.O_RDONLY) | os.O_NONBLOCK
        fd = self._direct(path, flags, writing=True)
        if fd >= 0:
            # Not a symlink (refused by the open), and open for the change.
            try:
                _setAttrsOnFd(fd, attrs)
            finally:
                os.close(fd)
            return
        with self.place(path, follow=follow) as found:
            place = self._writable(found)
            st = place.seen
            if st is None:
                st = os.stat(place.name, dir_fd=place.parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                # lsetstat on a symlink: only what Linux can do to a link.
                if "size" in attrs or "permissions" in attrs:
                    raise OSError(errno.EOPNOTSUPP, "Operation not supported on a symlink")
                if "uid" in attrs or "gid" in attrs:
                    os.chown(
                        place.name,
                        _number(attrs, "uid", -1),
                        _number(attrs, "gid", -1),
                        dir_fd=place.parent,
                        follow_symlinks=False,
                    )
                if "atime" in attrs and "mtime" in attrs:
                    os.utime(
                        place.name,
                        (_number(attrs, "atime"), _number(attrs, "mtime")),
                        dir_fd=place.parent,
                        follow_symlinks=False,
                    )
                return
            flags = os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
            if "size" in attrs:
                fd = os.open(place.name, os.O_WRONLY | flags, dir_fd=place.parent)
            else:
                try:
                    fd = os.open(place.name, os.O_RDONLY | flags, dir_fd=place.parent)
                except PermissionError:
                    if not hasattr(os, "O_PATH"):
                        raise
                    fd = os.open(place.name, os.O_PATH | flags, dir_fd=place.parent)
                    try:
                        # An O_PATH descriptor accepts no fchmod: go through
                        # its /proc link, which names this very inode.
                        self._setAttrsByProc(fd, attrs)
                    finally:
                        os.close(fd)
                    return
            try:
                _setAttrsOnFd(fd, attrs)
            finally:
                os.close(fd)

    def _setAttrsByProc(self, fd: int, attrs: Mapping[str, object]) -> None:
        proc = f"/proc/self/fd/{fd}"
        if "uid" in attrs or "gid" in attrs:
            os.chown(proc, _number(attrs, "uid", -1), _number(attrs, "gid", -1))
        if "permissions" in attrs:
            os.chmod(proc, _permissions(attrs, fd))
        if "atime" in attrs and "mtime" in attrs:
            os.utime(proc, (_number(attrs, "atime"), _number(attrs, "mtime")))

    def statVFS(self, path: bytes) -> dict[str, int]:
        """
        statvfs@openssh.com.  A virtual directory reports the first share
        under it, read-only.
        """
        with self.place(path, follow=True) as found:
            if isinstance(found, VirtualDirectory):
                share = next(
                    s
                    for s in self.shares.shares
                    if s.components[: len(found.components)] == found.components
                )
                # The folder served (its path may lead elsewhere by now).
                return _statvfs(self._root(share), True)
            # Any kind of entry (statvfs of a file is fine); a symlink is
            # opened itself, never followed.
            flags = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK)
            fd = os.open(found.name, flags | os.O_NOFOLLOW | _CLOEXEC, dir_fd=found.parent)
            try:
                return _statvfs(fd, found.share.readOnly)
            finally:
                os.close(fd)

    # -- files and directories ------------------------------------------

    def openFile(self, path: bytes, flags: int, attrs: Mapping[str, object]) -> ConfinedFile:
        """
        OPEN with SFTP v3 C{FXF_*} flags.  A created file gets the requested
        permissions (default 0666) minus the umask.
        """
        mutating = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC)
        osFlags = self._osFlags(flags)
        # Like OpenSSH: no set-id or sticky bits on create.
        mode = _number(attrs, "permissions", 0o666) & 0o777 & ~self.umask
        if flags & FXF_CREAT:
            # A new file, with no symlink on the way: one openat2.
            fd = self._direct(
                path,
                (osFlags & ~os.O_NONBLOCK) | os.O_CREAT | os.O_EXCL,
                mode,
                writing=True,
                creating=True,
            )
            if fd >= 0:
                share, components = self._lookup(path, creating=True)  # type: ignore[misc]
                return self._created(fd, share, components, flags, mode)
            if ctypes.get_errno() == errno.EEXIST and flags & FXF_EXCL:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        with self.place(path, follow=True, creating=bool(flags & FXF_CREAT)) as found:
            if mutating:
                place = self._writable(found)
            elif isinstance(found, VirtualDirectory):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
            else:
                place = found
            if flags & FXF_CREAT:
                try:
                    # A new regular file: no FIFO to guard against, so
                    # blocking from the start (no fstat, no fcntl).
                    fd = os.open(
                        place.name,
                        (osFlags & ~os.O_NONBLOCK) | os.O_CREAT | os.O_EXCL,
                        mode,
                        dir_fd=place.parent,
                    )
                except FileExistsError:
                    if flags & FXF_EXCL:
                        raise
                else:
                    return self._created(fd, place.share, place.components, flags, mode)
            fd = os.open(place.name, osFlags, dir_fd=place.parent)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    # O_NONBLOCK only guarded the open against FIFOs.
                    os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return ConfinedFile(
                fd, place.share, append=bool(flags & FXF_APPEND), virtualPath=place.virtualPath
            )

    @staticmethod
    def _osFlags(flags: int) -> int:
        # The open(2) flags of an OPEN's FXF_* flags (not O_CREAT: see
        # openFile).
        if flags & (FXF_WRITE | FXF_APPEND):
            osFlags = os.O_RDWR if flags & FXF_READ else os.O_WRONLY
        else:
            osFlags = os.O_RDONLY
        if flags & FXF_APPEND:
            osFlags |= os.O_APPEND
        if flags & FXF_TRUNC:
            osFlags |= os.O_TRUNC
        return osFlags | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC

    def _created(
        self, fd: int, share: Share, components: tuple[bytes, ...], flags: int, mode: int
    ) -> ConfinedFile:
        # The file open on fd was just created with mode (before the
        # process umask): the file of an OPEN with FXF_CREAT.
        try:
            if mode & self._processUmask:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return ConfinedFile(
            fd,
            share,
            append=bool(flags & FXF_APPEND),
            virtualPath=b"/".join((share.virtualPath,) + components),
        )

    def openDirectory(self, path: bytes) -> ConfinedDirectory:
        """
        OPENDIR.
        """
        now = time.time()
        with self.place(path, follow=True) as found:
            if isinstance(found, VirtualDirectory):
                entries = []
                for child in found.children:
                    try:
                        attrs = self.stat(found.virtualPath.rstrip(b"/") + b"/" + child)
                    except OSError:
                        # A share whose folder went away is still listed.
                        attrs = self._virtualAttrs()
                    entries.append((child, longname(child, attrs, now=now), attrs))
                return ConfinedDirectory(None, entries, now=now)
            fd = os.open(found.name, _LIST, dir_fd=found.parent)
            try:
                return ConfinedDirectory(fd, now=now, linkTargets=self._linkTargets)
            except BaseException:
                os.close(fd)
                raise

    def makeDirectory(self, path: bytes, attrs: Mapping[str, object]) -> None:
        """
        MKDIR with the requested permissions (default 0777) minus the umask.
        """
        # Never set-user-id (set-group-id is fine on a directory).
        mode = _number(attrs, "permissions", 0o777) & 0o7777 & ~self.umask & ~stat.S_ISUID
        with self.place(path, follow=False, creating=True) as found:
            place = self._entry(found)
            os.mkdir(place.name, mode, dir_fd=place.parent)
            if mode & self._processUmask:
                fd = os.open(place.name, _LIST, dir_fd=place.parent)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)

    def removeDirectory(self, path: bytes) -> None:
        """
        RMDIR, never recursive.
        """
        with self.place(path, follow=False) as found:
            place = self._entry(found)
            os.rmdir(place.name, dir_fd=place.parent)

    def removeFile(self, path: bytes) -> None:
        """
        REMOVE (a symlink itself is removed, not its target).
        """
        with self.place(path, follow=False) as found:
            place = self._entry(found)
            os.unlink(place.name, dir_fd=place.parent)

    def rename(self, oldPath: bytes, newPath: bytes, *, overwrite: bool) -> None:
        """
        RENAME (C{overwrite=False}: an existing C{newPath} is an error, as
        SFTP v3 requires) or posix-rename (C{overwrite=True}).
        """
        with (
            self.place(oldPath, follow=False) as old,
            self.place(newPath, follow=False, creating=True) as new,
        ):
            source = self._entry(old)
            destination = self._entry(new)
            if overwrite:
                os.rename(
                    source.name,
                    destination.name,
                    src_dir_fd=source.parent,
                    dst_dir_fd=destination.parent,
                )
            else:
                _renameNoReplace(source.parent, source.name, destination.parent, destination.name)

    def hardLink(self, oldPath: bytes, newPath: bytes) -> None:
        """
        hardlink@openssh.com: C{newPath} becomes a link to C{oldPath} (a
        symlink is linked itself, never followed).  Both shares must be
        writable, or a link would let the read-only file be written.
        """
        with (
            self.place(oldPath, follow=False) as old,
            self.place(newPath, follow=False, creating=True) as new,
        ):
            source = self._entry(old)
            destination = self._entry(new)
            os.link(
                source.name,
                destination.name,
                src_dir_fd=source.parent,
                dst_dir_fd=destination.parent,
                follow_symlinks=False,
            )

    # -- symlinks and names ---------------------------------------------

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        """
        SYMLINK, storing what READLINK gives back as it was written: a
        relative target as given; an absolute target whose virtual path lies
        in a share as that share's real path followed by the rest of the
        target exactly as written (so the link works on this side too, and
        breaks if the folder moves); any other target as given (a link that
        leads out of its share is never followed).
        """
        if b"\0" in targetPath:
            raise OSError(errno.EINVAL, "The target contains a NUL byte")
        with self.place(linkPath, follow=False, creating=True) as found:
            place = self._entry(found)
            os.symlink(self._storedTarget(targetPath), place.name, dir_fd=place.parent)

    def _storedTarget(self, target: bytes) -> bytes:
        # The target SYMLINK stores for the target a client gave.
        if not target.startswith(b"/"):
            return target
        try:
            located = self.shares.locate(self.shares.normalize(target))
        except OSError:
            return target  # not a virtual path: stored as given
        if not isinstance(located, tuple):
            return target  # a virtual folder above the shares
        share, rest = located
        real = os.fsencode(share.path).rstrip(b"/")
        # The share's virtual components as written, "//" and "." between
        # them allowed; the rest follows them exactly as written.
        wanted = list(share.components)
        at = 0
        while wanted:
            slash = target.find(b"/", at + 1)
            component = target[at + 1 : len(target) if slash < 0 else slash]
            if component == wanted[0]:
                del wanted[0]
            elif component not in (b"", b"."):
                break
            if slash < 0:
                at = len(target)
                break
            at = slash
        if wanted:
            # Reached through ".." (or the like): the rest as normalised.
            return b"/".join((real, *rest)) if rest else real or b"/"
        return (real + target[at:]) or b"/"

    def virtualTarget(self, target: bytes) -> bytes:
        """
        What READLINK answers for a stored symlink target: an absolute
        target that begins with a share's real path (the longest) as that
        share's virtual path followed by the same rest; anything else as
        stored.
        """
        if not target.startswith(b"/"):
            return target
        best: tuple[int, Share] | None = None
        for share in self.shares.shares:
            real = os.fsencode(share.path).rstrip(b"/")
            if (target == real or target.startswith(real + b"/")) and (
                best is None or len(real) > best[0]
            ):
                best = (len(real), share)
        if best is None:
            return target
        return best[1].virtualPath + target[best[0] :]

    @cached_property
    def _mapsLinks(self) -> bool:
        # Whether virtualTarget may change a target's length (a share's real
        # path differs from its virtual path); if not, symlinks' sizes are
        # reported as they are, without a readlink each.  (A bool, not the
        # bound method: no reference cycle.  The shares never change.)
        return any(
            os.fsencode(share.path).rstrip(b"/") != share.virtualPath
            for share in self.shares.shares
        )

    @property
    def _linkTargets(self) -> Callable[[bytes], bytes] | None:
        # virtualTarget where it may change a target's length, else None.
        return self.virtualTarget if self._mapsLinks else None

    def _linkAttrs(self, attrs: Attrs, parent: int, name: bytes) -> Attrs:
        # LSTAT of a symlink: its size is the length of what READLINK gives.
        if not stat.S_ISLNK(_number(attrs, "permissions", 0)):
            return attrs
        linkTargets = self._linkTargets
        if linkTargets is None:
            return attrs
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError:
            return attrs
        return {**attrs, "size": len(linkTargets(target))}

    def readLink(self, path: bytes) -> bytes:
        """
        READLINK: the stored target, mapped by L{virtualTarget}.
        """
        with self.place(path, follow=False) as found:
            if isinstance(found, VirtualDirectory):
                raise OSError(errno.EINVAL, "Not a symbolic link")
            target = os.readlink(found.name, dir_fd=found.parent)
        return self.virtualTarget(target)

    def realPath(self, path: bytes) -> bytes:
        """
        REALPATH: the canonical virtual path.  Symlinks inside the share are
        resolved; where resolution stops (missing entry, link out of the
        share) the rest is kept lexically.  Never a real path.
        """
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return found.virtualPath
        share, components = found
        fds: list[int] = []
        try:
            try:
                place = self._walk(share, components, True, fds, lenient=True)
                resolved = list(place.components)
            except _Unresolved as stop:
                resolved = list(stop.components)
                for component in stop.rest:
                    if component == b"..":
                        if resolved:
                            resolved.pop()
                    elif component not in (b"", b"."):
                        resolved.append(component)
        finally:
            for fd in fds:
                os.close(fd)
        return b"/".join([share.virtualPath] + resolved)

    # -- extensions -----------------------------------------------------

    def copyData(
        self,
        source: ConfinedFile,
        readOffset: int,
        length: int,
        destination: ConfinedFile,
        writeOffset: int,
        limit: int | None = None,
    ) -> int:
        """
        copy-data: C{length} bytes (0: to the end) from C{source} to
        C{destination}, or their first C{limit} bytes (the rest is copied
        by calling again with the offsets and length moved on).

        @return: the count copied: less than C{limit} (or no C{limit})
            means the copy is complete.
        @raise OSError: the destination's share is read-only, or the
            ranges overlap within one file (C{EBUSY}), or a read or write
            failed.
        """
        if destination.share.readOnly:
            raise _readOnly()
        # Within one file only between ranges that do not overlap.  Copying
        # "to the end" past the read offset would otherwise read back what it
        # wrote, for ever, filling the disk (OpenSSH refuses one file always).
        a, b = os.fstat(source.fd), os.fstat(destination.fd)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and (
            length == 0 or (readOffset < writeOffset + length and writeOffset < readOffset + length)
        ):
            raise OSError(errno.EBUSY, "copy-data between overlapping ranges of one file")
        remaining = length if length else None
        if limit is not None:
            remaining = limit if remaining is None else min(remaining, limit)
        copied = 0
        while remaining is None or remaining > 0:
            size = 256 * 1024 if remaining is None else min(remaining, 256 * 1024)
            data = os.pread(source.fd, size, readOffset)
            if not data:
                break
            destination.write(writeOffset, data)
            readOffset += len(data)
            writeOffset += len(data)
            copied += len(data)
            if remaining is not None:
                remaining -= len(data)
        return copied
