"""
The SFTP avatar over the shares: L{ISFTPServer} and L{IShareSFTPServer}.

Every filesystem call is a blocking call of L{conchshare.fs}, run off
the reactor thread: by default by the avatar's own L{Workers} (a few
threads).  Tests may pass a I{runner} instead, such as L{synchronousRunner},
which runs the call at once and returns an already-fired Deferred.  The one
exception: a READ whose data is in the page cache is copied in the reactor
thread with C{RWF_NOWAIT}, which never blocks (the kernel refuses instead).

Ordering: one connection's requests give the results of processing them
one at a time in arrival order; requests that only look (READ, STAT,
READDIR, ...) run together, every other request alone (the rule is
L{conchshare.sftp.ordering}'s).  Clients rely on this: sshfs sends OPEN
with CREAT and, without waiting, an LSTAT of the same path, expecting the
file to exist; or a WRITE on a handle and an LSTAT of the name the file
was just renamed to.  Each connection takes its own view of the avatar
(L{ShareSFTPServer.forConnection}): requests of different connections are
not ordered.

The avatar also plugs into stock L{twisted.conch.ssh.filetransfer.FileTransferServer}:
its directories are plain iterators too (listing synchronously, in the
reactor thread, since stock Conch cannot iterate over Deferreds).
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import FX_OP_UNSUPPORTED, FXF_CREAT, FXF_TRUNC, SFTPError
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from conchshare.fs import ConfinedFile, ConfinedFilesystem
from conchshare.sftp.entries import Entry, Listing, groupName, openFlags, userName
from conchshare.sftp.interfaces import IEncodedDirectory, IShareSFTPServer
from conchshare.sftp.ordering import ConnectionOrder, KeyOrder, orderedKeys
from conchshare.sftp.ringwatch import ringFor
from conchshare.sftp.workers import AGAIN, Batch, Job, RingCall, Workers
from conchshare.shares import ShareSet

if TYPE_CHECKING:
    from twisted.python.threadpool import ThreadPool

__all__ = [
    "PathOrder",
    "Runner",
    "ShareDirectory",
    "ShareFile",
    "ShareSFTPServer",
    "Workers",
    "makeThreadPool",
    "synchronousRunner",
]

#: Directory entries read ahead when a directory is opened.
_PREFETCH = 1000

#: The most ids of one users-groups-by-id request looked up (each of the
#: two lists); those past it get empty names, the reply's form for unknown
#: ids.  Each lookup may wait for the name service (LDAP, NIS).
MAX_NAME_LOOKUPS = 1024

#: Runs a blocking callable somewhere and returns a Deferred of its result.
Runner = Callable[..., "Deferred[Any]"]

#: The most WRITEs of a file written with one system call, and their most
#: bytes: 16 of OpenSSH's 256 KiB (the replies wait for the whole batch).
MERGED_WRITES = 16
MERGED_BYTES = 4 * 1024 * 1024


def _defaultReactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    return reactor


def makeThreadPool(reactor: IReactorCore | None = None, maxthreads: int = 8) -> ThreadPool:
    """
    A started thread pool for filesystem calls, stopped when the reactor
    shuts down.  Several avatars may share one.

    @param reactor: the reactor (default: the global one).
    @param maxthreads: the most threads the pool runs at once.
    """
    from twisted.python.threadpool import ThreadPool

    reactor = _defaultReactor(reactor)
    pool = ThreadPool(minthreads=0, maxthreads=maxthreads, name="conchshare-fs")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    return pool


def synchronousRunner(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    A runner for tests: call C{function} now, in this thread.

    @return: a Deferred that has already fired with the result or failure.
    """
    try:
        return succeed(function(*args, **kwargs))
    except BaseException:
        return fail()


def _threadPoolRunner(reactor: IReactorThreads, pool: ThreadPool | None) -> Runner:
    """
    Run calls in C{pool}, or (L{None}) in the reactor's own pool, looked up
    at the first call so that building an avatar needs no threads.
    """
    # Imported here: C{conchshare sftp-server} runs its calls itself.
    from twisted.internet.threads import deferToThreadPool

    pools = [pool] if pool is not None else []

    def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if not pools:
            pools.append(reactor.getThreadPool())
        return deferToThreadPool(reactor, pools[0], function, *args, **kwargs)

    return run


class PathOrder:
    """
    Runs calls through a L{Runner} in the order L{KeyOrder} gives, keeping
    the order in the calling thread: for a runner other than L{Workers}
    (C{sftp-server}'s L{conchshare.sftp.threaded.ThreadedServer}, tests, a
    Twisted thread pool).
    """

    #: Reads are never taken out of the runner's hands.
    inlineReads = False

    #: Nor are calls handed to the kernel (see L{Workers.ring}).
    ring = None

    def __init__(self, runner: Runner | None = None) -> None:
        """
        @param runner: how to run each call once its turn comes (default:
            call it at once; it may return a Deferred).
        """
        self._runner: Runner = runner if runner is not None else maybeDeferred
        self._order = KeyOrder()

    def __len__(self) -> int:
        """
        The number of keys in use (zero when idle).
        """
        return len(self._order)

    def sharedFree(self, *keys: bytes) -> bool:
        """
        Whether a shared call on C{keys} would start at once.
        """
        return self._order.sharedFree(*keys)

    def run(
        self,
        keys: Iterable[bytes],
        function: Callable[..., Any],
        *args: Any,
        shared: bool = False,
        batch: Batch | None = None,
        ring: RingCall | None = None,
        solo: tuple[bytes, ...] = (),
    ) -> Deferred[Any]:
        """
        Call C{function(*args)} once every earlier call on one of C{keys} is
        done (shared calls run alongside each other).

        @param solo: keys held exclusive although C{shared}.
        @param batch: ignored: calls run one by one.
        @param ring: ignored: calls run in the runner.
        @return: a Deferred firing with C{function}'s result (or failure).
        """
        job = Job(orderedKeys(keys), shared, function, args, solo=solo)
        if self._order.add(job):
            self._start(job)
        return job.deferred

    def _start(self, job: Job) -> None:
        # A call answering AGAIN is made again, still holding its keys: in
        # this loop when the runner answered at once (no recursion).
        while True:
            step = _Step()
            try:
                d = self._runner(job.function, *job.args)
            except BaseException:
                d = fail()
            d.addBoth(self._finished, job, step)
            step.returned = True
            if not step.again:
                return

    def _finished(self, result: object, job: Job, step: _Step) -> None:
        if result is AGAIN:
            if step.returned:
                self._start(job)
            else:
                step.again = True
            return
        following = self._order.finish(job)
        if isinstance(result, Failure):
            job.deferred.errback(result)
        else:
            job.deferred.callback(result)
        for candidate in following:
            self._start(candidate)


class _Step:
    # One step of a call made by PathOrder: whether the runner returned,
    # and whether the call asked to be made again before that.
    __slots__ = ("returned", "again")

    def __init__(self) -> None:
        self.returned = False
        self.again = False


#: What runs the avatar's calls in order: L{Workers} or L{PathOrder}.
Executor = Workers | PathOrder


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
        executor: Executor | Runner,
        *,
        order: Executor | None = None,
        key: bytes | None = None,
        filesystem: ConfinedFilesystem | None = None,
        connection: ConnectionOrder | None = None,
    ) -> None:
        """
        @param confined: the open file.
        @param executor: what runs its blocking calls in order (or, for
            compatibility, a L{Runner}, then ordered by C{order}).
        @param order: with a L{Runner}: the avatar's L{PathOrder}
            (default: its own).
        @param key: its handle key in the order (default: a new one).
        @param filesystem: the filesystem it was opened in, to read its
            attributes from memory when it can (L{None}: never).
        @param connection: the order of the connection that opened it, so
            that its requests are ordered with the connection's others
            (default: its own).
        """
        self.confined = confined
        self.filesystem = filesystem
        if not isinstance(executor, Workers | PathOrder):
            executor = order if order is not None else PathOrder(executor)
        self._executor: Executor = executor
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
        executor = self._executor
        if executor.inlineReads and executor.sharedFree(*self._keys):
            # Data in the page cache is copied here, in the reactor thread,
            # without blocking (RWF_NOWAIT): no round trip to a worker.
            data = self.confined.readCached(offset, length)
            if data is not None:
                return succeed(data)
        return executor.run(self._keys, self.confined.read, offset, length, shared=True)

    #: The core may pass WRITE data as a memoryview (no copy).
    writesViews = True

    def writeChunk(self, offset: int, data: bytes) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once all of C{data} is written
            at C{offset} (at the end in append mode); or failing with
            L{OSError}.
        """
        executor = self._executor
        self._connection.writer()
        return executor.run(
            self._keys,
            self.confined.write,
            offset,
            data,
            batch=self._writes,
            ring=self.confined.ringWrite(offset, data) if executor.ring is not None else None,
        )

    def getAttrs(self) -> Deferred[dict[str, object]] | dict[str, object]:
        """
        @return: the file's attributes, when the kernel has them in memory,
            or a Deferred firing with them.
        """
        executor = self._executor
        if (
            executor.inlineReads
            and self.filesystem is not None
            and executor.sharedFree(*self._keys)
        ):
            attrs = self.filesystem.fstatCached(self.confined)
            if attrs is not None:
                return attrs
        return executor.run(self._keys, self.confined.stat, shared=True)

    def setAttrs(self, attrs: Mapping[str, object]) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None}; fails with
            L{PermissionError} in a read-only share.
        """
        self._connection.writer()
        return self._executor.run(self._keys, self.confined.setAttrs, attrs)

    def statVFS(self) -> Deferred[dict[str, int]]:
        return self._executor.run(self._keys, self.confined.statVFS, shared=True)

    def fsync(self) -> Deferred[None]:
        return self._executor.run(self._keys, self.confined.fsync, shared=True)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once every earlier request
            on this file is done and the file is closed.
        """
        executor = self._executor
        # Not the connection key: closing changes nothing another request
        # sees, but a REMOVE (see conchshare.sftp.ordering).
        return executor.run(
            (self._connection.closeKey, self.key),
            self.confined.close,
            shared=True,
            solo=(self.key,),
            ring=self.confined.ringClose() if executor.ring is not None else None,
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
    #: worker that opened them: L{ConfinedDirectory.checkLocal}).
    #: Elsewhere closing may wait for a server (CIFS sends its close
    #: request and waits).
    closesInline = False

    def __init__(
        self,
        confined: Listing,
        executor: Executor | Runner,
        connection: ConnectionOrder | None = None,
        changes: int | None = None,
    ) -> None:
        """
        @param confined: the open directory.
        @param executor: what runs its blocking calls in order (or, for
            compatibility, a L{Runner}).
        @param connection: the order of the connection that opened it
            (default: its own).
        @param changes: the connection's L{ConnectionOrder.changes} when
            the OPENDIR was made (default: now).
        """
        self.confined = confined
        self.closesInline = confined.closesAtOnce
        if not isinstance(executor, Workers | PathOrder):
            executor = PathOrder(executor)
        self._executor: Executor = executor
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
            self._executor.run(
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
        executor = self._executor
        if not self._read:
            self._read = True
            if self._connection.changes != self._changes:
                # A writer came between OPENDIR and this first READDIR:
                # what was read ahead may be stale.
                return executor.run(
                    self._keys, self._restarted, read, maximum, shared=True, solo=self._solo
                )
        if executor.sharedFree(*self._keys):
            # Nothing of this directory's runs in a worker, and no writer
            # waits or runs: what was read ahead, or the end, is known here.
            batch = take(maximum)
            if batch:
                return succeed(batch)
            if self.confined.exhausted:
                return fail(EOFError("End of directory"))
        return executor.run(self._keys, read, maximum, shared=True, solo=self._solo)

    def _restarted(self, read: Callable[[int], list[Any]], maximum: int) -> list[Any]:
        self.confined.restart()
        return read(maximum)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once the directory is closed.
        """
        executor = self._executor
        keys = (self._connection.closeKey, self.key)
        if self.closesInline and executor.inlineReads and executor.sharedFree(*keys):
            # Closing a directory descriptor of a local filesystem waits
            # for no I/O (nothing to flush): done here, without a round trip.
            try:
                self.confined.close()
            except OSError:
                return fail()
            return succeed(None)
        # As a file's CLOSE: not the connection key.
        return executor.run(keys, self.confined.close, shared=True, solo=self._solo)

    def __iter__(self) -> ShareDirectory:
        return self

    def __next__(self) -> Entry:
        if not self._buffer:
            try:
                self._buffer = self.confined.read()
            except EOFError:
                raise StopIteration
        return self._buffer.pop(0)


@implementer(ISFTPServer, IShareSFTPServer)
class ShareSFTPServer:
    """
    The SFTP avatar over a L{ShareSet}.

    Every method returns a Deferred (see L{conchshare.sftp.interfaces} for
    the failures: L{OSError}, L{EOFError}, L{SFTPError}).
    """

    avatar = None

    def __init__(
        self,
        shares: ShareSet,
        *,
        umask: int = 0o022,
        reactor: Any = None,
        threadpool: ThreadPool | None = None,
        runner: Runner | None = None,
        threads: int = 8,
        inlineCalls: bool = False,
        ring: bool = True,
        lookUpUser: Callable[[int], bytes] = userName,
        lookUpGroup: Callable[[int], bytes] = groupName,
    ) -> None:
        """
        @param shares: what is shared.
        @param umask: removed from the permissions of created files and
            directories.
        @param reactor: the reactor (default: the global one).
        @param threadpool: a Twisted thread pool to run filesystem calls in;
            by default the avatar's own L{Workers}.
        @param runner: instead, how to run blocking calls (for example
            L{synchronousRunner} in tests).
        @param threads: the most worker threads of the default L{Workers}.
        @param inlineCalls: with a C{runner}: calls that never wait (cached
            reads, attributes and directories the kernel has in memory) may
            be made in the calling thread instead (always, with the default
            L{Workers}).
        @param ring: with the default L{Workers}: let the kernel make the
            common calls (create, write, close, stat) through io_uring
            where it is usable (see L{conchshare.fs.ring}), instead of a
            worker thread.
        @param lookUpUser: the login name of a uid (empty when unknown),
            for users-groups-by-id; called in a worker, never in the
            reactor thread (it may wait for the name service).
        @param lookUpGroup: the same for a gid.
        """
        self.shares = shares
        self._lookUpUser = lookUpUser
        self._lookUpGroup = lookUpGroup
        self.filesystem = ConfinedFilesystem(shares, umask=umask)
        self.readOnly = shares.readOnly
        order: Executor
        if runner is not None:
            order = PathOrder(runner)
            order.inlineReads = inlineCalls
        elif threadpool is not None:
            order = PathOrder(_threadPoolRunner(_defaultReactor(reactor), threadpool))
        else:
            reactor = _defaultReactor(reactor)
            order = Workers(reactor, threads, ring=ringFor(reactor) if ring else None)
        self._order: Executor = order
        #: The L{Workers} running the calls (L{None} with a runner or pool).
        self.workers = order if isinstance(order, Workers) else None
        fs = self.filesystem
        #: The order of this connection's requests.
        self._connection = ConnectionOrder()
        self._stat = partial(fs.stat, follow=True)
        self._lstat = partial(fs.stat, follow=False)

    def forConnection(self) -> ShareSFTPServer:
        """
        A view of this avatar for one more connection: the same shares,
        filesystem and workers, and its own order (requests of different
        connections are not ordered with each other).
        """
        view = copy.copy(self)
        view._connection = ConnectionOrder()
        return view

    def _reader(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{function(*args, **kwargs)} as a reader of the connection (see
        L{conchshare.sftp.ordering}).
        """
        if kwargs:
            function = partial(function, **kwargs)
        return self._order.run((self._connection.key,), function, *args, shared=True)

    def _writer(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{function(*args, **kwargs)} as a writer of the connection: after
        every earlier request, before every later one.
        """
        if kwargs:
            function = partial(function, **kwargs)
        return self._order.run((self._connection.writer(),), function, *args)

    def _remover(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{function(*args, **kwargs)} as a writer that removes or
        replaces a name: also after earlier CLOSEs, before later ones.
        """
        if kwargs:
            function = partial(function, **kwargs)
        return self._order.run(self._connection.remover(), function, *args)

    @classmethod
    def fromSpecs(
        cls,
        specs: list[str],
        *,
        readOnly: bool = False,
        cwd: str | None = None,
        **kwargs: Any,
    ) -> ShareSFTPServer:
        """
        Build the avatar from share specifications (see
        L{conchshare.shares.parseShare}); other keywords go to the
        constructor.

        @raise conchshare.shares.ShareError: a specification is invalid.
        """
        return cls(ShareSet.fromSpecs(specs, readOnly=readOnly, cwd=cwd), **kwargs)

    # -- ISFTPServer ----------------------------------------------------

    def gotVersion(self, otherVersion: int, extData: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
        """
        @return: no extensions; conchshare's core advertises its own.
        """
        return {}

    def openFile(
        self, filename: bytes, flags: int, attrs: Mapping[str, object]
    ) -> Deferred[ShareFile]:
        """
        @return: a Deferred firing with a L{ShareFile}; fails with
            L{PermissionError} for a write in a read-only share or a symlink
            out of the share, or other L{OSError}.
        """
        connection = self._connection
        # An open that can neither create nor truncate changes nothing a
        # later request sees: a reader.
        shared = not flags & (FXF_CREAT | FXF_TRUNC)
        key = connection.key if shared else connection.writer()
        order = self._order
        osFlags = openFlags(flags)
        d = order.run(
            (key,),
            self.filesystem.openFile,
            filename,
            osFlags,
            dict(attrs),
            shared=shared,
            ring=self.filesystem.ringOpenFile(filename, osFlags, attrs)
            if order.ring is not None
            else None,
        )
        d.addCallback(ShareFile, order, filesystem=self.filesystem, connection=connection)
        return d

    def removeFile(self, filename: bytes) -> Deferred[None]:
        return self._remover(self.filesystem.removeFile, filename)

    def renameFile(self, oldpath: bytes, newpath: bytes) -> Deferred[None]:
        """
        v3 RENAME: fails with L{FileExistsError} if C{newpath} exists.
        """
        return self._remover(self.filesystem.rename, oldpath, newpath, overwrite=False)

    def makeDirectory(self, path: bytes, attrs: Mapping[str, object]) -> Deferred[None]:
        return self._writer(self.filesystem.makeDirectory, path, dict(attrs))

    def removeDirectory(self, path: bytes) -> Deferred[None]:
        return self._remover(self.filesystem.removeDirectory, path)

    def openDirectory(self, path: bytes) -> Deferred[ShareDirectory] | ShareDirectory:
        """
        @return: a L{ShareDirectory}, or a Deferred firing with one.  When
            the kernel can open the directory without waiting (see
            L{ConfinedFilesystem.openDirectoryCached}) it is opened here
            and its first entries are read ahead in a worker meanwhile;
            otherwise a worker opens it and reads them before answering.
        @raise OSError: (answered at once) no such path, or an invalid one.
        """
        order = self._order
        connection = self._connection
        if order.inlineReads and order.sharedFree(connection.key):
            confined = self.filesystem.openDirectoryCached(path)
            if confined is not None:
                directory = ShareDirectory(Listing(confined), order, connection)
                directory.closesInline = True
                directory.readAhead(_PREFETCH)
                return directory
        d = self._reader(self._openDirectory, path)
        d.addCallback(ShareDirectory, order, connection, connection.changes)
        return d

    def _openDirectory(self, path: bytes) -> Listing:
        # In the same worker call: the first entries (all of them, in most
        # directories), so that the READDIRs that return them and find the
        # end are answered without a round trip to a worker.
        directory = Listing(self.filesystem.openDirectory(path))
        directory.prefetch(_PREFETCH)
        directory.checkLocal()
        return directory

    def getAttrs(
        self, path: bytes, followLinks: bool
    ) -> Deferred[dict[str, object]] | dict[str, object]:
        """
        @return: the attributes when the kernel has them in memory (see
            L{ConfinedFilesystem.statCached}), else a Deferred firing with
            them; it fails with L{PermissionError} when following a symlink
            out of the share.
        @raise OSError: (answered at once) no such path, or an invalid one
            (an embedded NUL, too long).
        """
        key = self._connection.key
        order = self._order
        free = order.inlineReads and order.sharedFree(key)
        if free:
            # Attributes the kernel has in memory: read here, in the
            # reactor thread, without a round trip to a worker.
            attrs = self.filesystem.statCached(path, follow=followLinks)
            if attrs is not None:
                return attrs
        call = self._stat if followLinks else self._lstat
        ring = None
        if order.ring is not None:
            # When its turn comes, the kernel may have the entry in memory
            # (sshfs asks for the attributes of the file it is creating).
            ring = self.filesystem.ringStat(path, follow=followLinks, cachedFirst=not free)
        return order.run((key,), call, path, shared=True, ring=ring)

    def setAttrs(self, path: bytes, attrs: Mapping[str, object]) -> Deferred[None]:
        return self._writer(self.filesystem.setAttrs, path, dict(attrs), follow=True)

    def readLink(self, path: bytes) -> Deferred[bytes]:
        return self._reader(self.filesystem.readLink, path)

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> Deferred[None]:
        """
        Make C{linkPath} a symlink to C{targetPath} (draft argument order;
        the protocol layer swaps OpenSSH's).
        """
        return self._writer(self.filesystem.makeLink, linkPath, targetPath)

    def realPath(self, path: bytes) -> Deferred[bytes]:
        """
        @return: a Deferred firing with the canonical virtual path.
        """
        return self._reader(self.filesystem.realPath, path)

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> None:
        """
        @raise SFTPError: always C{FX_OP_UNSUPPORTED}; the extensions are
            the L{IShareSFTPServer} methods.
        """
        raise SFTPError(FX_OP_UNSUPPORTED, f"Unsupported extension {extendedName!r}")

    # -- IShareSFTPServer -----------------------------------------------

    def posixRename(self, oldPath: bytes, newPath: bytes) -> Deferred[None]:
        return self._remover(self.filesystem.rename, oldPath, newPath, overwrite=True)

    def statVFS(self, path: bytes) -> Deferred[dict[str, int]]:
        return self._reader(self.filesystem.statVFS, path)

    def fstatVFS(self, fileObj: object) -> Deferred[dict[str, int]]:
        return _shareFile(fileObj).statVFS()

    def hardLink(self, oldPath: bytes, newPath: bytes) -> Deferred[None]:
        return self._writer(self.filesystem.hardLink, oldPath, newPath)

    def fsync(self, fileObj: object) -> Deferred[None]:
        return _shareFile(fileObj).fsync()

    def lsetStat(self, path: bytes, attrs: dict[str, object]) -> Deferred[None]:
        return self._writer(self.filesystem.setAttrs, path, dict(attrs), follow=False)

    def expandPath(self, path: bytes) -> Deferred[bytes]:
        """
        @return: a Deferred firing with the virtual path, C{~} and C{~user}
            meaning the starting directory.
        """
        if path.startswith(b"~"):
            slash = path.find(b"/")
            rest = b"" if slash < 0 else path[slash + 1 :]
            path = self.shares.home + b"/" + rest
        return self.realPath(path)

    def copyData(
        self, readFile: object, readOffset: int, length: int, writeFile: object, writeOffset: int
    ) -> Deferred[None]:
        """
        Copy in steps of at most L{COPY_STEP} bytes, each a call of its
        own: other requests' calls run between them; the requests on
        either file made after this one wait for its last step.

        @return: a Deferred firing with L{None} once copied, after earlier
            requests on both files; it fails with L{OSError}.
        """
        source, destination = _shareFile(readFile), _shareFile(writeFile)
        if source._executor is not destination._executor:
            raise OSError(errno.EXDEV, "The files belong to different servers")
        copy = _Copy(
            self.filesystem, source.confined, readOffset, length, destination.confined, writeOffset
        )
        d = source._executor.run(
            [self._connection.writer(), source.key, destination.key], copy.step
        )
        return d.addCallback(lambda _: None)

    def homeDirectory(self, username: bytes) -> bytes:
        return self.shares.home

    def usersGroupsById(
        self, uids: list[int], gids: list[int]
    ) -> Deferred[tuple[list[bytes], list[bytes]]]:
        """
        users-groups-by-id@openssh.com, looked up in a worker (name service
        lookups may wait: LDAP, NIS); it touches no file, so it waits for
        no other request.  Ids past the first L{MAX_NAME_LOOKUPS} of each
        list get empty names.

        @return: a Deferred firing with the user names and the group names,
            in the order asked (empty for an unknown id).
        """
        return self._order.run((), self._lookUpNames, uids, gids, shared=True)

    def _lookUpNames(self, uids: list[int], gids: list[int]) -> tuple[list[bytes], list[bytes]]:
        # In a worker.
        return _names(self._lookUpUser, uids), _names(self._lookUpGroup, gids)


def _names(lookUp: Callable[[int], bytes], ids: list[int]) -> list[bytes]:
    names = [lookUp(i) for i in ids[:MAX_NAME_LOOKUPS]]
    names.extend(b"" for _ in ids[MAX_NAME_LOOKUPS:])
    return names


#: The most bytes one step of a copy-data copies (see L{AGAIN}).
COPY_STEP = 8 * 1024 * 1024


class _Copy:
    """
    A copy-data in steps (L{ShareSFTPServer.copyData}).
    """

    def __init__(
        self,
        filesystem: ConfinedFilesystem,
        source: ConfinedFile,
        readOffset: int,
        length: int,
        destination: ConfinedFile,
        writeOffset: int,
    ) -> None:
        self.filesystem = filesystem
        self.source = source
        self.readOffset = readOffset
        self.length = length  # 0: to the end
        self.destination = destination
        self.writeOffset = writeOffset
        self.copied = 0

    def step(self) -> object:
        """
        Copy the next L{COPY_STEP} bytes at most (in a worker).

        @return: L{AGAIN} while there may be more to copy, else L{None}.
        """
        copied = self.copied
        if self.length:
            remaining = self.length - copied
            if remaining <= 0:
                return None
        else:
            remaining = 0
        count = self.filesystem.copyData(
            self.source,
            self.readOffset + copied,
            remaining,
            self.destination,
            self.writeOffset + copied,
            limit=COPY_STEP,
        )
        self.copied = copied + count
        return AGAIN if count == COPY_STEP else None


def _shareFile(fileObj: object) -> ShareFile:
    if not isinstance(fileObj, ShareFile):
        raise OSError(errno.EBADF, "Bad file handle")
    return fileObj
