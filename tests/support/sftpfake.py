"""
An in-memory SFTP avatar: a real implementation of L{ISFTPServer},
L{IShareSFTPServer}, L{ISFTPFile} and L{IShareDirectory}, for testing the
protocol core without a filesystem.

Paths are absolute virtual bytes; C{.} and relative paths start at C{/}.
Any method named in L{FakeSFTPServer.gates} waits for that Deferred before
answering (a deliberately slow call).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Mapping

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from conchshare.sftp.interfaces import IShareDirectory, IShareSFTPServer


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Node:
    """
    A file, directory or symlink.
    """

    def __init__(self, mode: int, target: bytes = b"") -> None:
        self.mode = mode
        self.data = bytearray()
        self.children: dict[bytes, Node] = {}
        self.target = target
        self.atime = 1000
        self.mtime = 2000
        self.uid = 0
        self.gid = 0

    @property
    def isDir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def isLink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def attrs(self) -> dict[str, object]:
        size = len(self.target) if self.isLink else len(self.data)
        return {
            "size": size,
            "uid": self.uid,
            "gid": self.gid,
            "permissions": self.mode,
            "atime": self.atime,
            "mtime": self.mtime,
        }

    def apply(self, attrs: Mapping[str, object]) -> None:
        if "size" in attrs:
            size = int(attrs["size"])  # type: ignore[call-overload]
            del self.data[size:]
            self.data.extend(b"\0" * (size - len(self.data)))
        if "permissions" in attrs:
            permissions = int(attrs["permissions"])  # type: ignore[call-overload]
            self.mode = stat.S_IFMT(self.mode) | (permissions & 0o7777)
        if "uid" in attrs:
            self.uid = int(attrs["uid"])  # type: ignore[call-overload]
            self.gid = int(attrs["gid"])  # type: ignore[call-overload]
        if "mtime" in attrs:
            self.atime = int(attrs["atime"])  # type: ignore[call-overload]
            self.mtime = int(attrs["mtime"])  # type: ignore[call-overload]


def _split(path: bytes) -> list[bytes]:
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


@implementer(ISFTPFile)
class FakeFile:
    """
    An open file; C{closed} tells whether the core closed it.
    """

    def __init__(self, server: FakeSFTPServer, node: Node, flags: int) -> None:
        self.server = server
        self.node = node
        self.flags = flags
        self.closed = False
        self.synced = False

    def readChunk(self, offset: int, length: int) -> object:
        return self.server._answer(
            "readChunk", lambda: bytes(self.node.data[offset : offset + length])
        )

    def writeChunk(self, offset: int, data: bytes) -> object:
        def write() -> None:
            if self.flags & 0x04:
                self.node.data.extend(data)
                return
            if len(self.node.data) < offset:
                self.node.data.extend(b"\0" * (offset - len(self.node.data)))
            self.node.data[offset : offset + len(data)] = data

        return self.server._answer("writeChunk", write)

    def getAttrs(self) -> object:
        return self.server._answer("getAttrs", self.node.attrs)

    def setAttrs(self, attrs: dict[str, object]) -> object:
        return self.server._answer("setAttrs", lambda: self.node.apply(attrs))

    def close(self) -> object:
        def close() -> None:
            self.closed = True
            self.server.openFiles.remove(self)

        return self.server._answer("close", close)


@implementer(IShareDirectory)
class FakeDirectory:
    """
    An open directory listing, read in batches.
    """

    def __init__(
        self, server: FakeSFTPServer, entries: list[tuple[bytes, bytes, dict[str, object]]]
    ):
        self.server = server
        self.entries = entries
        self.closed = False

    def readBatch(self, maximum: int) -> object:
        def batch() -> list[tuple[bytes, bytes, dict[str, object]]]:
            if not self.entries:
                raise EOFError()
            taken, self.entries = self.entries[:maximum], self.entries[maximum:]
            return taken

        return self.server._answer("readBatch", batch)

    def close(self) -> object:
        def close() -> None:
            self.closed = True
            self.server.openDirectories.remove(self)

        return self.server._answer("close", close)

    def __iter__(self) -> Iterator[tuple[bytes, bytes, dict[str, object]]]:
        return iter(self.entries)


class PlainDirectory:
    """
    A directory as stock Conch avatars return it: an iterator (yielding
    Deferreds here) with C{close}, without C{readBatch}.
    """

    def __init__(
        self, server: FakeSFTPServer, entries: list[tuple[bytes, bytes, dict[str, object]]]
    ):
        self.server = server
        self._entries = iter(entries)
        self.closed = False

    def __iter__(self) -> PlainDirectory:
        return self

    def __next__(self) -> Deferred[tuple[bytes, bytes, dict[str, object]]]:
        return succeed(next(self._entries))

    def close(self) -> None:
        self.closed = True
        self.server.openDirectories.remove(self)


@implementer(ISFTPServer, IShareSFTPServer)
class FakeSFTPServer:
    """
    The in-memory avatar.

    @ivar gates: method name → Deferred the call waits for.
    @ivar openFiles: files and directories the core has not closed.
    """

    avatar = None
    readOnly = False

    def __init__(self, plainDirectories: bool = False) -> None:
        self.root = Node(stat.S_IFDIR | 0o755)
        self.gates: dict[str, Deferred[None]] = {}
        self.openFiles: list[FakeFile] = []
        self.openDirectories: list[object] = []
        self.plainDirectories = plainDirectories

    def _answer(self, name: str, call: Callable[[], object]) -> object:
        gate = self.gates.get(name)
        if gate is None:
            return maybeDeferred(call)
        result: Deferred[object] = Deferred()
        gate.addCallback(lambda _: maybeDeferred(call).chainDeferred(result))
        return result

    # Paths

    def lookup(self, path: bytes, followLinks: bool = True) -> Node:
        node = self.root
        parts = _split(path)
        for i, part in enumerate(parts):
            if not node.isDir:
                raise _error(errno.ENOTDIR)
            child = node.children.get(part)
            if child is None:
                raise _error(errno.ENOENT)
            if child.isLink and (followLinks or i < len(parts) - 1):
                base = b"/".join(parts[:i])
                target = (
                    child.target if child.target.startswith(b"/") else base + b"/" + child.target
                )
                child = self.lookup(target)
            node = child
        return node

    def _parent(self, path: bytes) -> tuple[Node, bytes]:
        parts = _split(path)
        if not parts:
            raise _error(errno.EPERM)
        parent = self.lookup(b"/" + b"/".join(parts[:-1]))
        if not parent.isDir:
            raise _error(errno.ENOTDIR)
        return parent, parts[-1]

    def create(self, path: bytes, data: bytes = b"") -> Node:
        parent, name = self._parent(path)
        node = Node(stat.S_IFREG | 0o644)
        node.data[:] = data
        parent.children[name] = node
        return node

    # ISFTPServer

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return {}

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, object]) -> object:
        def openFile() -> FakeFile:
            parent, name = self._parent(filename)
            node = parent.children.get(name)
            if node is None:
                if not flags & 0x08:
                    raise _error(errno.ENOENT)
                node = parent.children[name] = Node(stat.S_IFREG | 0o644)
                node.apply(attrs)
            elif flags & 0x20:
                raise _error(errno.EEXIST)
            elif node.isDir:
                raise _error(errno.EISDIR)
            if flags & 0x10:
                del node.data[:]
            opened = FakeFile(self, node, flags)
            self.openFiles.append(opened)
            return opened

        return self._answer("openFile", openFile)

    def removeFile(self, filename: bytes) -> object:
        def remove() -> None:
            parent, name = self._parent(filename)
            node = parent.children.get(name)
            if node is None:
                raise _error(errno.ENOENT)
            if node.isDir:
                raise _error(errno.EISDIR)
            del parent.children[name]

        return self._answer("removeFile", remove)

    def renameFile(self, oldpath: bytes, newpath: bytes, replace: bool = False) -> object:
        def rename() -> None:
            oldParent, oldName = self._parent(oldpath)
            newParent, newName = self._parent(newpath)
            if oldName not in oldParent.children:
                raise _error(errno.ENOENT)
            if newName in newParent.children and not replace:
                raise _error(errno.EEXIST)
            newParent.children[newName] = oldParent.children.pop(oldName)

        return self._answer("renameFile", rename)

    def makeDirectory(self, path: bytes, attrs: dict[str, object]) -> object:
        def mkdir() -> None:
            parent, name = self._parent(path)
            if name in parent.children:
                raise _error(errno.EEXIST)
            node = parent.children[name] = Node(stat.S_IFDIR | 0o755)
            node.apply(attrs)

        return self._answer("makeDirectory", mkdir)

    def removeDirectory(self, path: bytes) -> object:
        def rmdir() -> None:
            parent, name = self._parent(path)
            node = parent.children.get(name)
            if node is None:
                raise _error(errno.ENOENT)
            if not node.isDir:
                raise _error(errno.ENOTDIR)
            if node.children:
                raise _error(errno.ENOTEMPTY)
            del parent.children[name]

        return self._answer("removeDirectory", rmdir)

    def openDirectory(self, path: bytes) -> object:
        def opendir() -> object:
            node = self.lookup(path)
            if not node.isDir:
                raise _error(errno.ENOTDIR)
            entries = [
                (name, b"-rw-r--r-- 1 0 0 " + name, child.attrs())
                for name, child in sorted(node.children.items())
            ]
            directory: object
            if self.plainDirectories:
                directory = PlainDirectory(self, entries)
            else:
                directory = FakeDirectory(self, entries)
            self.openDirectories.append(directory)
            return directory

        return self._answer("openDirectory", opendir)

    def getAttrs(self, path: bytes, followLinks: bool) -> object:
        return self._answer("getAttrs", lambda: self.lookup(path, followLinks).attrs())

    def setAttrs(self, path: bytes, attrs: dict[str, object]) -> object:
        return self._answer("setAttrs", lambda: self.lookup(path).apply(attrs))

    def readLink(self, path: bytes) -> object:
        def readlink() -> bytes:
            node = self.lookup(path, followLinks=False)
            if not node.isLink:
                raise _error(errno.EINVAL)
            return node.target

        return self._answer("readLink", readlink)

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> object:
        def symlink() -> None:
            parent, name = self._parent(linkPath)
            if name in parent.children:
                raise _error(errno.EEXIST)
            parent.children[name] = Node(stat.S_IFLNK | 0o777, targetPath)

        return self._answer("makeLink", symlink)

    def realPath(self, path: bytes) -> object:
        return self._answer("realPath", lambda: b"/" + b"/".join(_split(path)))

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> object:
        raise NotImplementedError()

    # IShareSFTPServer

    def posixRename(self, oldPath: bytes, newPath: bytes) -> object:
        return self.renameFile(oldPath, newPath, replace=True)

    def statVFS(self, path: bytes) -> object:
        def statvfs() -> dict[str, int]:
            self.lookup(path)
            return dict(
                bsize=4096, frsize=4096, blocks=1000, bfree=500, bavail=400, files=100,
                ffree=50, favail=40, fsid=7, flag=1, namemax=255,
            )  # fmt: skip

        return self._answer("statVFS", statvfs)

    def fstatVFS(self, fileObj: object) -> object:
        return self.statVFS(b"/")

    def hardLink(self, oldPath: bytes, newPath: bytes) -> object:
        def link() -> None:
            node = self.lookup(oldPath, followLinks=False)
            parent, name = self._parent(newPath)
            if name in parent.children:
                raise _error(errno.EEXIST)
            parent.children[name] = node

        return self._answer("hardLink", link)

    def fsync(self, fileObj: object) -> object:
        def fsync() -> None:
            assert isinstance(fileObj, FakeFile)
            fileObj.synced = True

        return self._answer("fsync", fsync)

    def lsetStat(self, path: bytes, attrs: dict[str, object]) -> object:
        return self._answer("lsetStat", lambda: self.lookup(path, False).apply(attrs))

    def expandPath(self, path: bytes) -> object:
        if path == b"~" or path.startswith(b"~/"):
            path = b"/home" + path[1:]
        return self.realPath(path)

    def copyData(
        self, readFile: object, readOffset: int, length: int, writeFile: object, writeOffset: int
    ) -> object:
        def copy() -> None:
            assert isinstance(readFile, FakeFile) and isinstance(writeFile, FakeFile)
            end = readOffset + length if length else len(readFile.node.data)
            chunk = readFile.node.data[readOffset:end]
            writeFile.node.data[writeOffset : writeOffset + len(chunk)] = chunk

        return self._answer("copyData", copy)

    def homeDirectory(self, username: bytes) -> object:
        return b"/home"

    def usersGroupsById(self, uids: list[int], gids: list[int]) -> object:
        def names(ids: list[int], known: dict[int, bytes]) -> list[bytes]:
            return [known.get(i, b"") for i in ids]

        return names(uids, {0: b"root", 1000: b"alice"}), names(gids, {0: b"wheel"})
