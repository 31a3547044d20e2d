"""
Tests for L{conchshare.sftp.avatar}: the avatar's interfaces, ordering per
handle, the thread pool, and its use by stock Conch's FileTransferServer.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FX_FILE_ALREADY_EXISTS,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FileTransferClient,
    FileTransferServer,
)
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import MemoryReactor
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from conchshare.sftp.avatar import ShareDirectory, ShareFile, ShareSFTPServer
from conchshare.sftp.engine import ICallEngine, OrderedEngine
from conchshare.sftp.entries import groupName, userName
from conchshare.sftp.interfaces import IShareDirectory, IShareSFTPServer
from conchshare.sftp.workers import Workers
from conchshare.shares import ShareSet
from tests.support.engines import ManualRunner
from tests.support.harness import Harness
from tests.support.sharetree import SECRET, makeTree, read, write
from tests.support.wire import packet, request, s, status, u32


class AvatarTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        makeTree(self.base)
        self.shares = ShareSet.fromSpecs(
            ["one", "two", "ro:ro", "home/alice/docs=alice"], cwd=self.base
        )
        self.avatar = ShareSFTPServer(self.shares, engine=OrderedEngine())

    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    def assertFailsWith(
        self, d: object, exceptionType: type[BaseException], code: int | None = None
    ) -> None:
        assert isinstance(d, Deferred)
        failure = self.failureResultOf(d, exceptionType)
        if code is not None:
            self.assertEqual(failure.value.errno, code)


class ReaddirBytesTests(AvatarTestCase):
    def test_readdirExactBytes(self) -> None:
        """
        READDIR through the core and this avatar: the NAME reply, byte for
        byte, then EOF.
        """
        os.mkdir(self.path("two", "exact"))
        write(self.path("two", "exact", "e"), b"12345")
        os.chmod(self.path("two", "exact", "e"), 0o640)
        # Noon UTC: the same day in every time zone in use.
        os.utime(self.path("two", "exact", "e"), (978436801, 978436800))
        h = Harness(self.avatar)
        h.init()
        h.feed(request(11, 1, s(b"/two/exact")))
        reply = h.take()
        self.assertEqual(reply[4:9], bytes([102]) + u32(1))
        dirHandle = reply[13:]
        self.assertEqual(reply[9:13], u32(len(dirHandle)))
        h.feed(request(12, 2, s(dirHandle)) + request(12, 3, s(dirHandle)))
        uid, gid = os.getuid(), os.getgid()
        user = userName(uid) or b"%d" % uid
        group = groupName(gid) or b"%d" % gid
        line = b"-rw-r-----    1 %-8s %-8s        5 Jan  2  2001 e" % (user, group)
        attrs = u32(15) + struct.pack(">QIII", 5, uid, gid, 0o100640)
        attrs += u32(978436801) + u32(978436800)
        expected = packet(104, u32(2) + u32(1) + s(b"e") + s(line) + attrs)
        self.assertEqual(h.take(), expected + status(3, 1, b"End of file"))
        h.feed(request(4, 4, s(dirHandle)))
        self.assertEqual(h.take(), status(4, 0, b"Success"))


class InterfaceTests(AvatarTestCase):
    def test_provides(self) -> None:
        self.assertTrue(verifyObject(ISFTPServer, self.avatar))
        self.assertTrue(verifyObject(IShareSFTPServer, self.avatar))
        f = self.successResultOf(self.avatar.openFile(b"/one/f", FXF_READ, {}))
        self.assertTrue(verifyObject(ISFTPFile, f))
        d = self.successResultOf(self.avatar.openDirectory(b"/one"))
        self.assertTrue(verifyObject(IShareDirectory, d))
        self.successResultOf(d.close())
        self.successResultOf(f.close())

    def test_versionAndExtended(self) -> None:
        self.assertEqual(self.avatar.gotVersion(3, {}), {})
        with self.assertRaises(filetransfer.SFTPError) as raised:
            self.avatar.extendedRequest(b"statvfs@openssh.com", b"")
        self.assertEqual(raised.exception.code, FX_OP_UNSUPPORTED)

    def test_fromSpecs(self) -> None:
        avatar = ShareSFTPServer.fromSpecs(["x=one:ro"], cwd=self.base, engine=OrderedEngine())
        self.assertTrue(avatar.readOnly)
        self.assertEqual(avatar.homeDirectory(b"anyone"), b"/x")
        self.assertEqual(self.successResultOf(avatar.realPath(b".")), b"/x")
        self.assertFalse(self.avatar.readOnly)

    def test_fileOps(self) -> None:
        f = self.successResultOf(self.avatar.openFile(b"/one/new", FXF_WRITE | FXF_CREAT, {}))
        self.successResultOf(f.writeChunk(0, b"hello"))
        self.successResultOf(f.writeChunk(5, b" world"))
        self.assertEqual(self.successResultOf(f.getAttrs())["size"], 11)
        self.successResultOf(f.setAttrs({"size": 5}))
        self.successResultOf(self.avatar.fsync(f))
        self.assertEqual(self.successResultOf(self.avatar.fstatVFS(f))["flag"] & 1, 0)
        self.successResultOf(f.close())
        f = self.successResultOf(self.avatar.openFile(b"/one/new", FXF_READ, {}))
        self.assertEqual(self.successResultOf(f.readChunk(0, 100)), b"hello")
        self.assertFailsWith(f.readChunk(5, 100), EOFError)
        self.successResultOf(f.close())

    def test_pathOps(self) -> None:
        a = self.avatar
        self.successResultOf(a.makeDirectory(b"/one/d", {"permissions": 0o750}))
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "d")).st_mode), 0o750)
        self.successResultOf(a.renameFile(b"/one/f", b"/one/d/f"))
        write(self.path("one", "x"), b"x")
        self.assertFailsWith(a.renameFile(b"/one/x", b"/one/d/f"), FileExistsError, errno.EEXIST)
        self.successResultOf(a.posixRename(b"/one/x", b"/one/d/f"))
        self.assertEqual(read(self.path("one", "d", "f")), b"x")
        self.successResultOf(a.hardLink(b"/one/d/f", b"/one/hl"))
        self.assertEqual(os.stat(self.path("one", "hl")).st_nlink, 2)
        self.successResultOf(a.makeLink(b"/one/d/ln", b"/one/hl"))
        self.assertEqual(os.readlink(self.path("one", "d", "ln")), self.path("one", "hl"))
        self.assertEqual(self.successResultOf(a.readLink(b"/one/d/ln")), b"/one/hl")
        self.assertEqual(self.successResultOf(a.getAttrs(b"/one/d/ln", True))["size"], 1)
        lstat = self.successResultOf(a.getAttrs(b"/one/d/ln", False))
        self.assertTrue(stat.S_ISLNK(lstat["permissions"]))
        self.successResultOf(a.lsetStat(b"/one/d/ln", {"atime": 7, "mtime": 8}))
        self.assertEqual(os.lstat(self.path("one", "d", "ln")).st_mtime, 8)
        self.successResultOf(a.setAttrs(b"/one/d/ln", {"permissions": 0o600}))
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "hl")).st_mode), 0o600)
        self.successResultOf(a.removeFile(b"/one/d/ln"))
        self.successResultOf(a.removeFile(b"/one/d/f"))
        self.successResultOf(a.removeDirectory(b"/one/d"))
        self.assertFalse(os.path.exists(self.path("one", "d")))
        self.assertEqual(self.successResultOf(a.statVFS(b"/ro"))["flag"] & 1, 1)

    def test_names(self) -> None:
        a = self.avatar
        self.assertEqual(a.homeDirectory(b"bob"), b"/")
        self.assertEqual(self.successResultOf(a.expandPath(b"~")), b"/")
        self.assertEqual(self.successResultOf(a.expandPath(b"~/one/in_abs/g")), b"/one/sub/g")
        self.assertEqual(self.successResultOf(a.expandPath(b"~bob/two")), b"/two")
        self.assertEqual(
            self.successResultOf(a.realPath(b"/one/../home/alice/docs/..")), b"/home/alice"
        )
        users, groups = self.successResultOf(a.usersGroupsById([0, 2**31 - 7], [0, 2**31 - 7]))
        self.assertEqual(users, [b"root", b""])
        self.assertEqual(groups, [b"root", b""])

    def test_copyData(self) -> None:
        source = self.successResultOf(self.avatar.openFile(b"/one/sub/g", FXF_READ, {}))
        destination = self.successResultOf(
            self.avatar.openFile(b"/two/c", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        )
        self.successResultOf(self.avatar.copyData(source, 0, 0, destination, 2))
        self.successResultOf(self.avatar.copyData(destination, 2, 2, destination, 0))
        self.successResultOf(source.close())
        self.successResultOf(destination.close())
        self.assertEqual(read(self.path("two", "c")), b"dedeep")

    def test_directory(self) -> None:
        for i in range(5):
            write(self.path("two", f"n{i}"), b"")
        directory = self.successResultOf(self.avatar.openDirectory(b"/two"))
        first = self.successResultOf(directory.readBatch(4))
        second = self.successResultOf(directory.readBatch(4))
        self.assertEqual((len(first), len(second)), (4, 2))
        self.assertFailsWith(directory.readBatch(4), EOFError)
        names = {n for n, _, _ in first + second}
        self.assertEqual(names, {b"t", b"n0", b"n1", b"n2", b"n3", b"n4"})
        self.successResultOf(directory.close())
        root = self.successResultOf(self.avatar.openDirectory(b"/"))
        self.assertEqual([n for n, _, _ in root], [b"home", b"one", b"ro", b"two"])

    def test_confinement(self) -> None:
        a = self.avatar
        self.assertFailsWith(
            a.openFile(b"/one/esc_abs/secret", FXF_READ, {}), PermissionError, errno.EACCES
        )
        self.assertFailsWith(a.getAttrs(b"/one/esc_root/etc", True), PermissionError, errno.EACCES)
        self.assertFailsWith(a.openDirectory(b"/one/sub/deeper/esc"), PermissionError, errno.EACCES)
        self.assertFailsWith(a.hardLink(b"/one/esc_abs/secret", b"/one/x"), PermissionError)
        self.assertNotIn(os.fsencode(self.base), self.successResultOf(a.realPath(b"/one/in_abs")))
        self.assertFailsWith(a.getAttrs(b"/one/\0", True), OSError, errno.EINVAL)

    def test_readOnly(self) -> None:
        """
        Every mutating avatar request on a read-only share fails with EACCES.
        """
        a = self.avatar
        f = self.successResultOf(a.openFile(b"/ro/r", FXF_READ, {}))
        w = self.successResultOf(a.openFile(b"/one/w", FXF_WRITE | FXF_CREAT, {}))
        for d in [
            a.openFile(b"/ro/r", FXF_WRITE, {}),
            a.openFile(b"/ro/r", FXF_READ | FXF_TRUNC, {}),
            a.openFile(b"/ro/n", FXF_WRITE | FXF_CREAT, {}),
            a.setAttrs(b"/ro/r", {"size": 0}),
            a.lsetStat(b"/ro/l", {"atime": 1, "mtime": 1}),
            f.setAttrs({"permissions": 0o777}),
            a.removeFile(b"/ro/r"),
            a.renameFile(b"/ro/r", b"/ro/s"),
            a.posixRename(b"/ro/r", b"/one/s"),
            a.posixRename(b"/one/f", b"/ro/r"),
            a.makeDirectory(b"/ro/n", {}),
            a.removeDirectory(b"/ro/d"),
            a.makeLink(b"/ro/n", b"r"),
            a.hardLink(b"/ro/r", b"/one/n"),
            a.hardLink(b"/one/f", b"/ro/n"),
            a.copyData(w, 0, 0, f, 0),
        ]:
            self.assertFailsWith(d, PermissionError, errno.EACCES)
        self.assertEqual(sorted(os.listdir(self.path("ro"))), ["d", "l", "r"])
        self.assertEqual(read(self.path("ro", "r")), b"read-only")


class OrderingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        makeTree(self.base)
        self.runner = ManualRunner()
        self.avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["one"], cwd=self.base), engine=OrderedEngine(self.runner)
        )

    def openFile(self, path: bytes) -> ShareFile:
        d = self.avatar.openFile(path, FXF_READ | FXF_WRITE | FXF_CREAT, {})
        self.runner.runNext()
        return self.successResultOf(d)

    def test_oneHandleInOrder(self) -> None:
        """
        A request on a file starts only once the previous one on that file
        is done.
        """
        f = self.openFile(b"a")
        first = f.writeChunk(0, b"first")
        second = f.writeChunk(0, b"2nd")
        third = f.readChunk(0, 100)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.runner.runNext()
        self.assertEqual(self.successResultOf(third), b"2ndst")

    def test_readsTogether(self) -> None:
        """
        Reads of one file run together, after the write made before them
        and before the write made after them.
        """
        f = self.openFile(b"a")
        first = f.writeChunk(0, b"abc")
        reads = [f.readChunk(0, 10), f.readChunk(1, 10), f.getAttrs()]
        last = f.writeChunk(0, b"xyz")
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.successResultOf(first)
        self.assertEqual(len(self.runner.calls), 3)
        for _ in range(3):
            self.runner.runNext()
        self.assertEqual(self.successResultOf(reads[0]), b"abc")
        self.assertEqual(self.successResultOf(reads[1]), b"bc")
        self.assertEqual(self.successResultOf(reads[2])["size"], 3)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.successResultOf(last)

    def test_readersOfHandlesTogether(self) -> None:
        """
        A slow read of one file does not hold back another file's; a write
        of another file waits for both (a writer runs alone: the files may
        be one under two names).
        """
        a = self.openFile(b"a")
        b = self.openFile(b"b")
        slow = a.readChunk(0, 10)
        fast = b.getAttrs()
        write = b.writeChunk(0, b"late")
        self.assertEqual(len(self.runner.calls), 2)
        self.runner.calls.reverse()
        self.runner.runNext()
        self.assertEqual(self.successResultOf(fast)["size"], 0)
        self.assertNoResult(slow)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.failureResultOf(slow, EOFError)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.successResultOf(write)

    def test_samePathInOrder(self) -> None:
        """
        A request starts after an earlier one that changes something (as
        sshfs expects when it sends OPEN with CREAT and LSTAT together),
        whatever path it names; requests that only look then run together.
        """
        opened = self.avatar.openFile(b"new", FXF_WRITE | FXF_CREAT, {})
        stat = self.avatar.getAttrs(b"/one/new", False)
        other = self.avatar.getAttrs(b"/one/f", False)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.assertEqual(len(self.runner.calls), 2)
        self.runner.calls.reverse()
        self.runner.runNext()
        self.assertEqual(self.successResultOf(other)["size"], 6)
        self.assertNoResult(stat)
        self.runner.runNext()
        self.assertEqual(self.successResultOf(stat)["size"], 0)
        f = self.successResultOf(opened)
        write = f.writeChunk(0, b"abc")
        stat = self.avatar.getAttrs(b"/one/./new", True)
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.runNext()
        self.runner.runNext()
        self.successResultOf(write)
        self.assertEqual(self.successResultOf(stat)["size"], 3)

    def test_renameOrdersBothPaths(self) -> None:
        rename = self.avatar.renameFile(b"/one/f", b"/one/g")
        old = self.avatar.getAttrs(b"/one/f", True)
        new = self.avatar.getAttrs(b"/one/g", True)
        self.assertEqual(len(self.runner.calls), 1)
        while self.runner.calls:
            self.runner.runNext()
        self.successResultOf(rename)
        self.failureResultOf(old, FileNotFoundError)
        self.assertEqual(self.successResultOf(new)["size"], 6)
        self.assertEqual(len(self.avatar.engine), 0)  # type: ignore[arg-type]


class OrderedEngineTests(SynchronousTestCase):
    def test_orderPerKey(self) -> None:
        """
        Calls sharing a key run one after another in call order; a call with
        two keys waits for both; disjoint calls run at once; failures
        release their keys too.
        """
        order = OrderedEngine()
        self.assertTrue(verifyObject(ICallEngine, order))
        started: list[str] = []
        gates: dict[str, Deferred[None]] = {}

        def call(name: str) -> Callable[[], Deferred[None]]:
            def run() -> Deferred[None]:
                started.append(name)
                gates[name] = Deferred()
                return gates[name]

            return run

        def boom() -> None:
            started.append("boom")
            raise ValueError("boom")

        a1 = order.run([b"/a"], call("a1"))
        ab = order.run([b"/b", b"/a"], call("ab"))
        b1 = order.run([b"/b"], call("b1"))
        c1 = order.run([b"/c"], boom)
        a2 = order.run([b"/a"], call("a2"))
        self.assertEqual(started, ["a1", "boom"])
        self.failureResultOf(c1, ValueError)
        gates["a1"].callback(None)
        self.assertEqual(started, ["a1", "boom", "ab"])
        gates["ab"].callback(None)
        self.assertEqual(started, ["a1", "boom", "ab", "b1", "a2"])
        gates["b1"].callback(None)
        gates["a2"].callback(None)
        for d in (a1, ab, b1, a2):
            self.successResultOf(d)
        self.assertEqual(len(order), 0)


class ThreadPoolTests(TestCase):
    def pooledAvatar(self) -> ShareSFTPServer:
        """
        An avatar over a new empty share C{s}, its calls started by an
        L{OrderedEngine} in a Twisted pool of 4 threads, results delivered
        to the global reactor.
        """
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        from twisted.python.threadpool import ThreadPool

        pool = ThreadPool(minthreads=0, maxthreads=4, name="test-fs")
        pool.start()
        self.addCleanup(pool.stop)
        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        engine = OrderedEngine(partial(deferToThreadPool, reactor, pool))
        return ShareSFTPServer(ShareSet.fromSpecs(["s"], cwd=base), engine=engine)

    def test_reactorPoolByDefault(self) -> Deferred[Any]:
        """
        Without a pool, calls run in the avatar's own L{Workers}, whose
        threads start only when needed (so building the avatar needs none).
        """
        from twisted.internet import reactor

        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        shares = ShareSet.fromSpecs(["s"], cwd=base)
        idle = ShareSFTPServer(shares, reactor=MemoryReactor())
        assert isinstance(idle.engine, Workers)
        self.assertTrue(verifyObject(ICallEngine, idle.engine))
        self.assertEqual(idle.engine.threads, 0)
        avatar = ShareSFTPServer(shares, reactor=reactor)
        d = avatar.realPath(b".")
        d.addCallback(self.assertEqual, b"/s")
        return d

    def test_attributesInMemoryAnsweredInline(self) -> Deferred[Any]:
        """
        With the default L{Workers}, STAT and FSTAT of entries whose
        attributes the kernel has in memory are answered at once, in the
        calling (reactor) thread: no worker thread is started for them.
        OPENDIR of such a directory too (its listing is read by a worker).
        Entries it would have to look up are handed to a worker.
        """
        from twisted.internet import reactor

        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        with open(os.path.join(base, "s", "f"), "wb") as f:
            f.write(b"12345")
        avatar = ShareSFTPServer(ShareSet.fromSpecs(["s"], cwd=base), reactor=reactor)
        if avatar.filesystem._memory is None or not avatar.filesystem._localMounts:
            raise SkipTest("No in-memory attributes on this system or filesystem")
        assert isinstance(avatar.engine, Workers)
        os.stat(os.path.join(base, "s", "f"))  # looked up once: in the dcache
        attrs = avatar.getAttrs(b"/s/f", False)
        self.assertIsInstance(attrs, dict)
        self.assertEqual(attrs["size"], 5)  # type: ignore[index]
        self.assertEqual(avatar.engine.threads, 0)
        # OPENDIR too: opened here, its entries read ahead by a worker, and
        # READDIR returns them once that is done.
        directory = avatar.openDirectory(b"/s")
        self.assertIsInstance(directory, ShareDirectory)
        self.assertEqual(avatar.engine.threads, 1)
        assert isinstance(directory, ShareDirectory)
        listed = directory.readBatch(100)
        fresh = avatar.getAttrs(b"/s/never-looked-up", False)
        self.assertIsInstance(fresh, Deferred)
        missing = self.assertFailure(fresh, FileNotFoundError)  # type: ignore[arg-type]

        def names(entries: list[tuple[bytes, bytes, object]]) -> None:
            self.assertEqual([name for name, _, _ in entries], [b"f"])
            directory.close()

        return gatherResults([missing, listed.addCallback(names)])

    def test_inOrderInThreads(self) -> None:
        """
        Many overlapping writes made at once on one handle, run by a pool of
        several threads, apply in the order they were made.
        """
        avatar = self.pooledAvatar()

        def opened(f: ShareFile) -> Deferred[Any]:
            writes = [f.writeChunk(0, bytes([65 + i % 26]) * (200 - i)) for i in range(200)]
            reads = f.readChunk(0, 1000)
            closed = f.close()
            return gatherResults([*writes, reads, closed]).addCallback(lambda results: results[-2])

        d = avatar.openFile(b"f", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        d.addCallback(opened)
        expected = bytearray(200)
        for i in range(200):
            expected[: 200 - i] = bytes([65 + i % 26]) * (200 - i)
        d.addCallback(self.assertEqual, bytes(expected))
        return d

    def test_createThenStat(self) -> None:
        """
        sshfs's pattern, in threads: OPEN with CREAT and, without waiting,
        LSTAT of the new file; the LSTAT always finds it.
        """
        avatar = self.pooledAvatar()
        results = []
        for i in range(40):
            name = b"f%d" % i
            opened = avatar.openFile(name, FXF_WRITE | FXF_CREAT | FXF_TRUNC, {})
            opened.addCallback(lambda f: f.close())
            results += [opened, avatar.getAttrs(name, False)]
        return gatherResults(results)


class StockConchTests(AvatarTestCase):
    """
    The avatar served by stock Conch's FileTransferServer.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: FileTransferServer(avatar=self.avatar), FileTransferClient
        )
        self.pump.flush()

    def result(self, d: Deferred[Any]) -> Any:
        self.pump.flush()
        return self.successResultOf(d)

    def statusOf(self, d: Deferred[Any]) -> int:
        self.pump.flush()
        failure = self.failureResultOf(d, filetransfer.SFTPError)
        return int(failure.value.code)

    def test_openWriteReadStat(self) -> None:
        f = self.result(self.client.openFile(b"/two/new", FXF_WRITE | FXF_CREAT, {}))
        self.result(f.writeChunk(0, b"over the wire"))
        self.result(f.close())
        f = self.result(self.client.openFile(b"/two/new", FXF_READ, {}))
        self.assertEqual(self.result(f.readChunk(0, 4)), b"over")
        self.assertEqual(self.result(f.getAttrs())["size"], 13)
        self.result(f.close())
        self.assertEqual(self.result(self.client.getAttrs(b"/two/new"))["size"], 13)
        self.assertEqual(self.result(self.client.realPath(b"/two/../one/in_abs")), "/one/sub")

    def test_readdir(self) -> None:
        directory = self.result(self.client.openDirectory(b"/one/sub"))
        entries = self.result(directory.read())
        self.assertEqual(sorted(n for n, _, _ in entries), [b"deeper", b"esc_file", b"g"])
        longnames = {n: ln for n, ln, _ in entries}
        self.assertTrue(longnames[b"g"].startswith(b"-rw-r--r--    1 "))
        end = directory.read()
        self.pump.flush()
        self.failureResultOf(end, EOFError)
        self.result(directory.close())
        directory = self.result(self.client.openDirectory(b"/home"))
        self.assertEqual([n for n, _, _ in self.result(directory.read())], [b"alice"])

    def test_statusCodes(self) -> None:
        c = self.client
        self.assertEqual(
            self.statusOf(c.openFile(b"/one/esc_abs/secret", FXF_READ, {})), FX_PERMISSION_DENIED
        )
        self.assertEqual(
            self.statusOf(c.getAttrs(b"/one/esc_root/etc/passwd")), FX_PERMISSION_DENIED
        )
        self.assertEqual(self.statusOf(c.openFile(b"/one/nope", FXF_READ, {})), FX_NO_SUCH_FILE)
        self.assertEqual(
            self.statusOf(c.renameFile(b"/one/f", b"/one/sub/g")), FX_FILE_ALREADY_EXISTS
        )
        for d in [
            c.openFile(b"/ro/r", FXF_WRITE, {}),
            c.openFile(b"/ro/n", FXF_WRITE | FXF_CREAT, {}),
            c.setAttrs(b"/ro/r", {"permissions": 0o600}),
            c.removeFile(b"/ro/r"),
            c.renameFile(b"/ro/r", b"/ro/s"),
            c.makeDirectory(b"/ro/n", {}),
            c.removeDirectory(b"/ro/d"),
            c.makeLink(b"/ro/n", b"r"),
            c.makeDirectory(b"/home/n", {}),
        ]:
            self.assertEqual(self.statusOf(d), FX_PERMISSION_DENIED)
        self.assertEqual(read(self.path("ro", "r")), b"read-only")
        self.assertEqual(read(self.path("outside", "secret")), SECRET)


class MergedWriteTests(TestCase):
    """
    WRITEs of one file waiting one behind the other at consecutive offsets
    are written together by the default L{Workers}; each still gets its own
    result, in order with the other requests on the file.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        self.path = os.path.join(base, "s", "f")
        self.avatar = ShareSFTPServer(ShareSet.fromSpecs(["s"], cwd=base), reactor=reactor)
        assert isinstance(self.avatar.engine, Workers)
        self.workers = self.avatar.engine
        self.addCleanup(self.workers.stop)

    def opened(self) -> Deferred[ShareFile]:
        return self.avatar.openFile(b"f", FXF_READ | FXF_WRITE | FXF_CREAT, {})

    def queued(self, f: ShareFile, chunks: list[tuple[int, bytes]]) -> list[Deferred[Any]]:
        """
        Hold the file's calls up while C{chunks} are written, so that they
        all wait one behind the other, then let them go.
        """
        import threading

        gate = threading.Event()
        held = self.workers.run([f.key], gate.wait, 10)
        writes = [f.writeChunk(offset, data) for offset, data in chunks]
        gate.set()
        return [held, *writes]

    def spy(self, f: ShareFile, limit: int | None = None) -> list[int]:
        """
        Count the vectored writes; with C{limit}, each writes at most that
        many bytes (short writes).
        """
        calls: list[int] = []
        real = f.confined.writeVector

        def writeVector(offset: int, pieces: Any) -> int:
            calls.append(len(pieces))
            if limit is not None:
                data = b"".join(bytes(p) for p in pieces)[:limit]
                return os.pwrite(f.confined.fd, data, offset)
            return real(offset, pieces)

        f.confined.writeVector = writeVector  # type: ignore[method-assign]
        return calls

    def test_mergedInOrder(self) -> Deferred[Any]:
        """
        Consecutive WRITEs go out in fewer system calls than WRITEs; a READ
        made between them sees exactly the WRITEs made before it, and a
        WRITE over earlier data (not consecutive) applies after them.
        """

        def run(f: ShareFile) -> Deferred[Any]:
            calls = self.spy(f)
            chunks = [(i * 1000, bytes([65 + i]) * 1000) for i in range(6)]
            import threading

            gate = threading.Event()
            held = self.workers.run([f.key], gate.wait, 10)
            first = [f.writeChunk(offset, data) for offset, data in chunks[:4]]
            read = f.readChunk(0, 10000)
            second = [f.writeChunk(offset, data) for offset, data in chunks[4:]]
            over = f.writeChunk(500, b"z" * 1000)
            gate.set()
            d = gatherResults([held, *first, read, *second, over])

            def check(results: list[Any]) -> None:
                self.assertEqual(results[1:5] + results[6:], [None] * 7)
                self.assertEqual(results[5], b"".join(data for _, data in chunks[:4]))
                with open(self.path, "rb") as fileObj:
                    data = fileObj.read()
                expected = bytearray(b"".join(data for _, data in chunks))
                expected[500:1500] = b"z" * 1000
                self.assertEqual(data, bytes(expected))
                # The four WRITEs before the READ, then the two after it;
                # the one over earlier data alone (not vectored).
                self.assertEqual(calls, [4, 2])

            return d.addCallback(check)

        return self.opened().addCallback(run)

    def test_failureOnEachAffectedWrite(self) -> Deferred[Any]:
        """
        When the merged system call fails part way (the disk is full), the
        WRITEs written entirely before succeed and every other one fails
        with the error on its own request.
        """

        def run(f: ShareFile) -> Deferred[Any]:
            full = 2500

            def writeVector(offset: int, pieces: Any) -> int:
                data = b"".join(bytes(p) for p in pieces)
                room = full - offset
                if room <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return os.pwrite(f.confined.fd, data[:room], offset)

            def write(offset: int, data: bytes) -> None:
                if offset + len(data) > full:
                    raise OSError(errno.ENOSPC, "No space left on device")
                os.pwrite(f.confined.fd, data, offset)

            f.confined.writeVector = writeVector  # type: ignore[method-assign]
            f.confined.write = write  # type: ignore[method-assign]
            chunks = [(i * 1000, bytes([65 + i]) * 1000) for i in range(5)]
            results = self.queued(f, chunks)
            outcomes: list[object] = []
            for d in results[1:]:
                d.addCallbacks(
                    outcomes.append, lambda failure: outcomes.append(failure.value.errno)
                )

            def check(_: object) -> None:
                self.assertEqual(outcomes, [None, None, errno.ENOSPC, errno.ENOSPC, errno.ENOSPC])
                with open(self.path, "rb") as fileObj:
                    self.assertEqual(fileObj.read(2000), b"A" * 1000 + b"B" * 1000)

            return gatherResults(results).addBoth(check)

        return self.opened().addCallback(run)

    def test_shortWrites(self) -> Deferred[Any]:
        """
        A merged write that the kernel takes in parts is continued until
        every WRITE is written.
        """

        def run(f: ShareFile) -> Deferred[Any]:
            calls = self.spy(f, limit=700)
            chunks = [(i * 1000, bytes([65 + i]) * 1000) for i in range(5)]
            d = gatherResults(self.queued(f, chunks))

            def check(results: list[Any]) -> None:
                self.assertEqual(results[1:], [None] * 5)
                with open(self.path, "rb") as fileObj:
                    self.assertEqual(fileObj.read(), b"".join(data for _, data in chunks))
                self.assertGreater(len(calls), 5)

            return d.addCallback(check)

        return self.opened().addCallback(run)
