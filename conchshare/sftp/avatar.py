"""
The SFTP avatar over the shares: L{ISFTPServer} and L{IShareSFTPServer}.

Every filesystem call is a blocking call of L{conchshare.confined}, run off
the reactor thread by a I{runner}: by default in a bounded thread pool with
L{deferToThreadPool}.  Tests may pass L{synchronousRunner} instead, which runs
the call at once and returns an already-fired Deferred.

Ordering: requests on one virtual path apply in the order they were made,
and so do requests on one open file (keyed by the path it was opened by) or
directory; requests on different paths run concurrently.  Clients rely on
this: sshfs sends OPEN with CREAT and, without waiting, an LSTAT of the same
path, expecting the file to exist (as OpenSSH's one-at-a-time server
guarantees).  The order is kept per path (L{PathOrder}), not per client, so
that clients sharing the avatar hold each other up only on the same path.

The avatar also plugs into stock L{twisted.conch.ssh.filetransfer.FileTransferServer}:
its directories are plain iterators too (listing synchronously, in the
reactor thread, since stock Conch cannot iterate over Deferreds).
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import FX_OP_UNSUPPORTED, SFTPError
from twisted.internet.defer import Deferred, DeferredLock, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from conchshare.confined import (
    ConfinedDirectory,
    ConfinedFile,
    ConfinedFilesystem,
    Entry,
    groupName,
    userName,
)
from conchshare.sftp.interfaces import IShareDirectory, IShareSFTPServer
from conchshare.shares import ShareSet

__all__ = [
    "PathOrder",
    "Runner",
    "ShareDirectory",
    "ShareFile",
    "ShareSFTPServer",
    "makeThreadPool",
    "synchronousRunner",
]

#: Runs a blocking callable somewhere and returns a Deferred of its result.
Runner = Callable[..., "Deferred[Any]"]


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
    reactor = _defaultReactor(reactor)
    pool = ThreadPool(minthreads=0, maxthreads=maxthreads, name="conchshare-fs")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)  # type: ignore[union-attr]
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
    pools = [pool] if pool is not None else []

    def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if not pools:
            pools.append(reactor.getThreadPool())
        return deferToThreadPool(reactor, pools[0], function, *args, **kwargs)

    return run


class _Waiter:
    __slots__ = ("keys", "function", "result", "started")

    def __init__(self, keys: list[bytes], function: Callable[[], Any]) -> None:
        self.keys = keys
        self.function = function
        self.result: Deferred[Any] | None = None
        self.started = False


class PathOrder:
    """
    Runs calls in the order they were made, per key (a virtual path): a call
    starts once every earlier call sharing one of its keys is done.  Calls
    with disjoint keys run concurrently.

    Each key has a queue of the calls that hold it, the running one first; a
    call joins the queues of all its keys when it is made, so a later call
    never overtakes it on any key (and, queues being in call order, the
    earliest waiting call always heads all of its queues: no deadlock).
    """

    def __init__(self) -> None:
        self._queues: dict[bytes, deque[_Waiter]] = {}

    def __len__(self) -> int:
        """
        The number of keys in use (zero when idle).
        """
        return len(self._queues)

    def run(self, keys: list[bytes], function: Callable[[], Any]) -> Deferred[Any]:
        """
        Call C{function} once every earlier call on one of C{keys} is done.

        @return: a Deferred firing with C{function}'s result (or failure).
        """
        waiter = _Waiter(list(dict.fromkeys(keys)), function)
        ready = True
        for key in waiter.keys:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
            elif queue:
                ready = False
            queue.append(waiter)
        if ready:
            waiter.started = True
            return self._call(waiter)
        waiter.result = Deferred()
        return waiter.result

    def _call(self, waiter: _Waiter) -> Deferred[Any]:
        d = maybeDeferred(waiter.function)
        d.addBoth(self._release, waiter)
        return d

    def _release(self, result: object, waiter: _Waiter) -> object:
        following = []
        for key in waiter.keys:
            queue = self._queues[key]
            queue.popleft()  # a running call heads each of its queues
            if queue:
                following.append(queue[0])
            else:
                del self._queues[key]
        for candidate in following:
            if candidate.started or candidate.result is None:
                continue
            if all(self._queues[key][0] is candidate for key in candidate.keys):
                candidate.started = True
                self._call(candidate).chainDeferred(candidate.result)
        return result


@implementer(ISFTPFile)
class ShareFile:
    """
    An open file: an L{ISFTPFile} whose requests apply in order.
    """

    def __init__(
        self,
        confined: ConfinedFile,
        runner: Runner,
        *,
        order: PathOrder | None = None,
        key: bytes | None = None,
    ) -> None:
        """
        @param confined: the open file.
        @param runner: how to run its blocking calls.
        @param order: the avatar's path order, so that requests on this file
            are ordered with requests on its path (default: its own).
        @param key: its key in C{order} (default: its virtual path).
        """
        self.confined = confined
        self._runner = runner
        self._order = order if order is not None else PathOrder()
        self.key = key if key is not None else confined.virtualPath

    def _queue(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._order.run([self.key], lambda: self._runner(function, *args))

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:
        """
        @return: a Deferred firing with up to C{length} bytes read at
            C{offset}; it fails with L{EOFError} at the end of the file, or
            with L{OSError}.
        """
        return self._queue(self.confined.read, offset, length)

    def writeChunk(self, offset: int, data: bytes) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once all of C{data} is written
            at C{offset} (at the end in append mode); or failing with
            L{OSError}.
        """
        return self._queue(self.confined.write, offset, data)

    def getAttrs(self) -> Deferred[dict[str, object]]:
        """
        @return: a Deferred firing with the file's attributes.
        """
        return self._queue(self.confined.stat)

    def setAttrs(self, attrs: Mapping[str, object]) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None}; fails with
            L{PermissionError} in a read-only share.
        """
        return self._queue(self.confined.setAttrs, attrs)

    def statVFS(self) -> Deferred[dict[str, int]]:
        return self._queue(self.confined.statVFS)

    def fsync(self) -> Deferred[None]:
        return self._queue(self.confined.fsync)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once every earlier request
            on this file is done and the file is closed.
        """
        return self._queue(self.confined.close)


@implementer(IShareDirectory)
class ShareDirectory:
    """
    An open directory: L{IShareDirectory} for conchshare's core, and an
    iterator of C{(filename, longname, attrs)} for stock Conch.
    """

    def __init__(self, confined: ConfinedDirectory, runner: Runner) -> None:
        self.confined = confined
        self._runner = runner
        self._lock = DeferredLock()
        self._buffer: list[Entry] = []

    def readBatch(self, maximum: int) -> Deferred[list[Entry]]:
        """
        @return: a Deferred firing with a non-empty list of up to C{maximum}
            entries; it fails with L{EOFError} when none are left.
        """
        return self._lock.run(self._runner, self.confined.read, maximum)

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing with L{None} once the directory is closed.
        """
        return self._lock.run(self._runner, self.confined.close)

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
    ) -> None:
        """
        @param shares: what is shared.
        @param umask: removed from the permissions of created files and
            directories.
        @param reactor: the reactor (default: the global one).
        @param threadpool: where filesystem calls run; default: the
            reactor's own thread pool.
        @param runner: instead of a pool, how to run blocking calls (for
            example L{synchronousRunner} in tests).
        """
        self.shares = shares
        self.filesystem = ConfinedFilesystem(shares, umask=umask)
        self.readOnly = shares.readOnly
        if runner is None:
            runner = _threadPoolRunner(_defaultReactor(reactor), threadpool)
        self._runner: Runner = runner
        self._order = PathOrder()

    def _key(self, path: bytes) -> bytes:
        try:
            return b"/" + b"/".join(self.shares.normalize(path))
        except OSError:
            return path  # refused later, in the filesystem call

    def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._runner(function, *args, **kwargs)

    def _onPaths(
        self, paths: list[bytes], function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Run C{function(*normalisedPaths, *args, **kwargs)} after earlier
        requests on the same paths.
        """
        keys = [self._key(path) for path in paths]
        return self._order.run(keys, lambda: self._runner(function, *keys, *args, **kwargs))

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
        key = self._key(filename)
        d = self._order.run(
            [key], lambda: self._runner(self.filesystem.openFile, key, flags, dict(attrs))
        )
        d.addCallback(ShareFile, self._run, order=self._order, key=key)
        return d

    def removeFile(self, filename: bytes) -> Deferred[None]:
        return self._onPaths([filename], self.filesystem.removeFile)

    def renameFile(self, oldpath: bytes, newpath: bytes) -> Deferred[None]:
        """
        v3 RENAME: fails with L{FileExistsError} if C{newpath} exists.
        """
        return self._onPaths([oldpath, newpath], self.filesystem.rename, overwrite=False)

    def makeDirectory(self, path: bytes, attrs: Mapping[str, object]) -> Deferred[None]:
        return self._onPaths([path], self.filesystem.makeDirectory, dict(attrs))

    def removeDirectory(self, path: bytes) -> Deferred[None]:
        return self._onPaths([path], self.filesystem.removeDirectory)

    def openDirectory(self, path: bytes) -> Deferred[ShareDirectory]:
        """
        @return: a Deferred firing with a L{ShareDirectory}.
        """
        d = self._onPaths([path], self.filesystem.openDirectory)
        d.addCallback(ShareDirectory, self._run)
        return d

    def getAttrs(self, path: bytes, followLinks: bool) -> Deferred[dict[str, object]]:
        """
        @return: a Deferred firing with the attributes; fails with
            L{PermissionError} when following a symlink out of the share.
        """
        return self._onPaths([path], self.filesystem.stat, follow=bool(followLinks))

    def setAttrs(self, path: bytes, attrs: Mapping[str, object]) -> Deferred[None]:
        return self._onPaths([path], self.filesystem.setAttrs, dict(attrs), follow=True)

    def readLink(self, path: bytes) -> Deferred[bytes]:
        return self._onPaths([path], self.filesystem.readLink)

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> Deferred[None]:
        """
        Make C{linkPath} a symlink to C{targetPath} (draft argument order;
        the protocol layer swaps OpenSSH's).
        """
        return self._onPaths([linkPath], self.filesystem.makeLink, targetPath)

    def realPath(self, path: bytes) -> Deferred[bytes]:
        """
        @return: a Deferred firing with the canonical virtual path.
        """
        return self._onPaths([path], self.filesystem.realPath)

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> None:
        """
        @raise SFTPError: always C{FX_OP_UNSUPPORTED}; the extensions are
            the L{IShareSFTPServer} methods.
        """
        raise SFTPError(  # type: ignore[no-untyped-call]
            FX_OP_UNSUPPORTED, f"Unsupported extension {extendedName!r}"
        )

    # -- IShareSFTPServer -----------------------------------------------

    def posixRename(self, oldPath: bytes, newPath: bytes) -> Deferred[None]:
        return self._onPaths([oldPath, newPath], self.filesystem.rename, overwrite=True)

    def statVFS(self, path: bytes) -> Deferred[dict[str, int]]:
        return self._onPaths([path], self.filesystem.statVFS)

    def fstatVFS(self, fileObj: object) -> Deferred[dict[str, int]]:
        return _shareFile(fileObj).statVFS()

    def hardLink(self, oldPath: bytes, newPath: bytes) -> Deferred[None]:
        return self._onPaths([oldPath, newPath], self.filesystem.hardLink)

    def fsync(self, fileObj: object) -> Deferred[None]:
        return _shareFile(fileObj).fsync()

    def lsetStat(self, path: bytes, attrs: dict[str, object]) -> Deferred[None]:
        return self._onPaths([path], self.filesystem.setAttrs, dict(attrs), follow=False)

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
        @return: a Deferred firing with L{None} once copied, after earlier
            requests on both files.
        """
        source, destination = _shareFile(readFile), _shareFile(writeFile)
        if source._order is not destination._order:
            raise OSError(errno.EXDEV, "The files belong to different servers")
        return source._order.run(
            [source.key, destination.key],
            lambda: self._runner(
                self.filesystem.copyData,
                source.confined,
                readOffset,
                length,
                destination.confined,
                writeOffset,
            ),
        )

    def homeDirectory(self, username: bytes) -> bytes:
        return self.shares.home

    def usersGroupsById(self, uids: list[int], gids: list[int]) -> tuple[list[bytes], list[bytes]]:
        return [userName(uid) for uid in uids], [groupName(gid) for gid in gids]


def _shareFile(fileObj: object) -> ShareFile:
    if not isinstance(fileObj, ShareFile):
        raise OSError(errno.EBADF, "Bad file handle")
    return fileObj
