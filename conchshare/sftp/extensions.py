"""
OpenSSH's SFTP extensions: the one table (L{EXTENSIONS}) that both makes
the list the server advertises in VERSION and drives the dispatch of
C{EXTENDED} requests, their argument fields and their reply shapes.

To add an extension: a row here (name, advertised version, argument
fields, avatar method, reply kind), the method in
L{conchshare.sftp.interfaces.IShareSFTPServer} and in the avatar; a new
reply kind in L{extensionReply}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from conchshare.sftp import wire
from conchshare.sftp.budget import HandleBudget
from conchshare.sftp.interfaces import IShareSFTPServer

__all__ = [
    "EXTENSIONS",
    "OK_MESSAGE",
    "Extension",
    "ExtensionRequests",
    "asBytes",
    "extensionReply",
    "noSuchHandle",
    "ourExtensions",
    "parseArguments",
]

#: The message of a STATUS OK reply.
OK_MESSAGE = b"Success"


def noSuchHandle() -> SFTPError:
    """
    The error of a request on a handle the client does not hold.
    """
    return SFTPError(wire.FX_FAILURE, "No such handle")


def asBytes(value: object) -> bytes:
    """
    C{value} as bytes: C{str} (from an avatar) encoded as UTF-8, with
    surrogate escapes.

    @raise TypeError: neither.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise TypeError(f"Expected bytes, got {type(value).__name__}")


@dataclass(frozen=True)
class Extension:
    """
    One OpenSSH extension: drives both the VERSION advertisement and the
    dispatch of C{EXTENDED} requests.

    @ivar name: the request name, as advertised.
    @ivar version: the advertised data (OpenSSH's version string; sshfs only
        uses posix-rename as C{"1"} and statvfs as C{"2"}).
    @ivar arguments: the request fields after the name: C{"string"},
        C{"handle"} (an open file), C{"u64"}, C{"attrs"}, C{"u32list"} (a
        string of packed uint32s).
    @ivar method: the L{IShareSFTPServer} method called with the fields, or
        C{None} when the core answers by itself.
    @ivar reply: the reply kind: C{"status"}, C{"name"}, C{"statvfs"},
        C{"limits"}, C{"users-groups"}.
    """

    name: bytes
    version: bytes
    arguments: tuple[str, ...]
    method: str | None
    reply: str


#: OpenSSH's extensions, in the order its sftp-server advertises them.
EXTENSIONS: tuple[Extension, ...] = (
    Extension(b"posix-rename@openssh.com", b"1", ("string", "string"), "posixRename", "status"),
    Extension(b"statvfs@openssh.com", b"2", ("string",), "statVFS", "statvfs"),
    Extension(b"fstatvfs@openssh.com", b"2", ("handle",), "fstatVFS", "statvfs"),
    Extension(b"hardlink@openssh.com", b"1", ("string", "string"), "hardLink", "status"),
    Extension(b"fsync@openssh.com", b"1", ("handle",), "fsync", "status"),
    Extension(b"lsetstat@openssh.com", b"1", ("string", "attrs"), "lsetStat", "status"),
    Extension(b"limits@openssh.com", b"1", (), None, "limits"),
    Extension(b"expand-path@openssh.com", b"1", ("string",), "expandPath", "name"),
    Extension(b"copy-data", b"1", ("handle", "u64", "u64", "handle", "u64"), "copyData", "status"),
    Extension(b"home-directory", b"1", ("string",), "homeDirectory", "name"),
    Extension(
        b"users-groups-by-id@openssh.com",
        b"1",
        ("u32list", "u32list"),
        "usersGroupsById",
        "users-groups",
    ),
)

_STATVFS_FIELDS = (
    "bsize",
    "frsize",
    "blocks",
    "bfree",
    "bavail",
    "files",
    "ffree",
    "favail",
    "fsid",
    "flag",
    "namemax",
)


def ourExtensions(avatar: object) -> dict[bytes, Extension]:
    """
    The extensions served for C{avatar}, by name, in advertising order:
    all of L{EXTENSIONS} if it provides L{IShareSFTPServer}, else those the
    core answers by itself.
    """
    return {
        extension.name: extension
        for extension in EXTENSIONS
        if extension.method is None or IShareSFTPServer.providedBy(avatar)
    }


def parseArguments(extension: Extension, r: wire.Reader) -> list[object]:
    """
    The fields of an C{extension} request after its name (handles as the
    strings they are).

    @raise wire.BadMessage: a field runs past the end.
    """
    args: list[object] = []
    for kind in extension.arguments:
        if kind == "string" or kind == "handle":
            args.append(r.string())
        elif kind == "u64":
            args.append(r.u64())
        elif kind == "attrs":
            args.append(r.attrs())
        else:
            packed = wire.Reader(r.string())
            ids = []
            while not packed.atEnd():
                ids.append(packed.u32())
            args.append(ids)
    return args


def extensionReply(result: Any, kind: str, requestId: int, maxOpenHandles: int) -> bytes:
    """
    The reply to an extension request whose avatar method gave C{result}.

    @param kind: the extension's L{Extension.reply}.
    @param maxOpenHandles: what limits@openssh.com announces.
    """
    if kind == "status":
        return wire.status(requestId, wire.FX_OK, OK_MESSAGE)
    if kind == "name":
        path = asBytes(result)
        return wire.name(requestId, [wire.nameEntry(path, path, {})])
    if kind == "statvfs":
        return wire.reply(
            wire.FXP_EXTENDED_REPLY,
            requestId,
            *(wire.u64(int(result[field])) for field in _STATVFS_FIELDS),
        )
    if kind == "users-groups":
        users, groups = result
        return wire.reply(
            wire.FXP_EXTENDED_REPLY,
            requestId,
            wire.string(b"".join(wire.string(asBytes(n)) for n in users)),
            wire.string(b"".join(wire.string(asBytes(n)) for n in groups)),
        )
    # limits@openssh.com: max packet, read, write lengths, open handles.
    return wire.reply(
        wire.FXP_EXTENDED_REPLY,
        requestId,
        wire.u64(wire.MAX_PACKET_LENGTH),
        wire.u64(wire.MAX_READ_LENGTH),
        wire.u64(wire.MAX_WRITE_LENGTH),
        wire.u64(maxOpenHandles),
    )


class ExtensionRequests:
    """
    INIT (the version and the extensions advertised) and C{EXTENDED}
    requests: the part of L{conchshare.sftp.core.SFTPServerCore} (its base
    class) that serves L{EXTENSIONS} and the avatar's own extensions.
    """

    _log: Logger
    avatar: ISFTPServer
    _initialised: bool
    _extensions: dict[bytes, Extension]
    _avatarExtensions: dict[bytes, bytes]
    _maxOpenHandles: int
    _budget: HandleBudget
    _abort: Callable[[str], None]
    _send: Callable[[bytes], None]
    _file: Callable[[bytes], ISFTPFile]

    def _init(self, reader: wire.Reader) -> None:
        try:
            clientVersion = reader.u32()
            clientExtensions: dict[bytes, bytes] = {}
            while not reader.atEnd():
                clientExtensions[reader.string()] = reader.string()
        except wire.BadMessage:
            self._abort("Malformed INIT")
            return
        self._initialised = True
        self._avatarExtensions = {}
        try:
            theirs = self.avatar.gotVersion(clientVersion, clientExtensions)
        except Exception:
            self._log.failure("The SFTP avatar refused the version")
            theirs = None
        if isinstance(theirs, dict):
            # Extensions of the avatar's own, beyond our table, answered
            # with its extendedRequest as stock Conch does.
            for extName, extData in theirs.items():
                extName, extData = asBytes(extName), asBytes(extData)
                if extName not in self._extensions:
                    self._avatarExtensions[extName] = extData
        advertised = [(e.name, e.version) for e in self._extensions.values()]
        advertised.extend(self._avatarExtensions.items())
        self._send(wire.version(advertised))

    def _extended(self, requestId: int, r: wire.Reader) -> Deferred[bytes]:
        extName = r.string()
        extension = self._extensions.get(extName)
        if extension is None:
            if extName in self._avatarExtensions:
                d = maybeDeferred(self.avatar.extendedRequest, extName, r.rest())
                return d.addCallback(
                    lambda data: wire.reply(wire.FXP_EXTENDED_REPLY, requestId, asBytes(data))
                )
            raise NotImplementedError()
        args = parseArguments(extension, r)
        # Handles resolve only once the whole request parsed.
        args = [
            self._file(asBytes(arg)) if kind == "handle" else arg
            for kind, arg in zip(extension.arguments, args, strict=True)
        ]
        result: Deferred[Any] = succeed(None)
        if extension.method is not None:
            result = maybeDeferred(getattr(self.avatar, extension.method), *args)
        return result.addCallback(
            extensionReply,
            extension.reply,
            requestId,
            min(self._maxOpenHandles, self._budget.perClient),
        )
