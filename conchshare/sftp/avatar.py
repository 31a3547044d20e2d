"""
The SFTP avatar over the shares: L{ISFTPServer} and L{IShareSFTPServer}.

The avatar is the policy: which filesystem call of L{conchshare.fs}
a request becomes, and under which ordering keys.  Every such call blocks;
the avatar's engine (L{conchshare.sftp.engine.ICallEngine}) runs it off the
reactor thread: by default the avatar's own L{Workers} (a few threads and
io_uring); C{conchshare sftp-server} gives its
L{conchshare.sftp.threaded.ThreadedServer}'s engine, tests an
L{OrderedEngine}.  The exceptions are the calls that never wait (a READ
whose data is in the page cache, copied with C{RWF_NOWAIT}; attributes
and directories the kernel has in memory), made in the calling thread
when the engine allows it (L{ICallEngine.inlineReads}).

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
calling thread, since stock Conch cannot iterate over Deferreds).
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.conch.interfaces import ISFTPServer
from twisted.conch.ssh.filetransfer import FX_OP_UNSUPPORTED, FXF_CREAT, FXF_TRUNC, SFTPError
from twisted.internet.defer import Deferred
from zope.interface import implementer

from conchshare.fs import ConfinedFile, ConfinedFilesystem
from conchshare.reactors import orGlobalReactor
from conchshare.sftp.engine import AGAIN, ICallEngine, OrderedEngine
from conchshare.sftp.entries import Listing, groupName, openFlags, userName
from conchshare.sftp.files import ShareDirectory, ShareFile
from conchshare.sftp.interfaces import IEngineAvatar, IShareSFTPServer
from conchshare.sftp.ordering import ConnectionOrder
from conchshare.sftp.ringwatch import ringFor
from conchshare.sftp.workers import Workers
from conchshare.shares import ShareSet

__all__ = [
    "MAX_NAME_LOOKUPS",
    "OrderedEngine",
    "ShareDirectory",
    "ShareFile",
    "ShareSFTPServer",
    "Workers",
]

#: Directory entries read ahead when a directory is opened.
_PREFETCH = 1000

#: The most ids of one users-groups-by-id request looked up (each of the
#: two lists); those past it get empty names, the reply's form for unknown
#: ids.  Each lookup may wait for the name service (LDAP, NIS).
MAX_NAME_LOOKUPS = 1024


@implementer(ISFTPServer, IShareSFTPServer, IEngineAvatar)
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
        engine: ICallEngine | None = None,
        reactor: Any = None,
        threads: int = 8,
        ring: bool = True,
        lookUpUser: Callable[[int], bytes] = userName,
        lookUpGroup: Callable[[int], bytes] = groupName,
    ) -> None:
        """
        @param shares: what is shared.
        @param umask: removed from the permissions of created files and
            directories.
        @param engine: what runs the blocking calls (default: a new
            L{Workers} on C{reactor}).
        @param reactor: for the default L{Workers}: the reactor that
            delivers the results (default: the global one).
        @param threads: the most worker threads of the default L{Workers}.
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
        if engine is None:
            reactor = orGlobalReactor(reactor)
            engine = Workers(reactor, threads, ring=ringFor(reactor) if ring else None)
        #: The engine running the avatar's calls (shared by every view of
        #: it, see L{forConnection}).
        self.engine: ICallEngine = engine
        fs = self.filesystem
        #: The order of this connection's requests.
        self._connection = ConnectionOrder()
        self._stat = partial(fs.stat, follow=True)
        self._lstat = partial(fs.stat, follow=False)

    def forConnection(self) -> ShareSFTPServer:
        """
        A view of this avatar for one more connection: the same shares,
        filesystem and engine, and its own order (requests of different
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
        return self.engine.run((self._connection.key,), function, *args, shared=True)

    def _writer(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{function(*args, **kwargs)} as a writer of the connection: after
        every earlier request, before every later one.
        """
        if kwargs:
            function = partial(function, **kwargs)
        return self.engine.run((self._connection.writer(),), function, *args)

    def _remover(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{function(*args, **kwargs)} as a writer that removes or
        replaces a name: also after earlier CLOSEs, before later ones.
        """
        if kwargs:
            function = partial(function, **kwargs)
        return self.engine.run(self._connection.remover(), function, *args)

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
        engine = self.engine
        osFlags = openFlags(flags)
        d = engine.run(
            (key,),
            self.filesystem.openFile,
            filename,
            osFlags,
            dict(attrs),
            shared=shared,
            ring=self.filesystem.ringOpenFile(filename, osFlags, attrs)
            if engine.ring is not None
            else None,
        )
        d.addCallback(ShareFile, engine, filesystem=self.filesystem, connection=connection)
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
        engine = self.engine
        connection = self._connection
        if engine.inlineReads and engine.sharedFree(connection.key):
            confined = self.filesystem.openDirectoryCached(path)
            if confined is not None:
                directory = ShareDirectory(Listing(confined), engine, connection)
                directory.closesInline = True
                directory.readAhead(_PREFETCH)
                return directory
        d = self._reader(self._openDirectory, path)
        d.addCallback(ShareDirectory, engine, connection, connection.changes)
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
        engine = self.engine
        free = engine.inlineReads and engine.sharedFree(key)
        if free:
            # Attributes the kernel has in memory: read here, in the
            # reactor thread, without a round trip to a worker.
            attrs = self.filesystem.statCached(path, follow=followLinks)
            if attrs is not None:
                return attrs
        call = self._stat if followLinks else self._lstat
        ring = None
        if engine.ring is not None:
            # When its turn comes, the kernel may have the entry in memory
            # (sshfs asks for the attributes of the file it is creating).
            ring = self.filesystem.ringStat(path, follow=followLinks, cachedFirst=not free)
        return engine.run((key,), call, path, shared=True, ring=ring)

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
        if source.engine is not destination.engine:
            raise OSError(errno.EXDEV, "The files belong to different servers")
        copy = _Copy(
            self.filesystem, source.confined, readOffset, length, destination.confined, writeOffset
        )
        d = source.engine.run([self._connection.writer(), source.key, destination.key], copy.step)
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
        return self.engine.run((), self._lookUpNames, uids, gids, shared=True)

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
