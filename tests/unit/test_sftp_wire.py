"""
Tests for L{conchshare.sftp.wire}: strict parsing and exact encodings
(draft-ietf-secsh-filexfer-02 sections 3 and 5).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from conchshare.sftp import wire
from tests.support.wire import packet, s, u32, u64

FULL_ATTRS = (
    u32(0x8000000F)
    + u64(7)
    + u32(1000)
    + u32(100)
    + u32(0o100644)
    + u32(11)
    + u32(22)
    + u32(1)
    + s(b"user.x")
    + s(b"\xff\x00")
)
FULL_DICT = {
    "size": 7,
    "uid": 1000,
    "gid": 100,
    "permissions": 0o100644,
    "atime": 11,
    "mtime": 22,
    "ext_user.x": b"\xff\x00",
}


class ReaderTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """
        uint32, uint64 and string are read in order; end() accepts a fully
        read packet.
        """
        r = wire.Reader(u32(5) + u64(2**40) + s(b"abc"))
        self.assertEqual((r.u32(), r.u64(), r.string()), (5, 2**40, b"abc"))
        r.end()
        self.assertTrue(r.atEnd())

    def test_short(self) -> None:
        """
        A field running past the end raises BadMessage, whatever its kind.
        """
        for data, read in [
            (b"\0\0\0", wire.Reader.u32),
            (b"\0" * 7, wire.Reader.u64),
            (u32(4) + b"abc", wire.Reader.string),
            (u32(0xFFFFFFFF), wire.Reader.string),
            (u32(1), wire.Reader.attrs),
            (u32(0x80000000) + u32(1) + s(b"name"), wire.Reader.attrs),
        ]:
            self.assertRaises(wire.BadMessage, read, wire.Reader(data))

    def test_trailing(self) -> None:
        """
        end() raises BadMessage when bytes are left.
        """
        r = wire.Reader(u32(1) + b"x")
        r.u32()
        self.assertRaises(wire.BadMessage, r.end)

    def test_attrs(self) -> None:
        """
        Every ATTRS field decodes to Conch's dict keys; extended names keep
        any byte.
        """
        self.assertEqual(wire.Reader(FULL_ATTRS).attrs(), FULL_DICT)
        self.assertEqual(wire.Reader(u32(0)).attrs(), {})

    def test_unknownAttrFlags(self) -> None:
        """
        Unknown flag bits are ignored, as OpenSSH's sftp-server does.
        """
        self.assertEqual(wire.Reader(u32(0x40 | 4) + u32(0o755)).attrs(), {"permissions": 0o755})


class EncodeTests(SynchronousTestCase):
    def test_attrs(self) -> None:
        """
        encodeAttrs is the inverse of Reader.attrs.
        """
        self.assertEqual(wire.encodeAttrs(FULL_DICT), FULL_ATTRS)
        self.assertEqual(wire.encodeAttrs({}), u32(0))

    def test_attrsPartial(self) -> None:
        """
        uid without gid, or atime without mtime, are left out; floats are
        truncated; times beyond 32 bits wrap as OpenSSH's do.
        """
        self.assertEqual(
            wire.encodeAttrs({"uid": 1, "atime": 3, "mtime": 2**32 + 5.7}), u32(8) + u32(3) + u32(5)
        )

    def test_frames(self) -> None:
        """
        Replies are framed with length, type and request id.
        """
        self.assertEqual(
            wire.status(7, 4, b"Failure"), packet(101, u32(7) + u32(4) + s(b"Failure") + s(b""))
        )
        self.assertEqual(wire.dataHeader(9, 3) + b"abc", packet(103, u32(9) + s(b"abc")))
        self.assertEqual(
            wire.name(1, [wire.nameEntry(b"f", b"long f", {"size": 1})]),
            packet(104, u32(1) + u32(1) + s(b"f") + s(b"long f") + u32(1) + u64(1)),
        )
        self.assertEqual(wire.version([(b"a", b"1")]), packet(2, u32(3) + s(b"a") + s(b"1")))

    def test_limits(self) -> None:
        """
        The limits let OpenSSH's client use 255 KiB requests: reads fit its
        256 KiB message limit, and a 256 KiB WRITE fits our packet limit.
        """
        self.assertGreaterEqual(wire.MAX_READ_LENGTH, 255 * 1024)
        self.assertLessEqual(wire.MAX_READ_LENGTH + 9, 256 * 1024)
        self.assertGreaterEqual(
            wire.MAX_PACKET_LENGTH, wire.MAX_WRITE_LENGTH + 1 + 4 + 4 + 256 + 8 + 4
        )
