"""
Raw-bytes tests of L{conchshare.sftp.core.SFTPServerCore}.

Each wire case is fed whole, one byte at a time, and followed by the start
of another packet; the replies must be the same exact bytes every time.
Section numbers refer to draft-ietf-secsh-filexfer-02 (SFTP v3) and to
OpenSSH's PROTOCOL file.  The tests marked "Conch" pin a defect of Twisted
Conch 26.10's FileTransferServer that the core must not have.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable
from typing import cast

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from conchshare.sftp import wire
from conchshare.sftp.budget import HandleBudget, budgetFor
from conchshare.sftp.core import SFTPServerCore
from conchshare.sftp.engine import Delivery
from conchshare.sftp.extensions import EXTENSIONS
from conchshare.sftp.interfaces import IShareDirectory, IShareSFTPServer
from tests.support.harness import Harness
from tests.support.sftpfake import FakeDirectory, FakeFile, FakeSFTPServer
from tests.support.wire import (
    CREAT,
    EXCL,
    INIT,
    NO_ATTRS,
    READ,
    WRITE,
    extended,
    handle,
    name1,
    ok,
    packet,
    packets,
    request,
    s,
    status,
    u32,
    u64,
)

NO_SUCH_HANDLE = b"No such handle"

#: OpenSSH 9's sftp-server advertisement, in its order.
OPENSSH_EXTENSIONS = [
    (b"posix-rename@openssh.com", b"1"),
    (b"statvfs@openssh.com", b"2"),
    (b"fstatvfs@openssh.com", b"2"),
    (b"hardlink@openssh.com", b"1"),
    (b"fsync@openssh.com", b"1"),
    (b"lsetstat@openssh.com", b"1"),
    (b"limits@openssh.com", b"1"),
    (b"expand-path@openssh.com", b"1"),
    (b"copy-data", b"1"),
    (b"home-directory", b"1"),
    (b"users-groups-by-id@openssh.com", b"1"),
]


def feedWhole(h: Harness, data: bytes) -> None:
    h.feed(data)


def feedBytewise(h: Harness, data: bytes) -> None:
    for i in range(len(data)):
        h.feed(data[i : i + 1])


def feedWithTrailing(h: Harness, data: bytes) -> None:
    # The start of a further READ: its length and type, not yet complete.
    h.feed(data + request(5, 999, s(b"1") + u64(0) + u32(10))[:6])


FEEDERS: list[Callable[[Harness, bytes], None]] = [feedWhole, feedBytewise, feedWithTrailing]


class CoreTestCase(SynchronousTestCase):
    def exchange(
        self,
        data: bytes,
        expected: bytes,
        setup: Callable[[Harness], object] = lambda h: None,
        check: Callable[[Harness], object] = lambda h: None,
    ) -> None:
        """
        Feed C{data} to a fresh, initialised core in each of the three ways
        and check that exactly C{expected} is written each time.
        """
        for feeder in FEEDERS:
            h = Harness()
            h.init()
            setup(h)
            h.take()
            feeder(h, data)
            self.assertEqual(h.take(), expected, feeder.__name__)
            self.assertEqual(h.disconnects, 0)
            check(h)


class FakeTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        """
        The fake avatar is a real implementation of the contract.
        """
        server = FakeSFTPServer()
        verifyObject(ISFTPServer, server)
        verifyObject(IShareSFTPServer, server)
        verifyObject(ISFTPFile, FakeFile(server, server.root, 0))
        verifyObject(IShareDirectory, FakeDirectory(server, []))


class VersionTests(CoreTestCase):
    def test_versionAdvertisesOpenSSHPairs(self) -> None:
        """
        INIT is answered with VERSION 3 and OpenSSH's exact extension
        name/version pairs, in OpenSSH's order (Conch advertises nothing; sshfs
        needs posix-rename "1" and statvfs "2").
        """
        expected = packet(2, u32(3) + b"".join(s(n) + s(v) for n, v in OPENSSH_EXTENSIONS))
        for feeder in FEEDERS:
            h = Harness()
            feeder(h, INIT)
            self.assertEqual(h.take(), expected, feeder.__name__)
        self.assertEqual([(e.name, e.version) for e in EXTENSIONS], OPENSSH_EXTENSIONS)

    def test_clientVersionAndExtensions(self) -> None:
        """
        A client announcing another version and extensions still gets v3.
        """
        h = Harness()
        h.feed(packet(1, u32(6) + s(b"x@example.com") + s(b"1")))
        self.assertEqual(
            h.take()[:9],
            u32(5 + sum(8 + len(n) + len(v) for n, v in OPENSSH_EXTENSIONS)) + b"\x02" + u32(3),
        )

    def test_stockAvatarGetsLimitsOnly(self) -> None:
        """
        An avatar without IShareSFTPServer gets only limits@openssh.com,
        which the core answers itself, and the extensions its gotVersion
        returns.
        """

        @implementer(ISFTPServer)
        class Stock:
            """
            A stock Conch avatar: ISFTPServer only, over the fake's files.
            """

            def __init__(self) -> None:
                self.fake = FakeSFTPServer()

            def __getattr__(self, name: str) -> object:
                return getattr(self.fake, name)

            def gotVersion(
                self, otherVersion: int, extData: dict[bytes, bytes]
            ) -> dict[bytes, bytes]:
                return {b"mine@example.com": b"7", b"limits@openssh.com": b"9"}

            def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> object:
                return b"reply:" + extendedData

        h = Harness(Stock())
        self.assertEqual(
            h.init(),
            packet(
                2, u32(3) + s(b"limits@openssh.com") + s(b"1") + s(b"mine@example.com") + s(b"7")
            ),
        )
        h.feed(extended(1, b"statvfs@openssh.com", s(b"/")))
        self.assertEqual(h.take(), status(1, 8, b"Operation unsupported"))
        h.feed(extended(2, b"mine@example.com", b"abc"))
        self.assertEqual(h.take(), packet(201, u32(2) + b"reply:abc"))

    def test_requestBeforeInit(self) -> None:
        """
        A request before INIT disconnects, as OpenSSH's sftp-server does.
        """
        h = Harness()
        h.feed(request(17, 1, s(b"/")))
        self.assertEqual((h.take(), h.disconnects), (b"", 1))

    def test_duplicateInit(self) -> None:
        """
        A second INIT disconnects.
        """
        h = Harness()
        h.init()
        h.feed(INIT)
        self.assertEqual((h.take(), h.disconnects), (b"", 1))


class MalformedTests(CoreTestCase):
    def test_truncatedField(self) -> None:
        """
        Conch: a string running past the end of the packet is BAD_MESSAGE
        with the request id, not an assert and silence.
        """
        self.exchange(
            request(3, 7, u32(100) + b"/short"),
            status(7, 5, b"Packet too short"),
        )

    def test_trailingDataIgnored(self) -> None:
        """
        Bytes after a request's last field are ignored, as OpenSSH's
        sftp-server does (Conch asserts; we once answered BAD_MESSAGE):
        every request gets the reply it gets without them.
        """

        def setup(h: Harness) -> None:
            h.avatar.create(b"/f", b"abc")
            h.avatar.makeLink(b"/l", b"x/y")

        attrs = (
            u32(15) + u64(3) + u32(0) + u32(0) + u32(stat.S_IFREG | 0o644) + u32(1000) + u32(2000)
        )
        junk = b"junk\0\0\0\x07"
        self.exchange(
            request(17, 8, s(b"/f") + junk)
            + request(7, 9, s(b"/f") + junk)
            + request(19, 10, s(b"/l") + junk)
            + request(16, 11, s(b"a/../b") + junk)
            + request(14, 12, s(b"/d") + NO_ATTRS + junk)
            + request(9, 13, s(b"/f") + NO_ATTRS + junk)
            + request(18, 14, s(b"/d") + s(b"/e") + junk)
            + request(3, 15, s(b"/f") + u32(READ) + NO_ATTRS + junk)
            + request(5, 16, s(b"1") + u64(1) + u32(10) + junk)
            + request(4, 17, s(b"1") + junk)
            + extended(18, b"hardlink@openssh.com", s(b"/f") + s(b"/g") + junk),
            packet(105, u32(8) + attrs)
            + packet(105, u32(9) + attrs)
            + name1(10, b"x/y")
            + name1(11, b"/b")
            + ok(12)
            + ok(13)
            + ok(14)
            + handle(15, b"1")
            + packet(103, u32(16) + s(b"bc"))
            + ok(17)
            + ok(18),
            setup=setup,
            check=lambda h: self.assertEqual(
                sorted(h.avatar.root.children), [b"e", b"f", b"g", b"l"]
            ),
        )

    def test_writeTrailingData(self) -> None:
        """
        A WRITE packet longer than its data field (a Go client reuses a
        32 KiB buffer) writes exactly the field's C{length} bytes.
        """

        def setup(h: Harness) -> None:
            h.feed(request(3, 1, s(b"/f") + u32(WRITE | CREAT) + NO_ATTRS))

        def check(h: Harness) -> None:
            self.assertEqual(h.avatar.lookup(b"/f").data, b"\0\0abc")

        self.exchange(
            request(6, 2, s(b"1") + u64(2) + s(b"abc") + b"xyz" * 100),
            ok(2),
            setup=setup,
            check=check,
        )

    def test_shortPacketSessionGoesOn(self) -> None:
        """
        A packet too short for its fields is BAD_MESSAGE with its id, and
        the session goes on (OpenSSH's sftp-server exits: a listed
        difference).
        """
        self.exchange(
            request(6, 3, s(b"1") + u64(0) + u32(10) + b"abc")
            + request(19, 4, u32(9) + b"/l")
            + request(17, 5, s(b"/")),
            status(3, 5, b"Packet too short")
            + status(4, 5, b"Packet too short")
            + packet(
                105,
                u32(5)
                + u32(15)
                + u64(0)
                + u32(0)
                + u32(0)
                + u32(stat.S_IFDIR | 0o755)
                + u32(1000)
                + u32(2000),
            ),
        )

    def test_shortFieldsOfHotRequests(self) -> None:
        """
        READ, WRITE, STAT, LSTAT and FSTAT, whose fields the core parses
        itself, fail as every other request does when a field runs past
        the end: BAD_MESSAGE with the request's id, at each field.
        """
        cases = [
            request(5, 1, u32(9) + b"1"),  # READ: handle longer than the packet
            request(5, 2, s(b"1") + u64(0)),  # READ: no length
            request(5, 3, s(b"1") + u32(0)),  # READ: offset cut short
            request(6, 4, s(b"1") + u64(0)),  # WRITE: no length
            request(6, 5, b"\0\0"),  # WRITE: handle's length cut short
            request(17, 6, u32(2) + b"/"),  # STAT
            request(7, 7, b""),  # LSTAT: no path
            request(8, 8, u32(5)),  # FSTAT
        ]
        expected = b"".join(status(requestId, 5, b"Packet too short") for requestId in range(1, 9))
        self.exchange(b"".join(cases), expected)

    def test_noRequestId(self) -> None:
        """
        A packet too short to hold a request id is BAD_MESSAGE with id 0.
        """
        self.exchange(packet(17, b"\x00\x01"), status(0, 5, b"Packet too short"))

    def test_unknownType(self) -> None:
        """
        An unknown packet type is OP_UNSUPPORTED with its id.
        """
        self.exchange(request(99, 3, b"x"), status(3, 8, b"Operation unsupported"))

    def test_truncatedAttrs(self) -> None:
        """
        ATTRS whose flags promise fields that are missing: BAD_MESSAGE.
        """
        self.exchange(request(9, 4, s(b"/") + u32(1) + b"\0\0"), status(4, 5, b"Packet too short"))

    def test_oversizedPacketDisconnects(self) -> None:
        """
        Conch: a length over the advertised maximum disconnects at once,
        without waiting for the body, and nothing more is read.
        """
        h = Harness()
        h.init()
        h.feed(u32(wire.MAX_PACKET_LENGTH + 1) + b"\x06")
        self.assertEqual((h.take(), h.disconnects), (b"", 1))
        h.feed(request(17, 1, s(b"/")))
        self.assertEqual((h.take(), h.disconnects), (b"", 1))

    def test_largestPacketAccepted(self) -> None:
        """
        A WRITE of 256 KiB (a packet at the advertised maximum) is served.
        """
        h = Harness()
        h.init()
        h.avatar.create(b"/f")
        h.feed(request(3, 1, s(b"/f") + u32(WRITE) + NO_ATTRS))
        self.assertEqual(h.take(), handle(1, b"1"))
        h.feed(request(6, 2, s(b"1") + u64(0) + s(b"x" * wire.MAX_WRITE_LENGTH)))
        self.assertEqual((h.take(), h.disconnects), (ok(2), 0))
        self.assertEqual(len(h.avatar.lookup(b"/f").data), wire.MAX_WRITE_LENGTH)


class FileTests(CoreTestCase):
    def test_openWriteReadClose(self) -> None:
        """
        OPEN with CREAT gives a handle; WRITE, READ, FSTAT and CLOSE use it.
        """
        h = Harness()
        h.init()
        h.feed(request(3, 1, s(b"/f") + u32(READ | WRITE | CREAT) + u32(4) + u32(0o600)))
        self.assertEqual(h.take(), handle(1, b"1"))
        self.assertEqual(h.avatar.lookup(b"/f").mode, stat.S_IFREG | 0o600)
        h.feed(request(6, 2, s(b"1") + u64(2) + s(b"abc")))
        h.feed(request(5, 3, s(b"1") + u64(0) + u32(100)))
        self.assertEqual(h.take(), ok(2) + packet(103, u32(3) + s(b"\0\0abc")))
        h.feed(request(5, 4, s(b"1") + u64(5) + u32(100)))
        self.assertEqual(h.take(), status(4, 1, b"End of file"))
        h.feed(request(8, 5, s(b"1")))
        node = h.avatar.lookup(b"/f")
        self.assertEqual(
            h.take(),
            packet(
                105,
                u32(5)
                + u32(15)
                + u64(5)
                + u32(0)
                + u32(0)
                + u32(node.mode)
                + u32(1000)
                + u32(2000),
            ),
        )
        h.feed(request(4, 6, s(b"1")))
        self.assertEqual(h.take(), ok(6))
        self.assertEqual(h.avatar.openFiles, [])
        h.feed(request(5, 7, s(b"1") + u64(0) + u32(1)))
        self.assertEqual(h.take(), status(7, 4, NO_SUCH_HANDLE))

    def test_openExclusiveExisting(self) -> None:
        """
        Conch: EEXIST is FX_FAILURE (4) with "File exists", never the v6
        code 11 a v3 client does not know.
        """
        self.exchange(
            request(3, 9, s(b"/f") + u32(WRITE | CREAT | EXCL) + NO_ATTRS),
            status(9, 4, b"File exists"),
            setup=lambda h: h.avatar.create(b"/f"),
        )

    def test_openMissing(self) -> None:
        """
        ENOENT is NO_SUCH_FILE.
        """
        self.exchange(
            request(3, 9, s(b"/nope") + u32(READ) + NO_ATTRS),
            status(9, 2, b"No such file or directory"),
        )

    def test_readUnknownHandle(self) -> None:
        """
        Conch: READ on an unknown handle is a status (Conch calls a missing
        method and the client hangs).
        """
        self.exchange(request(5, 10, s(b"42") + u64(0) + u32(10)), status(10, 4, NO_SUCH_HANDLE))

    def test_writeUnknownHandle(self) -> None:
        """
        Conch: WRITE on an unknown handle is a status.
        """
        self.exchange(request(6, 11, s(b"42") + u64(0) + s(b"x")), status(11, 4, NO_SUCH_HANDLE))

    def test_otherUnknownHandles(self) -> None:
        """
        CLOSE, FSTAT, FSETSTAT and READDIR on unknown handles are statuses:
        NO_SUCH_FILE for CLOSE, FAILURE for the others, as OpenSSH's
        sftp-server answers.
        """
        self.exchange(request(4, 1, s(b"x")), status(1, 2, NO_SUCH_HANDLE))
        self.exchange(request(8, 2, s(b"x")), status(2, 4, NO_SUCH_HANDLE))
        self.exchange(request(10, 3, s(b"x") + NO_ATTRS), status(3, 4, NO_SUCH_HANDLE))
        self.exchange(request(12, 4, s(b"x")), status(4, 4, NO_SUCH_HANDLE))

    def test_readLengthCapped(self) -> None:
        """
        Conch: a READ longer than max-read-length is capped, not refused:
        the DATA reply stays under OpenSSH's 256 KiB message limit.
        """
        content = bytes(range(256)) * 4096  # 1 MiB

        def setup(h: Harness) -> None:
            h.avatar.create(b"/big", content)
            h.feed(request(3, 1, s(b"/big") + u32(READ) + NO_ATTRS))

        self.exchange(
            request(5, 2, s(b"1") + u64(10) + u32(1024 * 1024)),
            packet(103, u32(2) + s(content[10 : 10 + wire.MAX_READ_LENGTH])),
            setup=setup,
        )
        self.assertLessEqual(wire.MAX_READ_LENGTH + 13, 256 * 1024)
        self.assertGreaterEqual(wire.MAX_READ_LENGTH, 255 * 1024)

    def test_setstatAndFsetstat(self) -> None:
        """
        SETSTAT and FSETSTAT apply size, permissions and times.
        """
        h = Harness()
        h.init()
        h.avatar.create(b"/f", b"0123456789")
        h.feed(request(9, 1, s(b"/f") + u32(1 | 4 | 8) + u64(4) + u32(0o640) + u32(5) + u32(6)))
        self.assertEqual(h.take(), ok(1))
        node = h.avatar.lookup(b"/f")
        self.assertEqual(
            (bytes(node.data), node.mode & 0o777, node.atime, node.mtime), (b"0123", 0o640, 5, 6)
        )
        h.feed(request(3, 2, s(b"/f") + u32(WRITE) + NO_ATTRS))
        h.feed(request(10, 3, s(b"1") + u32(1) + u64(1)))
        self.assertEqual(h.take(), handle(2, b"1") + ok(3))
        self.assertEqual(bytes(node.data), b"0")

    def test_avatarExceptionsMapped(self) -> None:
        """
        SFTPError with a v6 code becomes FX_FAILURE; an unexpected exception
        still gets a reply (FX_FAILURE) and is logged.
        """

        class Broken(FakeSFTPServer):
            def removeFile(self, filename: bytes) -> object:
                if filename == b"/v6":
                    raise SFTPError(11, "Already there")  # type: ignore[no-untyped-call]
                raise RuntimeError("bug")

        h = Harness(Broken())
        h.init()
        h.feed(request(13, 1, s(b"/v6")) + request(13, 2, s(b"/bug")))
        self.assertEqual(h.take(), status(1, 4, b"Already there") + status(2, 4, b"Failure"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_tooManyHandles(self) -> None:
        """
        Past max-open-handles, OPEN fails with a status.
        """
        h = Harness(maxOpenHandles=2)
        h.init()
        h.avatar.create(b"/f")
        for rid in (1, 2, 3):
            h.feed(request(3, rid, s(b"/f") + u32(READ) + NO_ATTRS))
        self.assertEqual(
            h.take(), handle(1, b"1") + handle(2, b"2") + status(3, 4, b"Too many open handles")
        )


class BudgetTests(SynchronousTestCase):
    """
    The open-handle budget shared by every client of a process.
    """

    def client(self, budget: HandleBudget) -> Harness:
        h = Harness(budget=budget, maxOpenHandles=100000)  # type: ignore[arg-type]
        h.init()
        h.avatar.create(b"/f")
        return h

    def test_clientAtItsMaxCannotStarveOthers(self) -> None:
        """
        One client gets at most half the budget; a second greedy one stops
        short of the last 64; a new client can still open 64.
        """
        budget = HandleBudget(300)
        greedy, second, late = self.client(budget), self.client(budget), self.client(budget)
        self.assertEqual(self.opened(greedy, 400), 150)
        self.assertEqual(self.opened(second, 400), 300 - 150 - 64)
        self.assertEqual(self.opened(late, 64), 64)
        self.assertEqual(self.opened(late, 1), 0)
        self.assertEqual(self.opened(greedy, 1), 0)
        # A handle closed goes back to the reserve: for a client holding
        # fewer than 64, not for the greedy ones.
        greedy.feed(request(4, 999, s(b"1")))
        greedy.take()
        self.assertEqual(self.opened(greedy, 1), 0)
        self.assertEqual(self.opened(second, 1), 0)
        self.assertEqual(self.opened(self.client(budget), 2), 1)

    def test_lostClientHoldsNothing(self) -> None:
        """
        The handles of a lost connection are free again.
        """
        budget = HandleBudget(200)
        first = self.client(budget)
        self.assertEqual(self.opened(first, 100), 100)
        first.core.connectionLost()
        self.assertEqual(self.opened(self.client(budget), 100), 100)

    def test_limitsReportsPerClientCap(self) -> None:
        """
        limits@openssh.com announces the lower of the per-connection bound
        and half the budget.
        """
        for budget, maxOpen, announced in ((300, 1024, 150), (100000, 1024, 1024)):
            h = Harness(budget=HandleBudget(budget), maxOpenHandles=maxOpen)  # type: ignore[arg-type]
            h.init()
            h.feed(extended(7, b"limits@openssh.com"))
            self.assertEqual(h.take()[-8:], u64(announced))

    def test_budgetFor(self) -> None:
        """
        min(limit - 64, 65,536).
        """
        self.assertEqual(budgetFor(1024), 960)
        self.assertEqual(budgetFor(1 << 20), 65536)

    def opened(self, h: Harness, count: int) -> int:
        """
        Send C{count} OPENs; return how many got a handle.
        """
        before = h.core.openHandles
        h.feed(b"".join(request(3, i, s(b"/f") + u32(READ) + NO_ATTRS) for i in range(count)))
        h.take()
        return h.core.openHandles - before


class PathTests(CoreTestCase):
    def test_mkdirExisting(self) -> None:
        """
        MKDIR over an existing name: FX_FAILURE "File exists".
        """
        self.exchange(
            request(14, 1, s(b"/d") + NO_ATTRS),
            status(1, 4, b"File exists"),
            setup=lambda h: h.avatar.create(b"/d"),
        )

    def test_mkdirRmdir(self) -> None:
        """
        MKDIR creates with the given permissions; RMDIR removes.
        """
        self.exchange(
            request(14, 1, s(b"/d") + u32(4) + u32(0o700)) + request(15, 2, s(b"/d")),
            ok(1) + ok(2),
            check=lambda h: self.assertNotIn(b"d", h.avatar.root.children),
        )

    def test_rmdirNotEmpty(self) -> None:
        """
        RMDIR is never recursive.
        """

        def setup(h: Harness) -> None:
            h.feed(request(14, 1, s(b"/d") + NO_ATTRS))
            h.avatar.create(b"/d/f")

        self.exchange(request(15, 2, s(b"/d")), status(2, 4, b"Directory not empty"), setup=setup)

    def test_statLstat(self) -> None:
        """
        STAT follows a symlink, LSTAT does not.
        """

        def setup(h: Harness) -> None:
            h.avatar.create(b"/f", b"abc")
            h.avatar.makeLink(b"/l", b"/f")

        attrs = (
            u32(15) + u64(3) + u32(0) + u32(0) + u32(stat.S_IFREG | 0o644) + u32(1000) + u32(2000)
        )
        lattrs = (
            u32(15) + u64(2) + u32(0) + u32(0) + u32(stat.S_IFLNK | 0o777) + u32(1000) + u32(2000)
        )
        self.exchange(
            request(17, 1, s(b"/l")) + request(7, 2, s(b"/l")),
            packet(105, u32(1) + attrs) + packet(105, u32(2) + lattrs),
            setup=setup,
        )

    def test_symlinkOpenSSHOrder(self) -> None:
        """
        Conch: SYMLINK is (targetpath, linkpath) on the wire, as OpenSSH's
        sftp and sshfs send it; the link is made at the second path.
        """

        def check(h: Harness) -> None:
            link = h.avatar.lookup(b"/link", followLinks=False)
            self.assertEqual((link.isLink, link.target), (True, b"/target"))

        self.exchange(request(20, 5, s(b"/target") + s(b"/link")), ok(5), check=check)

    def test_readlinkRealpath(self) -> None:
        """
        READLINK and REALPATH answer NAME with one entry, the long name being
        the path and no attributes.
        """
        self.exchange(
            request(19, 1, s(b"/l")) + request(16, 2, s(b"a/../b/.")),
            name1(1, b"x/y") + name1(2, b"/b"),
            setup=lambda h: h.avatar.makeLink(b"/l", b"x/y"),
        )

    def test_renameRemove(self) -> None:
        """
        RENAME moves, refusing to replace (v3); REMOVE deletes.
        """

        def setup(h: Harness) -> None:
            h.avatar.create(b"/a", b"A")
            h.avatar.create(b"/b", b"B")

        self.exchange(
            request(18, 1, s(b"/a") + s(b"/b"))
            + request(18, 2, s(b"/a") + s(b"/c"))
            + request(13, 3, s(b"/b")),
            status(1, 4, b"File exists") + ok(2) + ok(3),
            setup=setup,
            check=lambda h: self.assertEqual(sorted(h.avatar.root.children), [b"c"]),
        )


class DirectoryTests(CoreTestCase):
    def listing(self, h: Harness, path: bytes = b"/") -> list[bytes]:
        h.feed(request(11, 1, s(path)))
        (opened,) = packets(h.take())
        dirHandle = opened[13:]
        names: list[bytes] = []
        for rid in range(2, 100):
            h.feed(request(12, rid, s(dirHandle)))
            reply = h.take()
            if reply[4] == 101:
                self.assertEqual(reply, status(rid, 1, b"End of file"))
                break
            self.assertEqual(reply[4], 104)
            r = wire.Reader(reply, 9)
            for _ in range(r.u32()):
                names.append(r.string())
                r.string()
                r.attrs()
            r.end()
        h.feed(request(4, 200, s(dirHandle)))
        self.assertEqual(h.take(), ok(200))
        self.assertEqual(h.avatar.openDirectories, [])
        return names

    def test_readdirBatches(self) -> None:
        """
        READDIR answers NAME batches of up to 100 entries, then EOF.
        """
        h = Harness()
        h.init()
        expected = sorted(b"f%03d" % i for i in range(250))
        for n in expected:
            h.avatar.create(b"/" + n)
        self.assertEqual(self.listing(h), expected)

    def test_readdirExactBytes(self) -> None:
        """
        One entry: NAME with count, filename, longname, attrs.
        """
        node_attrs = (
            u32(15) + u64(1) + u32(0) + u32(0) + u32(stat.S_IFREG | 0o644) + u32(1000) + u32(2000)
        )

        def setup(h: Harness) -> None:
            h.avatar.create(b"/a", b"x")
            h.feed(request(11, 1, s(b"/")))

        self.exchange(
            request(12, 2, s(b"1")) + request(12, 3, s(b"1")),
            packet(104, u32(2) + u32(1) + s(b"a") + s(b"-rw-r--r-- 1 0 0 a") + node_attrs)
            + status(3, 1, b"End of file"),
            setup=setup,
        )

    def test_readdirAsync(self) -> None:
        """
        Conch: a batch that arrives later (a Deferred) is answered when it
        arrives, and a CLOSE sent meanwhile waits for it.
        """
        h = Harness()
        h.init()
        h.avatar.create(b"/a")
        gate: Deferred[None] = Deferred()
        h.avatar.gates["readBatch"] = gate
        h.feed(request(11, 1, s(b"/")) + request(12, 2, s(b"1")) + request(4, 3, s(b"1")))
        self.assertEqual(h.take(), handle(1, b"1"))
        gate.callback(None)
        (names, closed) = packets(h.take())
        self.assertEqual((names[4], names[9:13]), (104, u32(1)))
        self.assertEqual(closed, ok(3))
        self.assertEqual(h.avatar.openDirectories, [])

    def test_plainIteratorOfDeferreds(self) -> None:
        """
        Conch: a stock avatar's directory iterator yielding Deferreds is
        listed too.
        """
        h = Harness(FakeSFTPServer(plainDirectories=True))
        h.init()
        for n in (b"x", b"y"):
            h.avatar.create(b"/" + n)
        self.assertEqual(self.listing(h), [b"x", b"y"])

    def test_replySizeCapped(self) -> None:
        """
        Entries that would make a NAME reply over 256 KiB are held over for
        the next READDIR; none is lost.
        """
        h = Harness()
        h.init()
        expected = sorted(b"%03d" % i + b"n" * 250 for i in range(100))
        for n in expected:
            h.avatar.create(b"/" + n)

        original = h.avatar.openDirectory

        def wideOpen(path: bytes) -> object:
            d = original(path)

            def widen(directory: FakeDirectory) -> FakeDirectory:
                directory.entries = [(n, n * 12, a) for n, _, a in directory.entries]
                return directory

            return d.addCallback(widen)  # type: ignore[attr-defined]

        h.avatar.openDirectory = wideOpen  # type: ignore[method-assign]
        h.feed(request(11, 1, s(b"/")) + request(12, 2, s(b"1")))
        first = h.take()[len(handle(1, b"1")) :]
        self.assertLessEqual(len(first) - 4, wire.MAX_REPLY_LENGTH)
        h.feed(request(4, 3, s(b"1")))
        h.take()
        self.assertEqual(self.listing(h), expected)


class ExtensionTests(CoreTestCase):
    def test_posixRename(self) -> None:
        """
        posix-rename@openssh.com replaces the target; STATUS reply (Conch
        sends EXTENDED_REPLY).
        """

        def setup(h: Harness) -> None:
            h.avatar.create(b"/a", b"A")
            h.avatar.create(b"/b", b"B")

        self.exchange(
            extended(1, b"posix-rename@openssh.com", s(b"/a") + s(b"/b")),
            ok(1),
            setup=setup,
            check=lambda h: self.assertEqual(bytes(h.avatar.lookup(b"/b").data), b"A"),
        )

    def test_statvfs(self) -> None:
        """
        statvfs@openssh.com: EXTENDED_REPLY with 11 uint64.
        """
        values = [4096, 4096, 1000, 500, 400, 100, 50, 40, 7, 1, 255]
        self.exchange(
            extended(2, b"statvfs@openssh.com", s(b"/")),
            packet(201, u32(2) + b"".join(u64(v) for v in values)),
        )
        self.exchange(
            extended(3, b"fstatvfs@openssh.com", s(b"1")),
            packet(201, u32(3) + b"".join(u64(v) for v in values)),
            setup=lambda h: (
                h.avatar.create(b"/f"),
                h.feed(request(3, 1, s(b"/f") + u32(READ) + NO_ATTRS)),
            ),
        )

    def test_hardlink(self) -> None:
        """
        hardlink@openssh.com (oldpath, newpath): STATUS.
        """
        self.exchange(
            extended(4, b"hardlink@openssh.com", s(b"/a") + s(b"/h")),
            ok(4),
            setup=lambda h: h.avatar.create(b"/a"),
            check=lambda h: self.assertIs(h.avatar.lookup(b"/h"), h.avatar.lookup(b"/a")),
        )

    def test_fsync(self) -> None:
        """
        fsync@openssh.com on a handle: STATUS.
        """
        self.exchange(
            extended(5, b"fsync@openssh.com", s(b"1")),
            ok(5),
            setup=lambda h: (
                h.avatar.create(b"/f"),
                h.feed(request(3, 1, s(b"/f") + u32(WRITE) + NO_ATTRS)),
            ),
            check=lambda h: self.assertTrue(h.avatar.openFiles[0].synced),
        )
        self.exchange(extended(6, b"fsync@openssh.com", s(b"9")), status(6, 4, NO_SUCH_HANDLE))

    def test_lsetstat(self) -> None:
        """
        lsetstat@openssh.com (path, attrs): STATUS.
        """
        self.exchange(
            extended(6, b"lsetstat@openssh.com", s(b"/f") + u32(4) + u32(0o600)),
            ok(6),
            setup=lambda h: h.avatar.create(b"/f"),
            check=lambda h: self.assertEqual(h.avatar.lookup(b"/f").mode & 0o777, 0o600),
        )

    def test_limits(self) -> None:
        """
        limits@openssh.com: EXTENDED_REPLY with max packet, read and write
        lengths and open handles, read/write at least 255 KiB.
        """
        self.exchange(
            extended(7, b"limits@openssh.com"),
            packet(201, u32(7) + u64(263168) + u64(261120) + u64(262144) + u64(1024)),
        )

    def test_expandPath(self) -> None:
        """
        expand-path@openssh.com: NAME (Conch sends EXTENDED_REPLY).
        """
        self.exchange(extended(8, b"expand-path@openssh.com", s(b"~/x")), name1(8, b"/home/x"))

    def test_copyData(self) -> None:
        """
        copy-data (read handle, offset, length, write handle, offset): STATUS.
        """

        def setup(h: Harness) -> None:
            h.avatar.create(b"/src", b"0123456789")
            h.avatar.create(b"/dst", b"..........")
            h.feed(request(3, 1, s(b"/src") + u32(READ) + NO_ATTRS))
            h.feed(request(3, 2, s(b"/dst") + u32(WRITE) + NO_ATTRS))

        self.exchange(
            extended(9, b"copy-data", s(b"1") + u64(2) + u64(3) + s(b"2") + u64(5)),
            ok(9),
            setup=setup,
            check=lambda h: self.assertEqual(bytes(h.avatar.lookup(b"/dst").data), b".....234.."),
        )

    def test_homeDirectory(self) -> None:
        """
        home-directory: NAME.
        """
        self.exchange(extended(10, b"home-directory", s(b"alice")), name1(10, b"/home"))

    def test_usersGroupsById(self) -> None:
        """
        users-groups-by-id@openssh.com: EXTENDED_REPLY with two strings of
        strings, empty for unknown ids.
        """
        self.exchange(
            extended(
                11, b"users-groups-by-id@openssh.com", s(u32(0) + u32(5) + u32(1000)) + s(u32(0))
            ),
            packet(201, u32(11) + s(s(b"root") + s(b"") + s(b"alice")) + s(s(b"wheel"))),
        )
        self.exchange(
            extended(12, b"users-groups-by-id@openssh.com", s(b"\0\0\0") + s(b"")),
            status(12, 5, b"Packet too short"),
        )

    def test_unknownExtension(self) -> None:
        """
        An extension not advertised: OP_UNSUPPORTED.
        """
        self.exchange(
            extended(13, b"nope@example.com", b"data"), status(13, 8, b"Operation unsupported")
        )

    def test_extensionErrors(self) -> None:
        """
        Extension failures go through the same status table.
        """
        self.exchange(
            extended(14, b"statvfs@openssh.com", s(b"/missing")),
            status(14, 2, b"No such file or directory"),
        )
        self.exchange(
            extended(15, b"posix-rename@openssh.com", s(b"/a")), status(15, 5, b"Packet too short")
        )


class ConcurrencyTests(SynchronousTestCase):
    def test_repliesWhenReady(self) -> None:
        """
        Requests are dispatched without waiting for each other: a slow call
        does not hold back a later request's reply.
        """
        h = Harness()
        h.init()
        h.avatar.create(b"/f")
        gate: Deferred[None] = Deferred()
        h.avatar.gates["makeDirectory"] = gate
        h.feed(request(14, 1, s(b"/d") + NO_ATTRS) + request(16, 2, s(b"/x")))
        self.assertEqual(h.take(), name1(2, b"/x"))
        gate.callback(None)
        self.assertEqual(h.take(), ok(1))

    def test_repliesOfOneFeedWrittenTogether(self) -> None:
        """
        The replies that are ready while one feed of pipelined requests is
        dispatched go out in one write (several small writes cost a system
        call and a wake-up of the client each).
        """
        writes: list[list[bytes]] = []
        core = SFTPServerCore(
            FakeSFTPServer(),
            lambda data: writes.append([data]),
            writeSequence=lambda pieces: writes.append(list(pieces)),
        )
        core.dataReceived(INIT)
        core.dataReceived(b"".join(request(16, rid, s(b"/x")) for rid in (1, 2, 3)))
        self.assertEqual(len(writes), 2)
        self.assertEqual(writes[1], [name1(1, b"/x"), name1(2, b"/x"), name1(3, b"/x")])

    def delivered(self, core: SFTPServerCore, gate: Deferred[None], single: bool) -> int:
        """
        Fire C{gate} (the avatar's answers) as an engine delivers a batch
        of results through C{core}'s L{Delivery}: what the callbacks defer
        runs once all are fired.

        @param single: the batch is of one result.
        @return: how many calls the core deferred to the end of the batch.
        """
        delivery = core._delivery
        after: list[Callable[[], object]] = []
        delivery.after, delivery.single = after, single
        try:
            gate.callback(None)
        finally:
            delivery.after, delivery.single = None, False
        for call in after:
            call()
        return len(after)

    def deliveryCore(self, maxInFlight: int = 64) -> tuple[SFTPServerCore, list[list[bytes]]]:
        writes: list[list[bytes]] = []
        core = SFTPServerCore(
            FakeSFTPServer(),
            lambda data: writes.append([data]),
            writeSequence=lambda pieces: writes.append(list(pieces)),
            delivery=Delivery(),
            maxInFlight=maxInFlight,
        )
        core.dataReceived(INIT)
        return core, writes

    def test_repliesOfOneDeliveryWrittenTogether(self) -> None:
        """
        The replies made while the engine delivers a batch of results go
        out in one write, at the end of the batch.
        """
        core, writes = self.deliveryCore()
        gate: Deferred[None] = Deferred()
        cast(FakeSFTPServer, core.avatar).gates["realPath"] = gate
        core.dataReceived(b"".join(request(16, rid, s(b"/x")) for rid in (1, 2)))
        self.assertEqual(len(writes), 1)
        self.assertEqual(self.delivered(core, gate, single=False), 1)
        self.assertEqual(writes[1:], [[name1(1, b"/x"), name1(2, b"/x")]])

    def test_singleDeliveryWrittenByItsCallback(self) -> None:
        """
        The one result of a batch: its reply is written by its callback
        (nothing deferred to the end of the batch), in one write with the
        replies of the requests its answer let through.
        """
        core, writes = self.deliveryCore()
        gate: Deferred[None] = Deferred()
        cast(FakeSFTPServer, core.avatar).gates["realPath"] = gate
        core.dataReceived(request(16, 1, s(b"/x")))
        self.assertEqual(self.delivered(core, gate, single=True), 0)
        self.assertEqual(writes[1:], [[name1(1, b"/x")]])

        core, writes = self.deliveryCore(maxInFlight=1)
        gate = Deferred()
        avatar = cast(FakeSFTPServer, core.avatar)
        avatar.gates["realPath"] = gate
        core.dataReceived(b"".join(request(16, rid, s(b"/x")) for rid in (1, 2)))
        self.assertEqual(core.inFlight, 1)
        del avatar.gates["realPath"]
        # Answering it dispatches the request held back: the write waits
        # for the end of the batch (the calls it hands over are woken
        # first), as for a batch of several.
        self.assertEqual(self.delivered(core, gate, single=True), 1)
        self.assertEqual(writes[1:], [[name1(1, b"/x"), name1(2, b"/x")]])

    def test_backpressure(self) -> None:
        """
        Past maxInFlight, nothing more is dispatched and reading is paused;
        reading resumes at half the bound, and every request is answered.
        """
        h = Harness(maxInFlight=4)
        h.init()
        h.avatar.create(b"/f", b"abc")
        gate: Deferred[None] = Deferred()
        h.avatar.gates["getAttrs"] = gate
        h.feed(b"".join(request(17, rid, s(b"/f")) for rid in range(1, 11)))
        self.assertEqual((h.core.inFlight, h.pauses, h.resumes, h.take()), (4, 1, 0, b""))
        h.avatar.gates.clear()
        gate.callback(None)
        replies = packets(h.take())
        self.assertEqual(
            sorted(struct.unpack(">I", r[5:9])[0] for r in replies), list(range(1, 11))
        )
        self.assertEqual((h.core.inFlight, h.pauses, h.resumes), (0, 1, 1))

    def bulkUpload(self, pieces: list[int], maxInFlight: int = 64, direct: bool = False) -> None:
        """
        Large WRITEs whose data the avatar takes as views and writes only
        later, fed through one reused buffer in pieces of the sizes given
        (cycled), the buffer scribbled over after each feed: the file ends
        up with exactly the data sent, and each WRITE gets one reply.

        @param direct: the rest of a packet begun is written where
            L{SFTPServerCore.receiveBuffer} says, as the stdio reader does;
            what is left of the piece is fed.
        """
        h = Harness(maxInFlight=maxInFlight)
        h.init()
        h.feed(request(3, 1, s(b"/f") + u32(WRITE | CREAT) + NO_ATTRS))
        self.assertEqual(h.take(), handle(1, b"1"))
        h.avatar.openFiles[0].writesViews = True  # type: ignore[attr-defined]
        gate: Deferred[None] = Deferred()
        h.avatar.gates["writeChunk"] = gate
        sizes = [20000, 70000, 16384, 300, 65536, 262144, 1, 100000]
        expected = bytearray()
        stream = bytearray()
        for rid, size in enumerate(sizes, 2):
            data = bytes((rid * 7 + i) % 251 for i in range(size))
            stream += request(6, rid, s(b"1") + u64(len(expected)) + s(data))
            expected += data
        buffer = bytearray(max(pieces))
        offset = 0
        turn = 0
        while offset < len(stream):
            size = min(pieces[turn % len(pieces)], len(stream) - offset)
            turn += 1
            room = h.core.receiveBuffer() if direct else None
            if room is not None:
                with room:
                    count = min(len(room), size)
                    room[:count] = stream[offset : offset + count]
                h.core.receivedInto(count)
                offset += count
                size -= count
                if not size:
                    continue
            buffer[:size] = stream[offset : offset + size]
            offset += size
            with memoryview(buffer)[:size] as view:
                h.feed(view)
            buffer[:] = b"\xff" * len(buffer)
        self.assertEqual(h.take(), b"")
        del h.avatar.gates["writeChunk"]
        gate.callback(None)
        # One reply each (in any order: released writes may dispatch more).
        self.assertEqual(
            sorted(packets(h.take())), sorted(ok(rid) for rid in range(2, 2 + len(sizes)))
        )
        self.assertEqual((h.avatar.lookup(b"/f").data == expected, h.core.buffered), (True, 0))
        self.assertEqual((h.disconnects, h.core.inFlight), (0, 0))

    def test_keepableFeedNotCopied(self) -> None:
        """
        Fed C{keepable}, a WRITE's data reaches the avatar as a view of the
        memory fed (no copy); fed otherwise, as a copy, so that the caller
        may reuse its memory.
        """
        h = Harness()
        h.init()
        h.feed(request(3, 1, s(b"/f") + u32(WRITE | CREAT) + NO_ATTRS))
        self.assertEqual(h.take(), handle(1, b"1"))
        fileObj = h.avatar.openFiles[0]
        fileObj.writesViews = True  # type: ignore[attr-defined]
        written: list[memoryview] = []
        writeChunk = fileObj.writeChunk

        def recording(offset: int, data: memoryview) -> object:
            written.append(data)
            return writeChunk(offset, bytes(data))

        fileObj.writeChunk = recording  # type: ignore[method-assign]
        data = b"x" * 20000
        kept = bytearray(request(6, 2, s(b"1") + u64(0) + s(data)))
        h.core.dataReceived(kept, keepable=True)
        copied = bytearray(request(6, 3, s(b"1") + u64(20000) + s(data)))
        h.core.dataReceived(copied)
        self.assertEqual(packets(h.take()), [ok(2), ok(3)])
        self.assertEqual([bytes(chunk) for chunk in written], [data, data])
        self.assertIs(written[0].obj, kept)
        copied[-5:] = b"yyyyy"
        self.assertEqual(bytes(written[1]), data)

    def test_bulkUploadInPieces(self) -> None:
        """
        WRITE packets split anywhere between feeds (in their length, their
        header, their data) are put together right.
        """
        for pieces in ([1 << 20], [7, 4093, 1, 65536, 262177, 3], [3, 1, 2], [262144], [99999]):
            self.bulkUpload(pieces)
            self.bulkUpload(pieces, direct=True)

    def test_bulkUploadInPiecesPaused(self) -> None:
        """
        The same while dispatch is held back by the bound on requests in
        flight: what is not dispatched yet waits in the buffer, in order.
        """
        for pieces in ([1 << 20], [7, 4093, 1, 65536, 262177, 3], [99999]):
            self.bulkUpload(pieces, maxInFlight=2)
            self.bulkUpload(pieces, maxInFlight=2, direct=True)

    def test_outputPaused(self) -> None:
        """
        While the output is paused nothing new is dispatched and reading is
        paused.
        """
        h = Harness()
        h.init()
        h.core.pauseOutput()
        self.assertEqual(h.pauses, 1)
        h.feed(request(16, 1, s(b"/")))
        self.assertEqual(h.take(), b"")
        h.core.resumeOutput()
        self.assertEqual((h.take(), h.resumes), (name1(1, b"/"), 1))

    def test_connectionLostClosesEverything(self) -> None:
        """
        When the connection is lost every open file and directory is closed,
        those an in-flight OPEN creates too; nothing more is written.
        """
        h = Harness()
        h.init()
        h.avatar.create(b"/f")
        h.feed(request(3, 1, s(b"/f") + u32(READ) + NO_ATTRS) + request(11, 2, s(b"/")))
        gate: Deferred[None] = Deferred()
        h.avatar.gates["openFile"] = gate
        h.feed(request(3, 3, s(b"/f") + u32(READ) + NO_ATTRS))
        h.take()
        self.assertEqual((len(h.avatar.openFiles), len(h.avatar.openDirectories)), (1, 1))
        closed = h.core.connectionLost()
        self.assertNoResult(closed)
        self.assertEqual((len(h.avatar.openFiles), len(h.avatar.openDirectories)), (0, 0))
        del h.avatar.gates["openFile"]
        gate.callback(None)
        self.successResultOf(closed)
        self.assertEqual((h.avatar.openFiles, h.take()), ([], b""))

    def test_whenIdle(self) -> None:
        """
        whenIdle fires once no request is in flight.
        """
        h = Harness()
        h.init()
        gate: Deferred[None] = Deferred()
        h.avatar.gates["realPath"] = gate
        h.feed(request(16, 1, s(b"/")))
        idle = h.core.whenIdle()
        self.assertNoResult(idle)
        gate.callback(None)
        self.successResultOf(idle)
        self.assertEqual(h.take(), name1(1, b"/"))


class StatusTableTests(SynchronousTestCase):
    def test_table(self) -> None:
        """
        The errno table gives v3 codes only.
        """
        from conchshare.sftp.errors import statusForException

        cases = {
            errno.ENOENT: 2,
            errno.ENOTDIR: 2,
            errno.EACCES: 3,
            errno.EPERM: 3,
            errno.EROFS: 3,
            errno.EEXIST: 4,
            errno.ENOTEMPTY: 4,
            errno.ENOSPC: 4,
            errno.EXDEV: 4,
            errno.ENOSYS: 8,
        }
        for code, expected in cases.items():
            self.assertEqual(statusForException(OSError(code, "x", "/real/path"))[0], expected)
        self.assertEqual(
            statusForException(OSError(errno.EEXIST, os.strerror(errno.EEXIST), "/real")),
            (4, b"File exists"),
        )
        self.assertEqual(
            statusForException(OSError(errno.EACCES, "Outside the share")),
            (3, b"Outside the share"),
        )
        self.assertEqual(statusForException(EOFError()), (1, b"End of file"))
        self.assertEqual(statusForException(NotImplementedError()), (8, b"Operation unsupported"))
        self.assertEqual(statusForException(KeyError("secret")), (4, b"Failure"))
        self.assertEqual(
            statusForException(SFTPError(3, "nope")),  # type: ignore[no-untyped-call]
            (3, b"nope"),
        )
