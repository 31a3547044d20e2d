"""
An open directory of a share, or a virtual one above the shares: its
entries and their status, in batches.  How they are shown to a client
(long names, a protocol's encoding) is the caller's business
(L{conchshare.sftp.entries}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

from conchshare.fs.attrs import Attrs
from conchshare.fs.syscalls import CachedCalls

__all__ = ["BATCH", "ConfinedDirectory", "Scanned"]

#: The entries of one batch, unless asked otherwise.
BATCH = 100

#: An entry of a real directory: its name and its own status (a symlink
#: not followed).
Scanned = tuple[bytes, os.stat_result]

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
# os.fsencode is str.encode() then, but for undecodable names (surrogates).
_FS_UTF8 = (_FS_ENCODING, _FS_ERRORS) == ("utf-8", "surrogateescape")


class ConfinedDirectory:
    """
    An open directory listing, real (a descriptor: L{scan}) or virtual (a
    list of names and attributes: L{virtual}).  Blocking; not thread-safe.
    """

    def __init__(
        self,
        fd: int | None,
        virtual: list[tuple[bytes, Attrs]] | None = None,
        *,
        linkTargets: Callable[[bytes], bytes] | None = None,
        memory: CachedCalls | None = None,
    ) -> None:
        """
        @param fd: the descriptor of a real directory (owned: closed by
            L{close}); L{None} for a virtual one.
        @param virtual: a virtual directory's entries.
        @param linkTargets: what READLINK answers for a stored symlink
            target, where that may change its length (see L{linkSize});
            L{None}: a symlink's size is as stored.
        @param memory: the calls that tell a local filesystem (L{checkLocal}).
        """
        self._fd = fd
        #: The virtual directory's entries not yet taken (L{None}: real).
        self.virtual = virtual
        self.linkTargets = linkTargets
        self._memory = memory
        #: Closing it waits for nothing: a virtual directory, or one of a
        #: local filesystem (see L{checkLocal}).
        self.closesAtOnce = fd is None
        self._scan: Iterator[os.DirEntry[str]] | None = None
        #: Every entry was read.
        self.exhausted = False
        if fd is not None:
            self._scan = os.scandir(fd)

    def scan(self, maximum: int = BATCH) -> list[Scanned]:
        """
        Up to C{maximum} (at least one) entries of a real directory, each
        with its C{lstat}: the last batch sets L{exhausted}.

        @raise EOFError: no entries are left (or a virtual directory).
        """
        maximum = max(1, maximum)
        scan = self._scan
        if scan is None or self._fd is None:
            self.exhausted = True
            raise EOFError("End of directory")
        encoding, errors, utf8 = _FS_ENCODING, _FS_ERRORS, _FS_UTF8
        batch: list[Scanned] = []
        append = batch.append
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
            append((name, st))
            if len(batch) >= maximum:
                break
        else:
            self.exhausted = True
        if not batch:
            raise EOFError("End of directory")
        return batch

    def takeVirtual(self, maximum: int = BATCH) -> list[tuple[bytes, Attrs]]:
        """
        Up to C{maximum} (at least one) entries of a virtual directory.

        @raise EOFError: none are left.
        """
        entries = self.virtual or []
        maximum = max(1, maximum)
        batch, self.virtual = entries[:maximum], entries[maximum:]
        self.exhausted = not self.virtual
        if not batch:
            raise EOFError("End of directory")
        return batch

    def linkSize(self, name: bytes, size: int) -> int:
        """
        The size to show of the symlink C{name} of a real directory: the
        length of what READLINK gives for it (C{size} where L{linkTargets}
        is L{None}, or the link cannot be read).
        """
        linkTargets = self.linkTargets
        if linkTargets is None:
            return size
        try:
            return len(linkTargets(os.readlink(name, dir_fd=self._fd)))
        except OSError:
            return size

    def restart(self) -> None:
        """
        List a real directory again from its start, as it is now.  A
        virtual directory's listing stays as it was read.
        """
        if self._fd is None:
            return
        if self._scan is not None:
            self._scan.close()  # type: ignore[attr-defined]
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._scan = os.scandir(self._fd)
        self.exhausted = False

    def checkLocal(self) -> None:
        """
        Find out whether closing it waits for nothing (L{closesAtOnce}):
        whether its filesystem is a local one.  May block: call it where
        it was opened, in a worker.
        """
        if self._fd is not None and self._memory is not None:
            self.closesAtOnce = self._memory.isLocal(self._fd)

    def close(self) -> None:
        if self._scan is not None:
            self._scan.close()  # type: ignore[attr-defined]
            self._scan = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.virtual = None
