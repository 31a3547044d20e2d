"""
How the file system's answers look in SFTP: the open flags of an OPEN
(C{FXF_*}) as C{open(2)} flags, the C{ls -l} long names OpenSSH's
C{ls_file} writes, and a directory's entries as a NAME reply carries them
(L{Listing}, read ahead in a worker and taken on the reactor thread).
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import stat
import struct
import time
from collections.abc import Callable, Mapping
from functools import lru_cache, partial
from typing import Any

from conchshare.fs import ConfinedDirectory
from conchshare.fs.attrs import number, u32
from conchshare.sftp import wire

__all__ = ["Entry", "Listing", "groupName", "longname", "openFlags", "userName"]

#: An entry of a NAME reply: file name, long name, attributes.
Entry = tuple[bytes, bytes, dict[str, object]]


def openFlags(flags: int) -> int:
    """
    The C{open(2)} flags of an OPEN's C{FXF_*} C{flags} (SFTP v3, 6.3):
    C{O_RDONLY}, C{O_WRONLY} or C{O_RDWR}, and C{O_APPEND}, C{O_CREAT},
    C{O_TRUNC}, C{O_EXCL} (the file system layer adds its own).
    """
    if flags & (wire.FXF_WRITE | wire.FXF_APPEND):
        osFlags = os.O_RDWR if flags & wire.FXF_READ else os.O_WRONLY
    else:
        osFlags = os.O_RDONLY
    if flags & wire.FXF_APPEND:
        osFlags |= os.O_APPEND
    if flags & wire.FXF_TRUNC:
        osFlags |= os.O_TRUNC
    if flags & wire.FXF_CREAT:
        osFlags |= os.O_CREAT
    if flags & wire.FXF_EXCL:
        osFlags |= os.O_EXCL
    return osFlags


@lru_cache(maxsize=1024)
def userName(uid: int) -> bytes:
    """
    The login name of C{uid}, or the empty string when unknown.  May wait
    for the name service: never on the reactor thread.
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


def longname(
    name: bytes, attrs: Mapping[str, object], nlink: int = 1, *, now: float | None = None
) -> bytes:
    """
    An C{ls -l} line, formatted like OpenSSH's C{ls_file}.

    @param name: the file name.
    @param attrs: its attributes (see L{conchshare.fs.attrsFromStat}).
    @param nlink: its link count.
    @param now: the current time (for the recent/old date format).
    """
    return _longname(
        name,
        number(attrs, "permissions", 0),
        nlink,
        number(attrs, "uid", 0),
        number(attrs, "gid", 0),
        number(attrs, "size", 0),
        number(attrs, "mtime", 0),
        time.time() if now is None else now,
    )


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


def _decodeEntry(data: bytes) -> Entry:
    reader = wire.Reader(data)
    filename = reader.string()
    line = reader.string()
    return filename, line, reader.attrs()


class Listing:
    """
    A directory of the file system (L{ConfinedDirectory}) as SFTP entries:
    C{(filename, longname, attrs)} (L{read}) or already in the form a NAME
    reply carries them (L{readEncoded}, what the SFTP core sends: a real
    directory's entries are made in that form, in one pass).  Blocking;
    not thread-safe.
    """

    def __init__(self, directory: ConfinedDirectory, *, now: float | None = None) -> None:
        """
        @param now: the time the long names' dates are relative to
            (default: now).
        """
        self.directory = directory
        self._now = time.time() if now is None else now
        # Read ahead by prefetch: encoded (a real directory), or entries (a
        # virtual one, whose attributes need not be what ATTRS carries).
        self._prefetched: list[bytes] = []
        self._prefetchedEntries: list[Entry] = []

    @property
    def closesAtOnce(self) -> bool:
        """
        See L{ConfinedDirectory.closesAtOnce}.
        """
        return self.directory.closesAtOnce

    @property
    def exhausted(self) -> bool:
        """
        Every entry was read (L{read} would raise L{EOFError} once
        L{takePrefetched} returns nothing).
        """
        return self.directory.exhausted

    def prefetch(self, maximum: int = 100) -> None:
        """
        Read the next batch ahead (see L{takePrefetched}); errors are left
        for L{read} to meet again.
        """
        try:
            if self.directory.virtual is not None:
                self._prefetchedEntries = self.read(maximum)
            else:
                self._prefetched = self.readEncoded(maximum)
        except (OSError, EOFError):
            pass

    def restart(self) -> None:
        """
        Forget what was read ahead and list a real directory again from its
        start, as it is now (call it before any entry was returned).
        """
        if self.directory.virtual is None:
            self._prefetched = []
        self.directory.restart()

    def takePrefetched(self, maximum: int = 100) -> list[Entry]:
        """
        Up to C{maximum} entries read ahead by L{prefetch}, without any
        system call (so from any thread that owns the directory).
        """
        if self._prefetched:
            return [_decodeEntry(entry) for entry in self.takePrefetchedEncoded(maximum)]
        entries = self._prefetchedEntries
        batch, self._prefetchedEntries = entries[:maximum], entries[maximum:]
        return batch

    def takePrefetchedEncoded(self, maximum: int = 100) -> list[bytes]:
        """
        L{takePrefetched}, encoded as L{readEncoded}.
        """
        if self._prefetchedEntries:
            return [wire.nameEntry(*entry) for entry in self.takePrefetched(maximum)]
        batch, self._prefetched = self._prefetched[:maximum], self._prefetched[maximum:]
        return batch

    def read(self, maximum: int = 100) -> list[Entry]:
        """
        Up to C{maximum} entries with lstat attributes and long names.

        @raise EOFError: no entries are left.
        """
        maximum = max(1, maximum)
        batch = self.takePrefetched(maximum)
        if batch:
            return batch
        if self.directory.virtual is None:
            return [_decodeEntry(entry) for entry in self.readEncoded(maximum)]
        now = self._now
        return [
            (name, longname(name, attrs, now=now), attrs)
            for name, attrs in self.directory.takeVirtual(maximum)
        ]

    def readEncoded(self, maximum: int = 100) -> list[bytes]:
        """
        L{read}, each entry encoded as in a NAME reply: the filename and
        long name as SFTP strings, then the ATTRS.

        @raise EOFError: no entries are left.
        """
        maximum = max(1, maximum)
        batch = self.takePrefetchedEncoded(maximum)
        if batch:
            return batch
        directory = self.directory
        if directory.virtual is not None:
            return [wire.nameEntry(*entry) for entry in self.read(maximum)]
        scanned = directory.scan(maximum)
        # Whole seconds (an int compares faster): for an integer mtime,
        # old < mtime <= now says the same with floor(old) and floor(now).
        now = self._now
        old, now = math.floor(now - _HALF_YEAR), math.floor(now)
        heads, dates = _heads, _dates
        seconds: dict[int, bytes] = {}
        u32pack, packers = _U32.pack, _entryPackers
        append = batch.append
        linkSize = directory.linkSize if directory.linkTargets is not None else None
        allAttrs = wire.ALL_ATTRS
        atime: int
        mtime: int
        # attrsFromStat, longname and the SFTP encoding, inline: this runs
        # per entry.
        for name, st in scanned:
            # The fields as integers (times in whole seconds), in one step.
            # (typeshed says float for the times: they are int.)
            mode, _, _, nlink, uid, gid, size, atime, mtime, _ = st  # type: ignore[assignment]
            if linkSize is not None and mode & 0o170000 == 0o120000:  # a symlink
                size = linkSize(name, size)
            if not (0 <= atime <= 0xFFFFFFFF and 0 <= mtime <= 0xFFFFFFFF):
                atime, mtime = u32(atime), u32(mtime)
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
                append(pack(n, name, m, line, allAttrs, size, uid, gid, mode, atime, mtime))
            except struct.error:
                attrs = _encodeAttrs(size, uid, gid, mode, atime, mtime)
                append(b"%s%s%s%s%s" % (u32pack(n), name, u32pack(m), line, attrs))
        return batch

    def checkLocal(self) -> None:
        """
        See L{ConfinedDirectory.checkLocal}.
        """
        self.directory.checkLocal()

    def close(self) -> None:
        """
        Close the directory (see L{ConfinedDirectory.close}).
        """
        self.directory.close()
