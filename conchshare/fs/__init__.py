"""
The shares' file system: every system call made for a client, confined
below the shares' folders.

A layer of its own, below the protocols: it imports nothing from
L{conchshare.sftp} or L{conchshare.tunnel} and no Twisted (only the leaves
L{conchshare.shares} and L{conchshare.switches}).  Its modules, one idea
each:

  - L{syscalls<conchshare.fs.syscalls>}: the Linux-only calls through
    C{ctypes} (C{openat2}, C{statx}, C{renameat2}), found on first use;
  - L{resolver<conchshare.fs.resolver>}: the one resolver, and the rule of
    confinement, at its top;
  - L{attrs<conchshare.fs.attrs>}: an entry's attributes and the errors;
  - L{file<conchshare.fs.file>}, L{directory<conchshare.fs.directory>}: an
    open file, an open directory;
  - L{links<conchshare.fs.links>}: symlink targets between virtual and
    real paths;
  - L{filesystem<conchshare.fs.filesystem>}: L{ConfinedFilesystem}, every
    call by path;
  - L{ring<conchshare.fs.ring>}: a minimal io_uring, with no reactor in
    it, and L{ringcalls<conchshare.fs.ringcalls>}, the calls made there.
"""

from conchshare.fs.attrs import Attrs, attrsFromStat
from conchshare.fs.directory import ConfinedDirectory
from conchshare.fs.file import MAX_READ, ConfinedFile
from conchshare.fs.filesystem import ConfinedFilesystem
from conchshare.fs.resolver import MAX_WALKED, ROOT_RECHECK, Place, movedMessage
from conchshare.fs.ring import FALLBACK, RingCall

__all__ = [
    "FALLBACK",
    "MAX_READ",
    "MAX_WALKED",
    "ROOT_RECHECK",
    "Attrs",
    "ConfinedDirectory",
    "ConfinedFile",
    "ConfinedFilesystem",
    "Place",
    "RingCall",
    "attrsFromStat",
    "movedMessage",
]
