"""
The open files and directories of the share avatar (L{ShareFile},
L{ShareDirectory}): each request on them becomes a call of
L{conchshare.fs} run by the avatar's engine
(L{conchshare.sftp.engine.ICallEngine}), under the keys of the
connection's order (L{conchshare.sftp.ordering}).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from typing import Any

from twisted.conch.interfaces import ISFTPFile
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from conchshare.fs import ConfinedFile, ConfinedFilesystem
from conchshare.sftp.engine import Batch, ICallEngine, Job
from conchshare.sftp.entries import Entry, Listing
from conchshare.sftp.interfaces import IEncodedDirectory
from conchshare.sftp.ordering import ConnectionOrder

__all__ = ["MERGED_BYTES", "MERGED_WRITES", "ShareDirectory", "ShareFile"]

#: The most WRITEs of a file written with one system call, and their most
#: bytes: 16 of OpenSSH's 256 KiB (the replies wait for the whole batch).
MERGED_WRITES = 16
MERGED_BYTES = 4 * 1024 * 1024


class _Writes(Batch):
    """
    The WRITEs of one open file that wait one behind the other at
    consecutive offsets: written with one C{pwritev} (sftp and sshfs
    pipeline their WRITEs; each alone cost a call, a wake-up and a hand-over
    between threads).  Each WRITE still gets its own result: when the
    system call fails, the WRITEs it wrote entirely succeed and the others
    are made again one by one, each failing (or not) on its own.
    """

    def __init__(self, confined: ConfinedFile) -> None:
        self.confined = confined

    def accepts(self, jobs: list[Job], job: Job) -> bool:
        if len(jobs) >= MERGED_WRITES:
            return False
        offset, data = job.args
        last = jobs[-1].args
        if offset != last[0] + len(last[1]):
            return False
        return len(data) + sum(len(taken.args[1]) for taken in jobs) <= MERGED_BYTES

    def call(self, jobs: list[Job]) -> None:
        pieces = [job.args[1] for job in jobs]
        offset = jobs[0].args[0]
        total = sum(map(len, pieces))
        written = 0
        try:
            while written < total:
                count = self.confined.writeVector(offset + written, pieces)
                if count <= 0:
                    raise OSError(errno.EIO, "Nothing written")
                written += count
                pieces = _after(pieces, count)
        except Exception:
            pass  # what is not entirely written is made again below
        end = 0
        for job in jobs:
            end += len(job.args[1])
            if end <= written:
                job.ok = True
                job.value = None
            else:
                job.call()


def _after(pieces: list[Any], count: int) -> list[Any]:
    """
    What is left of C{pieces} once their first C{count} bytes are written.
    """
    for index, piece in enumerate(pieces):
        if count < len(piece):
            return [memoryview(piece)[count:], *pieces[index + 1 :]]
        count -= len(piece)
    return []


@implementer(ISFTPFile)
class ShareFile:
    """
    An open file: an L{ISFTPFile} whose requests apply in the connection's
    order (see L{conchshare.sftp.ordering}).  Reads (and FSTAT) only share
    the file: they run in parallel with each other and with the
    connection's other readers, after the writers made before them and
    before the writers made after.
    """

    def __init__(
        self,
        confined: ConfinedFile,
        engine: ICallEngine,
        *,
        key: bytes | None = None,
        filesystem: ConfinedFilesystem | None = None,
        connection: ConnectionOrder | None = None,
    ) -> None:
        """
        @param confined: the open file.
        @param engine: what runs its blocking calls in order (the
            avatar's).
        @param key: its handle key in the order (default: a new one).
        @param filesystem: the filesystem it was opened in, to read its
            attributes from memory when it can (L{None}: never).
        @param connection: the order of the connection that opened it, so
            that its requests are ordered with the connection's others
            (default: its own).
        """
        self.confined = confined
        self.filesystem = filesystem
        #: What runs its blocking calls (the avatar's engine).
        self.engine = engine
        if connection is None:
            connection = ConnectionOrder()
        self._connection = connection
        self.key = key if key is not None else connection.handleKey()
        self._keys = (connection.key, self.key)
        self._writes = None if confined.append else _Writes(confined)

    def readChunk(self, offset: int, length: int) -> Deferred[bytes | bytearray]:
        """
        @return: a Deferred firing with up to C{length} bytes read at
            C{offset} (C{bytes}, or a C{bytearray}); it fails with
            L{EOFError} at the end of the file, or with L{OSError}.
        """
        engine = self.engine
        if engine.inlineReads and engine.sharedFree(*self._keys):
            # Data in the page cache is copied here, in the reactor thread,
            # without blocking (RWF_NOWAIT): no round trip to a worker.
            data = self.confined.readCached(offset, length)
            if data is not None:
                return succeed(data)
        return engine.run(self._keys, self.confined.read, offset, length, shared=True)

    #: The core may pass WRITE data as a memoryview (no copy).
    writesViews = True

    def writeChunk(self, offset: int, data: bytes) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once all of C{data} is written
            at C{offset} (at the end in append mode); or failing with
            L{OSError}.
        """
        engine = self.engine
        # ConnectionOrder.writer, inline: WRITE is the writer that counts
        # most (see ARCHITECTURE.rst, One request); its keys are ready.
        self._connection.changes += 1
        return engine.run(
            self._keys,
            self.confined.write,
            offset,
            data,
            batch=self._writes,
            ring=self.confined.ringWrite(offset, data) if engine.ring is not None else None,
        )

    def getAttrs(self) -> Deferred[dict[str, object]] | dict[str, object]:
        """
        @return: the file's attributes, when the kernel has them in memory,
            or a Deferred firing with them.
        """
        engine = self.engine
        if engine.inlineReads and self.filesystem is not None and engine.sharedFree(*self._keys):
            attrs = self.filesystem.fstatCached(self.confined)
            if attrs is not None:
                return attrs
        return engine.run(self._keys, self.confined.stat, shared=True)

    def setAttrs(self, attrs: Mapping[str, object]) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None}; fails with
            L{PermissionError} in a read-only share.
        """
        self._connection.writer()
        return self.engine.run(self._keys, self.confined.setAttrs, attrs)

    def statVFS(self) -> Deferred[dict[str, int]]:
        return self.engine.run(self._keys, self.confined.statVFS, shared=True)

    def fsync(self) -> Deferred[None]:
        return self.engine.run(self._keys, self.confined.fsync, shared=True)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once every earlier request
            on this file is done and the file is closed.
        """
        engine = self.engine
        # Not the connection key: closing changes nothing another request
        # sees, but a REMOVE (see conchshare.sftp.ordering).
        return engine.run(
            (self._connection.closeKey, self.key),
            self.confined.close,
            shared=True,
            solo=(self.key,),
            ring=self.confined.ringClose() if engine.ring is not None else None,
        )


@implementer(IEncodedDirectory)
class ShareDirectory:
    """
    An open directory: L{IShareDirectory} for conchshare's core, and an
    iterator of C{(filename, longname, attrs)} for stock Conch.

    Its READDIRs are readers of the connection (see
    L{conchshare.sftp.ordering}) that hold the directory's own key
    exclusive: they run one after another.  What was read ahead when it was
    opened is thrown away if a writer was made since then and before the
    first READDIR: that READDIR lists the directory from the start.
    """

    #: Whether its descriptor may be closed in the reactor thread: for
    #: directories of a local filesystem (opened there, see
    #: L{ConfinedFilesystem.openDirectoryCached}, or found local by the
    #: worker that opened them: L{Listing.checkLocal}).
    #: Elsewhere closing may wait for a server (CIFS sends its close
    #: request and waits).
    closesInline = False

    def __init__(
        self,
        confined: Listing,
        engine: ICallEngine,
        connection: ConnectionOrder | None = None,
        changes: int | None = None,
    ) -> None:
        """
        @param confined: the open directory.
        @param engine: what runs its blocking calls in order (the
            avatar's).
        @param connection: the order of the connection that opened it
            (default: its own).
        @param changes: the connection's L{ConnectionOrder.changes} when
            the OPENDIR was made (default: now).
        """
        self.confined = confined
        self.closesInline = confined.closesAtOnce
        #: What runs its blocking calls (the avatar's engine).
        self.engine = engine
        if connection is None:
            connection = ConnectionOrder()
        self._connection = connection
        self._changes = connection.changes if changes is None else changes
        self._read = False  # a READDIR was made
        self.key = connection.handleKey()
        self._keys = (connection.key, self.key)
        self._solo = (self.key,)
        self._buffer: list[Entry] = []

    def readAhead(self, maximum: int) -> None:
        """
        Read up to C{maximum} entries ahead, in a worker, for the next
        READDIR (which runs after it, on the same key).
        """
        try:
            self.engine.run(
                self._keys, self.confined.prefetch, maximum, shared=True, solo=self._solo
            )
        except RuntimeError:
            pass  # the workers are stopped: READDIR reads for itself

    def readBatch(self, maximum: int) -> Deferred[list[Entry]]:
        """
        @return: a Deferred firing with a non-empty list of up to C{maximum}
            entries; it fails with L{EOFError} when none are left.
        """
        confined = self.confined
        return self._batch(confined.takePrefetched, confined.read, maximum)

    def readEncoded(self, maximum: int) -> Deferred[list[bytes]]:
        """
        L{readBatch}, each entry encoded (see L{IEncodedDirectory}).
        """
        confined = self.confined
        return self._batch(confined.takePrefetchedEncoded, confined.readEncoded, maximum)

    def _batch(
        self, take: Callable[[int], list[Any]], read: Callable[[int], list[Any]], maximum: int
    ) -> Deferred[Any]:
        engine = self.engine
        if not self._read:
            self._read = True
            if self._connection.changes != self._changes:
                # A writer came between OPENDIR and this first READDIR:
                # what was read ahead may be stale.
                return engine.run(
                    self._keys, self._restarted, read, maximum, shared=True, solo=self._solo
                )
        if engine.sharedFree(*self._keys):
            # Nothing of this directory's runs in a worker, and no writer
            # waits or runs: what was read ahead, or the end, is known here.
            batch = take(maximum)
            if batch:
                return succeed(batch)
            if self.confined.exhausted:
                return fail(EOFError("End of directory"))
        return engine.run(self._keys, read, maximum, shared=True, solo=self._solo)

    def _restarted(self, read: Callable[[int], list[Any]], maximum: int) -> list[Any]:
        self.confined.restart()
        return read(maximum)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once the directory is closed.
        """
        engine = self.engine
        keys = (self._connection.closeKey, self.key)
        if self.closesInline and engine.inlineReads and engine.sharedFree(*keys):
            # Closing a directory descriptor of a local filesystem waits
            # for no I/O (nothing to flush): done here, without a round trip.
            try:
                self.confined.close()
            except OSError:
                return fail()
            return succeed(None)
        # As a file's CLOSE: not the connection key.
        return engine.run(keys, self.confined.close, shared=True, solo=self._solo)

    def __iter__(self) -> ShareDirectory:
        return self

    def __next__(self) -> Entry:
        if not self._buffer:
            try:
                self._buffer = self.confined.read()
            except EOFError:
                raise StopIteration
        return self._buffer.pop(0)
