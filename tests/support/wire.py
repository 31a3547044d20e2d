"""
SFTP v3 packets written and read by hand, independently of
L{conchshare.sftp.wire}, so that a bug there cannot hide in a test: the
encoders, the constants the tests use and L{packets}, which splits a
server's output.
"""

from __future__ import annotations

import struct


# The encoders.
def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def s(b: bytes) -> bytes:
    return u32(len(b)) + b


def packet(kind: int, body: bytes) -> bytes:
    return u32(len(body) + 1) + bytes([kind]) + body


def request(kind: int, rid: int, body: bytes = b"") -> bytes:
    return packet(kind, u32(rid) + body)


def status(rid: int, code: int, message: bytes) -> bytes:
    return packet(101, u32(rid) + u32(code) + s(message) + s(b""))


def ok(rid: int) -> bytes:
    return status(rid, 0, b"Success")


def handle(rid: int, h: bytes) -> bytes:
    return packet(102, u32(rid) + s(h))


def name1(rid: int, path: bytes) -> bytes:
    return packet(104, u32(rid) + u32(1) + s(path) + s(path) + u32(0))


def extended(rid: int, extName: bytes, body: bytes = b"") -> bytes:
    return request(200, rid, s(extName) + body)


def usersGroups(rid: int, uids: list[int], gids: list[int]) -> bytes:
    """
    A users-groups-by-id@openssh.com request for C{uids} and C{gids}.
    """
    packed = b"".join(u32(i) for i in uids), b"".join(u32(i) for i in gids)
    return extended(rid, b"users-groups-by-id@openssh.com", s(packed[0]) + s(packed[1]))


INIT = packet(1, u32(3))
NO_ATTRS = u32(0)
# OPEN flags
READ, WRITE, APPEND, CREAT, TRUNC, EXCL = 1, 2, 4, 8, 0x10, 0x20


def packets(data: bytes) -> list[bytes]:
    """
    Split replies into packets (length prefix included).
    """
    result = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        result.append(data[: 4 + length])
        data = data[4 + length :]
    return result
