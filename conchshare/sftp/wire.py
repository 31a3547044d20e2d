"""
SFTP version 3 on the wire: constants, packet framing, attributes.

Reference: draft-ietf-secsh-filexfer-02 (protocol version 3), and OpenSSH's
C{PROTOCOL} file for the C{@openssh.com} extensions.

Nothing here does I/O.  A L{Reader} raises L{BadMessage} for a field that
runs past the end of the packet, so no peer data is ever trusted by an
C{assert}.  Bytes after a request's last field are the caller's to judge:
the server ignores them, as OpenSSH's sftp-server does; L{Reader.end}
refuses them where a whole message must be read (replies, in tests).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

# Packet types (draft-02 section 3).
FXP_INIT = 1
FXP_VERSION = 2
FXP_OPEN = 3
FXP_CLOSE = 4
FXP_READ = 5
FXP_WRITE = 6
FXP_LSTAT = 7
FXP_FSTAT = 8
FXP_SETSTAT = 9
FXP_FSETSTAT = 10
FXP_OPENDIR = 11
FXP_READDIR = 12
FXP_REMOVE = 13
FXP_MKDIR = 14
FXP_RMDIR = 15
FXP_REALPATH = 16
FXP_STAT = 17
FXP_RENAME = 18
FXP_READLINK = 19
FXP_SYMLINK = 20
FXP_STATUS = 101
FXP_HANDLE = 102
FXP_DATA = 103
FXP_NAME = 104
FXP_ATTRS = 105
FXP_EXTENDED = 200
FXP_EXTENDED_REPLY = 201

# Status codes: version 3 defines 0..8 only (draft-02 section 7).
FX_OK = 0
FX_EOF = 1
FX_NO_SUCH_FILE = 2
FX_PERMISSION_DENIED = 3
FX_FAILURE = 4
FX_BAD_MESSAGE = 5
FX_NO_CONNECTION = 6
FX_CONNECTION_LOST = 7
FX_OP_UNSUPPORTED = 8
FX_MAX_V3 = FX_OP_UNSUPPORTED

# Attribute flags (draft-02 section 5).
FILEXFER_ATTR_SIZE = 0x00000001
FILEXFER_ATTR_UIDGID = 0x00000002
FILEXFER_ATTR_PERMISSIONS = 0x00000004
FILEXFER_ATTR_ACMODTIME = 0x00000008
FILEXFER_ATTR_EXTENDED = 0x80000000

#: The flags of an ATTRS with every field a stat gives, and its layout
#: (flags, size, uid, gid, permissions, atime, mtime).
ALL_ATTRS = (
    FILEXFER_ATTR_SIZE | FILEXFER_ATTR_UIDGID | FILEXFER_ATTR_PERMISSIONS | FILEXFER_ATTR_ACMODTIME
)
ALL_ATTRS_BODY = struct.Struct(">IQIIIII")

# OPEN flags (draft-02 section 6.3); passed to the avatar unchanged.
FXF_READ = 0x00000001
FXF_WRITE = 0x00000002
FXF_APPEND = 0x00000004
FXF_CREAT = 0x00000008
FXF_TRUNC = 0x00000010
FXF_EXCL = 0x00000020

#: The protocol version we speak.
SFTP_VERSION = 3

#: Largest packet body (the length field's value) we accept; larger ones
#: disconnect.  256 KiB of WRITE data plus room for the request header.
MAX_PACKET_LENGTH = 256 * 1024 + 1024
#: Largest READ we serve; larger ones are capped (short read, which every
#: client handles).  255 KiB keeps a DATA reply under OpenSSH's client limit
#: of 256 KiB per received message even with C{sftp -B 262144}.
MAX_READ_LENGTH = 255 * 1024
#: Largest WRITE we announce.
MAX_WRITE_LENGTH = 256 * 1024
#: Largest reply body we build from several entries (READDIR): OpenSSH's
#: client refuses messages over 256 KiB.
MAX_REPLY_LENGTH = 256 * 1024

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">IB")
_HEADER_ID = struct.Struct(">IBI")
_STATUS = struct.Struct(">IBII")
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


class BadMessage(Exception):
    """
    A packet does not parse: a field runs past its end (or, for
    L{Reader.end}, bytes are left over).  Answered with C{FX_BAD_MESSAGE}.
    """


class Reader:
    """
    Reader of one packet body; a field past its end is L{BadMessage}.

    @ivar offset: where the next field starts.
    """

    __slots__ = ("_data", "offset")

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._data = memoryview(data)
        self.offset = offset

    def _take(self, n: int) -> memoryview:
        start = self.offset
        end = start + n
        if n < 0 or end > len(self._data):
            raise BadMessage("Packet too short")
        self.offset = end
        return self._data[start:end]

    def u32(self) -> int:
        """
        @return: the next C{uint32}.
        @raise BadMessage: too few bytes left.
        """
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        """
        @return: the next C{uint64}.
        @raise BadMessage: too few bytes left.
        """
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def string(self) -> bytes:
        """
        @return: the next C{string} (uint32 length and bytes), as bytes.
        @raise BadMessage: too few bytes left.
        """
        return bytes(self._take(self.u32()))

    def attrs(self) -> dict[str, object]:
        """
        @return: the next ATTRS as a Conch attributes dict (C{size}, C{uid},
            C{gid}, C{permissions}, C{atime}, C{mtime}, C{ext_NAME}).
        @raise BadMessage: too few bytes left.
        """
        flags = self.u32()
        attrs: dict[str, object] = {}
        # Unknown flag bits are ignored, as OpenSSH's sftp-server does.
        if flags & FILEXFER_ATTR_SIZE:
            attrs["size"] = self.u64()
        if flags & FILEXFER_ATTR_UIDGID:
            attrs["uid"] = self.u32()
            attrs["gid"] = self.u32()
        if flags & FILEXFER_ATTR_PERMISSIONS:
            attrs["permissions"] = self.u32()
        if flags & FILEXFER_ATTR_ACMODTIME:
            attrs["atime"] = self.u32()
            attrs["mtime"] = self.u32()
        if flags & FILEXFER_ATTR_EXTENDED:
            count = self.u32()
            for _ in range(count):
                name = self.string()
                attrs["ext_" + name.decode("latin-1")] = self.string()
        return attrs

    def atEnd(self) -> bool:
        """
        @return: whether every byte was read.
        """
        return self.offset >= len(self._data)

    def rest(self) -> bytes:
        """
        @return: every byte left (an extension's own data).
        """
        return bytes(self._take(len(self._data) - self.offset))

    def end(self) -> None:
        """
        @raise BadMessage: bytes are left over.
        """
        if self.offset != len(self._data):
            raise BadMessage("Trailing data in packet")


def u32(value: int) -> bytes:
    """
    @return: C{value} as a C{uint32}.
    """
    return _U32.pack(value & _MASK32)


def u64(value: int) -> bytes:
    """
    @return: C{value} as a C{uint64}.
    """
    return _U64.pack(value & _MASK64)


def string(value: bytes) -> bytes:
    """
    @return: C{value} as an SSH C{string}.
    """
    return _U32.pack(len(value)) + value


def encodeAttrs(attrs: Mapping[str, object]) -> bytes:
    """
    Encode a Conch attributes dict; keys that are missing are left out.

    Times and ids are truncated to 32 bits as OpenSSH does.

    @return: the ATTRS bytes.
    """
    flags = 0
    parts = [b""]
    size = attrs.get("size")
    if size is not None:
        flags |= FILEXFER_ATTR_SIZE
        parts.append(u64(_int(size)))
    uid, gid = attrs.get("uid"), attrs.get("gid")
    if uid is not None and gid is not None:
        flags |= FILEXFER_ATTR_UIDGID
        parts.append(u32(_int(uid)) + u32(_int(gid)))
    permissions = attrs.get("permissions")
    if permissions is not None:
        flags |= FILEXFER_ATTR_PERMISSIONS
        parts.append(u32(_int(permissions)))
    atime, mtime = attrs.get("atime"), attrs.get("mtime")
    if atime is not None and mtime is not None:
        flags |= FILEXFER_ATTR_ACMODTIME
        parts.append(u32(_int(atime)) + u32(_int(mtime)))
    extended = [
        string(key[4:].encode("latin-1")) + string(_bytes(value))
        for key, value in attrs.items()
        if key.startswith("ext_")
    ]
    if extended:
        flags |= FILEXFER_ATTR_EXTENDED
        parts.append(u32(len(extended)))
        parts.extend(extended)
    parts[0] = u32(flags)
    return b"".join(parts)


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    raise TypeError(f"Attribute value is not a number: {value!r}")


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"Extended attribute value is not bytes: {value!r}")


def packet(kind: int, *parts: bytes) -> bytes:
    """
    Frame one packet: length, type, then C{parts}.

    @return: the bytes to write.
    """
    body = b"".join(parts)
    return _HEADER.pack(len(body) + 1, kind) + body


def reply(kind: int, requestId: int, *parts: bytes) -> bytes:
    """
    Frame a reply to request C{requestId}.

    @return: the bytes to write.
    """
    body = b"".join(parts)
    return _HEADER_ID.pack(len(body) + 5, kind, requestId) + body


def dataHeader(requestId: int, length: int) -> bytes:
    """
    Frame the start of a DATA reply carrying C{length} bytes; the bytes
    follow as they are, so the bulk path copies them once less.

    @return: the 13 bytes to write before the data.
    """
    return _STATUS.pack(length + 9, FXP_DATA, requestId, length)


def status(requestId: int, code: int, message: bytes) -> bytes:
    """
    Frame a STATUS reply (code, message, empty language tag).

    @return: the bytes to write.
    """
    return reply(FXP_STATUS, requestId, u32(code), string(message), string(b""))


def nameEntry(filename: bytes, longname: bytes, attrs: Mapping[str, object]) -> bytes:
    """
    @return: one entry of a NAME reply.
    """
    return string(filename) + string(longname) + encodeAttrs(attrs)


def name(requestId: int, entries: Iterable[bytes]) -> bytes:
    """
    Frame a NAME reply from entries made by L{nameEntry}.

    @return: the bytes to write.
    """
    entries = list(entries)
    return reply(FXP_NAME, requestId, u32(len(entries)), *entries)


def version(extensions: Iterable[tuple[bytes, bytes]]) -> bytes:
    """
    Frame the VERSION reply advertising C{(name, data)} pairs in order.

    @return: the bytes to write.
    """
    return packet(
        FXP_VERSION,
        u32(SFTP_VERSION),
        *(string(extName) + string(extData) for extName, extData in extensions),
    )
