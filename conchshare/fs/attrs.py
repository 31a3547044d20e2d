"""
What the file system layer says about an entry, and its errors: the
attributes of a stat result (L{Attrs}), read from a request's attributes
with L{number}; every failure is an L{OSError} (its errno says what
happened) or L{EOFError}.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

from conchshare.fs.syscalls import Statx

__all__ = ["Attrs", "attrsFromStat", "attrsFromStatx", "denied", "number", "readOnly"]

#: An entry's attributes: C{size}, C{uid}, C{gid}, C{permissions} (the
#: whole C{st_mode}), C{atime} and C{mtime} (whole seconds, clamped to 32
#: bits); the same keys, any of them, in a request that sets attributes.
Attrs = dict[str, object]


def denied(message: str = "Permission denied") -> PermissionError:
    """
    The error of a call refused for a client (C{EACCES}).
    """
    return PermissionError(errno.EACCES, message)


def readOnly() -> PermissionError:
    """
    The error of a change asked in a read-only share.
    """
    return denied("The share is read-only")


def number(attrs: Mapping[str, object], key: str, default: int | None = None) -> int:
    """
    An integer attribute (C{default} when absent).

    @raise OSError: C{EINVAL}, the attribute is not an integer.
    """
    value = attrs.get(key, default)
    if not isinstance(value, int):
        raise OSError(errno.EINVAL, f"The attribute {key} is not an integer")
    return value


def u32(value: float) -> int:
    """
    C{value} clamped to an unsigned 32-bit integer.
    """
    return min(max(int(value), 0), 0xFFFFFFFF)


def makeAttrs(size: int, uid: int, gid: int, mode: int, atime: int, mtime: int) -> Attrs:
    """
    L{Attrs} of these fields; times (whole seconds) clamped to 32 bits.
    """
    if not (0 <= atime <= 0xFFFFFFFF and 0 <= mtime <= 0xFFFFFFFF):
        atime, mtime = u32(atime), u32(mtime)
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
    L{Attrs} of a stat result (times clamped to 32 bits).
    """
    # The whole seconds (as statx gives them): int(st.st_mtime) would
    # round up a time within 0.2 us of the next second (a double).
    return makeAttrs(
        st.st_size, st.st_uid, st.st_gid, st.st_mode, int(st[stat.ST_ATIME]), int(st[stat.ST_MTIME])
    )


def attrsFromStatx(found: Statx) -> Attrs:
    """
    L{Attrs} of a statx result.
    """
    return makeAttrs(found.size, found.uid, found.gid, found.mode, found.atime.sec, found.mtime.sec)
