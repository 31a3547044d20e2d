"""
Tests for L{conchshare.fs.ring} (and L{conchshare.sftp.ringwatch}) and the calls the avatar hands to the kernel
through it: the ring itself (create, write, stat, close, errors, its
capacity), the reactor's ring, and the avatar's requests, which must give
the same results whether the ring or a worker thread makes them.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch.ssh.filetransfer import (
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from conchshare.fs import ConfinedFile, ConfinedFilesystem, resolver
from conchshare.fs import ring as uring
from conchshare.fs.ring import FALLBACK, OpenHow, Ring, RingCall
from conchshare.fs.syscalls import Statx as _Statx
from conchshare.sftp import ringwatch
from conchshare.sftp.avatar import ShareFile, ShareSFTPServer
from conchshare.sftp.entries import openFlags
from conchshare.sftp.ringwatch import ringFor
from conchshare.sftp.workers import Workers
from conchshare.shares import ShareSet
from tests.support import CHECKOUT
from tests.support.engines import epollReactor
from tests.support.workload import readFile, writeFile

#: Why the tests that need io_uring are skipped (L{None}: they run).
UNUSABLE = (
    None
    if uring.usable()
    else "io_uring is not usable here (not Linux x86-64, disabled, or CONCHSHARE_IO_URING=0)"
)

# openat2's resolve flags.
RESOLVE_BENEATH = 0x08

# statx's STATX_BASIC_STATS.
STATX_BASIC = 0x7FF

# The project's checkout: the folder above tests/.
ROOT = CHECKOUT


def currentUmask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def delivered(case: SynchronousTestCase, ring: Ring, results: list[Any], count: int = 1) -> None:
    """
    Deliver C{ring}'s completions until C{results} has C{count} entries
    (failing C{case} after ten seconds).
    """
    deadline = time.monotonic() + 10
    while len(results) < count:
        if time.monotonic() > deadline:
            case.fail(f"io_uring completions not delivered: {results!r}")
        ring.spin(1.0, time.monotonic)
        ring.reap()


def usableIn(case: SynchronousTestCase, setting: str) -> bytes:
    """
    What L{uring.usable} says in a new process whose environment has
    C{CONCHSHARE_IO_URING} set to C{setting}.
    """
    env = dict(os.environ, CONCHSHARE_IO_URING=setting)
    done = subprocess.run(
        [sys.executable, "-c", "from conchshare.fs import ring; print(ring.usable())"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    case.assertEqual(done.returncode, 0, done.stderr)
    return done.stdout.strip()


class RingTests(SynchronousTestCase):
    """
    L{Ring}'s operations, each completed with its result (a count, a
    descriptor, or minus an errno value) given to its callback.
    """

    skip = UNUSABLE

    def setUp(self) -> None:
        self.ring = Ring()
        self.addCleanup(self.ring.close)
        self.base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(self.base, "d"))
        self.directory = os.path.join(self.base, "d")
        self.dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.addCleanup(os.close, self.dirfd)

    def complete(self, submit: Callable[[Callable[[int], object]], bool]) -> int:
        """
        Submit one operation (C{submit} is given its callback), deliver its
        completion and return its result.
        """
        results: list[int] = []
        self.assertTrue(submit(results.append))
        self.assertEqual(len(self.ring), 1)
        delivered(self, self.ring, results)
        self.assertEqual(len(self.ring), 0)
        self.assertEqual(len(results), 1)
        return results[0]

    def openat2(self, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
        how = OpenHow(flags, mode, resolve)
        return self.complete(lambda done: self.ring.openat2(self.dirfd, path, how, done))

    def test_createWriteStatClose(self) -> None:
        """
        openat2 creates a file (with the mode asked for, minus the umask);
        writes at offsets land there, from C{bytes}, a slice of a
        C{bytearray} and a read-only memoryview; statx of the descriptor
        gives its size and mode; the file, once closed, holds the data.
        """
        fd = self.openat2(
            b"f",
            os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC,
            0o640,
            RESOLVE_BENEATH,
        )
        self.assertGreaterEqual(fd, 0)
        closed = False

        def closeIfOpen() -> None:
            if not closed:
                os.close(fd)

        self.addCleanup(closeIfOpen)
        ring = self.ring
        self.assertEqual(self.complete(lambda done: ring.write(fd, b"hello", 0, done)), 5)
        buffer = bytearray(b"--world--")
        self.assertEqual(
            self.complete(lambda done: ring.write(fd, memoryview(buffer)[2:7], 5, done)), 5
        )
        # What the buffer holds later is not what was written.
        buffer[2:7] = b"XXXXX"
        readOnly = memoryview(b"..abc")[2:]
        self.assertTrue(readOnly.readonly)
        self.assertEqual(self.complete(lambda done: ring.write(fd, readOnly, 10, done)), 3)
        # Past the end: a hole of zeros.
        self.assertEqual(self.complete(lambda done: ring.write(fd, b"end", 20, done)), 3)

        found = _Statx()
        self.assertEqual(self.complete(lambda done: ring.statx(fd, 0, STATX_BASIC, found, done)), 0)
        self.assertEqual(found.mask & STATX_BASIC, STATX_BASIC)
        self.assertEqual(found.size, 23)
        self.assertTrue(stat.S_ISREG(found.mode))
        self.assertEqual(stat.S_IMODE(found.mode), 0o640 & ~currentUmask())
        self.assertEqual(found.ino, os.stat(os.path.join(self.directory, "f")).st_ino)

        self.assertEqual(self.complete(lambda done: ring.closeFile(fd, done)), 0)
        closed = True
        self.assertEqual(
            readFile(os.path.join(self.directory, "f")),
            b"helloworldabc" + b"\0" * 7 + b"end",
        )

    def test_openMissing(self) -> None:
        """
        openat2 of a missing entry without O_CREAT gives -ENOENT.
        """
        self.assertEqual(self.openat2(b"missing", os.O_RDONLY | os.O_CLOEXEC), -errno.ENOENT)

    def test_openBeneath(self) -> None:
        """
        With RESOLVE_BENEATH, a path leading above the directory gives
        -EXDEV, and nothing is created there.
        """
        result = self.openat2(
            b"../x",
            os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC,
            0o644,
            RESOLVE_BENEATH,
        )
        if result >= 0:
            os.close(result)
        self.assertEqual(result, -errno.EXDEV)
        self.assertFalse(os.path.lexists(os.path.join(self.base, "x")))

    def test_writeReadOnly(self) -> None:
        """
        A write to a descriptor open for reading only gives -EBADF and
        leaves the file as it was.
        """
        path = os.path.join(self.directory, "r")
        writeFile(path, b"kept")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, fd)
        self.assertEqual(
            self.complete(lambda done: self.ring.write(fd, b"lost", 0, done)), -errno.EBADF
        )
        self.assertEqual(readFile(path), b"kept")

    def test_statxBadDescriptor(self) -> None:
        """
        statx of a descriptor that is not open gives -EBADF.
        """
        fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
        os.close(fd)
        found = _Statx()
        # (Unless another thread took its number meanwhile.)
        result = self.complete(lambda done: self.ring.statx(fd, 0, STATX_BASIC, found, done))
        if result == 0:
            raise SkipTest("The descriptor was reused by another thread")
        self.assertEqual(result, -errno.EBADF)

    def test_capacity(self) -> None:
        """
        At most C{capacity} operations are in flight: then the ring is full
        and a further submission is refused, without starting anything (the
        descriptor it would close stays open).  Once the completions are
        delivered the ring takes operations again.
        """
        ring = Ring(entries=2)
        self.addCleanup(ring.close)
        self.assertGreaterEqual(ring.capacity, 2)
        source = os.path.join(self.directory, "source")
        writeFile(source, b"")
        original = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, original)
        results: list[int] = []
        for _ in range(ring.capacity):
            self.assertFalse(ring.full())
            self.assertTrue(ring.closeFile(os.dup(original), results.append))
        self.assertEqual(len(ring), ring.capacity)
        self.assertTrue(ring.full())
        refused = os.dup(original)
        try:
            self.assertFalse(ring.closeFile(refused, results.append))
            # Still open: the refused close never reached the kernel.
            self.assertEqual(os.fstat(refused).st_ino, os.fstat(original).st_ino)
        finally:
            os.close(refused)
        self.assertEqual(len(ring), ring.capacity)
        delivered(self, ring, results, ring.capacity)
        self.assertEqual(results, [0] * ring.capacity)
        self.assertEqual(len(ring), 0)
        self.assertFalse(ring.full())
        self.assertFalse(ring.ready())
        extra: list[int] = []
        self.assertTrue(ring.closeFile(os.dup(original), extra.append))
        delivered(self, ring, extra)
        self.assertEqual(extra, [0])
        self.assertEqual(results, [0] * ring.capacity)

    def test_callbackErrorLogged(self) -> None:
        """
        A callback that raises does not stop the delivery of the other
        completions; its error is logged (by the reactor's ring, to
        Twisted's log).
        """
        self.ring.logFailure = ringwatch.logFailure
        source = os.path.join(self.directory, "source")
        writeFile(source, b"")
        original = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, original)
        results: list[int] = []

        def broken(result: int) -> None:
            raise ZeroDivisionError(result)

        self.assertTrue(self.ring.closeFile(os.dup(original), broken))
        self.assertTrue(self.ring.closeFile(os.dup(original), results.append))
        delivered(self, self.ring, results)
        self.assertEqual(results, [0])
        self.assertEqual(len(self.ring), 0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_watchedWhileInFlight(self) -> None:
        """
        L{Ring.watch} is called when an operation is submitted while none
        was in flight, L{Ring.unwatch} when the last one is delivered, and
        on a close with operations in flight: once each, not per
        operation.
        """
        source = os.path.join(self.directory, "source")
        writeFile(source, b"")
        original = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, original)
        told: list[str] = []
        self.ring.watch = lambda: told.append("watch")
        self.ring.unwatch = lambda: told.append("unwatch")
        results: list[int] = []
        for _ in range(2):
            self.assertTrue(self.ring.closeFile(os.dup(original), results.append))
        self.assertEqual(told, ["watch"])
        delivered(self, self.ring, results, 2)
        self.assertEqual(told, ["watch", "unwatch"])
        self.ring.reap()
        self.assertEqual(told, ["watch", "unwatch"])
        self.assertTrue(self.ring.write(original, b"x", 0, results.append))
        self.ring.close()
        self.assertEqual(told, ["watch", "unwatch", "watch", "unwatch"])

    def test_closed(self) -> None:
        """
        A closed ring is full and takes no operation; closing it again does
        nothing.
        """
        ring = Ring(entries=2)
        ring.close()
        ring.close()
        self.assertTrue(ring.full())
        results: list[int] = []
        self.assertFalse(ring.closeFile(-1, results.append))
        self.assertEqual(ring.reap(), 0)
        self.assertEqual(results, [])


class SpinTests(SynchronousTestCase):
    """
    L{Ring.spin} polls the completion queue until its deadline, unless the
    switch C{CONCHSHARE_RING_SPIN} is off: then it only looks.
    """

    skip = UNUSABLE

    def spin(self, **kwargs: Any) -> tuple[bool, int]:
        """
        Spin for 5 seconds of a clock that advances a second each time it
        is read, while an operation is in flight that cannot complete (an
        open of a FIFO with no writer, held in io-wq).

        @return: what C{spin} said, and how often it read the clock.
        """
        ring = Ring(4, **kwargs)
        self.addCleanup(ring.close)
        fifo = os.path.realpath(self.mktemp())
        os.mkfifo(fifo)
        results: list[int] = []
        # O_CREAT: never tried without waiting, always by io-wq, where the
        # open waits for a writer.
        how = OpenHow(os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.assertTrue(ring.openat2(-100, os.fsencode(fifo), how, results.append))
        readings = [0]

        def clock() -> float:
            readings[0] += 1
            return float(readings[0])

        spun = ring.spin(5.0, clock)
        # The writer lets the open complete: nothing is left in flight.
        writer = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, writer)
        delivered(self, ring, results)
        self.assertGreaterEqual(results[0], 0)
        os.close(results[0])
        return spun, readings[0]

    def test_spins(self) -> None:
        """
        By default, C{spin} polls until its deadline.
        """
        self.assertEqual(self.spin(spin=True), (False, 6))

    def test_switchedOff(self) -> None:
        """
        With C{CONCHSHARE_RING_SPIN=0} in the environment when the ring is
        made, C{spin} only looks: it never reads the clock.
        """
        self.assertEqual(self.spin(spin=False), (False, 0))
        self.patch(os, "environ", {**os.environ, "CONCHSHARE_RING_SPIN": "0"})
        self.assertEqual(self.spin(), (False, 0))


class RingForTests(SynchronousTestCase):
    """
    L{ringFor} and L{uring.usable} where io_uring is not used.
    """

    def test_fakeReactor(self) -> None:
        """
        A reactor that does not poll descriptors (a test's fake) gets no
        ring.
        """
        self.assertIsNone(ringFor(MemoryReactor()))

    def test_selectReactor(self) -> None:
        """
        Only reactors that poll with epoll or poll get a ring: not the
        select reactor.
        """
        from twisted.internet.selectreactor import SelectReactor

        self.assertIsNone(ringFor(SelectReactor()))

    def test_disabledByEnvironment(self) -> None:
        """
        With C{CONCHSHARE_IO_URING=0} in the environment, io_uring is not
        used.
        """
        self.assertEqual(usableIn(self, "0"), b"False")


class UsableRingForTests(SynchronousTestCase):
    """
    L{ringFor} and L{uring.usable} where io_uring works.
    """

    skip = UNUSABLE

    def test_enabledByEnvironment(self) -> None:
        """
        Without C{CONCHSHARE_IO_URING=0}, io_uring is used where it works
        (the counterpart of L{RingForTests.test_disabledByEnvironment}).
        """
        self.assertEqual(usableIn(self, "1"), b"True")

    def test_globalReactor(self) -> None:
        """
        The global reactor gets one ring, always the same.
        """
        from twisted.internet import reactor as installed

        reactor: Any = installed
        ring = ringFor(reactor)
        if ring is None:
            raise SkipTest("The installed reactor does not poll descriptors")
        self.assertIs(ringFor(reactor), ring)
        self.assertFalse(ring.closed)

    def test_freshReactor(self) -> None:
        """
        A reactor watches its ring's eventfd only while operations are in
        flight, through its public C{addReader} and C{removeReader}: an
        idle ring leaves nothing for C{removeAll} (a test's clean-up, a
        program's shutdown) to find, and the reactor delivers the
        completions of a busy one.
        """
        reactor = epollReactor(self)
        ring = ringFor(reactor)
        assert ring is not None
        self.addCleanup(ring.close)
        self.assertIs(ringFor(reactor), ring)
        own = set(reactor.getReaders())  # its waker

        def ours() -> list[Any]:
            return [r for r in reactor.getReaders() if r not in own]

        source = self.mktemp()
        writeFile(source, b"")
        for _attempt in range(2):
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            results: list[int] = []
            self.assertTrue(ring.closeFile(fd, results.append))
            self.assertEqual([r.logPrefix() for r in ours()], ["io_uring"])
            deadline = time.monotonic() + 10
            while not results and time.monotonic() < deadline:
                reactor.doIteration(0.5)
            self.assertEqual(results, [0])
            self.assertEqual(len(ring), 0)
            self.assertEqual(ours(), [])
            self.assertEqual(reactor.removeAll(), [])


# -- the confined filesystem's calls in the kernel -------------------------


class ConfinedRingCallTests(SynchronousTestCase):
    """
    The L{RingCall}s of L{ConfinedFilesystem} and L{ConfinedFile}, started
    in a ring of their own: each reports a result, an error, or L{FALLBACK}
    where the call must be made in a thread (a symlink on the way, an
    existing file).
    """

    skip = UNUSABLE

    def setUp(self) -> None:
        # A process umask that lets a file be created with 0644 in one
        # call (no fchmod after the open, which the ring does not make).
        self.addCleanup(os.umask, os.umask(0o022))
        self.ring = Ring()
        self.addCleanup(self.ring.close)
        self.base = os.path.realpath(self.mktemp())
        self.share = os.path.join(self.base, "s")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(os.path.join(self.share, "sub"))
        os.makedirs(self.outside)
        writeFile(os.path.join(self.share, "f"), b"12345")
        writeFile(os.path.join(self.outside, "secret"), b"secret!")
        os.symlink("f", os.path.join(self.share, "link"))
        os.symlink("sub", os.path.join(self.share, "sublink"))
        os.symlink(self.outside, os.path.join(self.share, "out"))
        # The share's folder counts as checked lately (a clock that stands
        # still), however slow the machine (else the calls go to threads,
        # as they should then).
        self.fs = ConfinedFilesystem(ShareSet.fromSpecs(["s"], cwd=self.base), clock=lambda: 0.0)

    def outcome(self, call: RingCall | None) -> Any:
        """
        Start C{call} in the ring and return what it reports.
        """
        assert call is not None
        reports: list[Any] = []
        self.assertTrue(call.start(self.ring, reports.append))
        delivered(self, self.ring, reports)
        # What the call closes once done (a descriptor it opened).
        deadline = time.monotonic() + 10
        while len(self.ring) and time.monotonic() < deadline:
            self.ring.spin(0.1, time.monotonic)
            self.ring.reap()
        self.assertEqual(len(self.ring), 0)
        self.assertEqual(len(reports), 1)
        return reports[0]

    def test_stat(self) -> None:
        """
        STAT and LSTAT of a file give what L{ConfinedFilesystem.stat} gives.
        """
        for follow in (True, False):
            ok, attrs = self.outcome(self.fs.ringStat(b"f", follow=follow, cachedFirst=False))
            self.assertTrue(ok)
            self.assertEqual(attrs, self.fs.stat(b"f", follow=follow))
            self.assertEqual(attrs["size"], 5)

    def test_statDirectory(self) -> None:
        """
        STAT of a directory gives its attributes.
        """
        ok, attrs = self.outcome(self.fs.ringStat(b"sub", cachedFirst=False))
        self.assertTrue(ok)
        self.assertTrue(stat.S_ISDIR(attrs["permissions"]))
        self.assertEqual(attrs, self.fs.stat(b"sub"))

    def test_lstatSymlink(self) -> None:
        """
        LSTAT of a symlink gives the link's own attributes, where the
        share's virtual path is its real path; elsewhere it is left to a
        thread, which reports the size as the length READLINK answers.
        """
        self.assertIs(
            self.outcome(self.fs.ringStat(b"link", follow=False, cachedFirst=False)), FALLBACK
        )
        self.fs = ConfinedFilesystem(
            ShareSet.fromSpecs([self.share.lstrip("/") + "=" + self.share]), clock=lambda: 0.0
        )
        ok, attrs = self.outcome(self.fs.ringStat(b"link", follow=False, cachedFirst=False))
        self.assertTrue(ok)
        self.assertTrue(stat.S_ISLNK(attrs["permissions"]))
        self.assertEqual(attrs, self.fs.stat(b"link", follow=False))

    def test_statSymlinkFallsBack(self) -> None:
        """
        STAT of a symlink, or of a path through one, is left to a thread
        (which follows it, or refuses it if it leads out of the share).
        """
        for path in (b"link", b"sublink", b"out", b"out/secret"):
            self.assertIs(
                self.outcome(self.fs.ringStat(path, follow=True, cachedFirst=False)),
                FALLBACK,
                path,
            )
        self.assertIs(
            self.outcome(self.fs.ringStat(b"out/secret", follow=False, cachedFirst=False)),
            FALLBACK,
        )

    def test_statMissing(self) -> None:
        """
        STAT of a missing entry fails with L{FileNotFoundError}.
        """
        for cachedFirst in (True, False):
            ok, error = self.outcome(self.fs.ringStat(b"missing", cachedFirst=cachedFirst))
            self.assertFalse(ok)
            self.assertIsInstance(error, FileNotFoundError)

    def test_create(self) -> None:
        """
        OPEN with FXF_CREAT of a new file creates it with the permissions
        asked for (minus the umask); the file written and closed in the
        ring holds the data.
        """
        call = self.fs.ringOpenFile(
            b"new", openFlags(FXF_WRITE | FXF_CREAT), {"permissions": 0o644}
        )
        ok, opened = self.outcome(call)
        self.assertTrue(ok)
        self.assertIsInstance(opened, ConfinedFile)
        self.addCleanup(opened.close)
        self.assertEqual(opened.virtualPath, b"/s/new")
        path = os.path.join(self.share, "new")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(self.outcome(opened.ringWrite(3, b"def")), (True, None))
        self.assertEqual(self.outcome(opened.ringWrite(0, memoryview(b"abc"))), (True, None))
        self.assertEqual(self.outcome(opened.ringClose()), (True, None))
        self.assertTrue(opened.closed)
        self.assertEqual(readFile(path), b"abcdef")
        # Closed: nothing more goes to the kernel with its old descriptor.
        self.assertIsNone(opened.ringWrite(0, b"x"))

    def test_createExclusiveExisting(self) -> None:
        """
        OPEN with FXF_CREAT|FXF_EXCL of an existing file fails with
        L{FileExistsError} and leaves it as it was.
        """
        call = self.fs.ringOpenFile(
            b"f", openFlags(FXF_WRITE | FXF_CREAT | FXF_EXCL | FXF_TRUNC), {}
        )
        ok, error = self.outcome(call)
        self.assertFalse(ok)
        self.assertIsInstance(error, FileExistsError)
        self.assertEqual(readFile(os.path.join(self.share, "f")), b"12345")

    def test_createExistingFallsBack(self) -> None:
        """
        OPEN with FXF_CREAT (no FXF_EXCL) of an existing file, or of a new
        file below a symlink, is left to a thread; nothing is created or
        changed meanwhile.
        """
        call = self.fs.ringOpenFile(b"f", openFlags(FXF_WRITE | FXF_CREAT | FXF_TRUNC), {})
        self.assertIs(self.outcome(call), FALLBACK)
        self.assertEqual(readFile(os.path.join(self.share, "f")), b"12345")
        for path in (b"out/new", b"sublink/new"):
            call = self.fs.ringOpenFile(path, openFlags(FXF_WRITE | FXF_CREAT), {})
            self.assertIs(self.outcome(call), FALLBACK)
        self.assertEqual(sorted(os.listdir(self.outside)), ["secret"])
        self.assertEqual(os.listdir(os.path.join(self.share, "sub")), [])

    def test_notInRing(self) -> None:
        """
        What the ring cannot make is not handed to it: an open without
        FXF_CREAT, a creation in a read-only share, a share's own folder.
        """
        self.assertIsNone(self.fs.ringOpenFile(b"f", openFlags(FXF_READ), {}))
        readOnly = ConfinedFilesystem(
            ShareSet.fromSpecs(["s"], cwd=self.base, readOnly=True), clock=lambda: 0.0
        )
        self.assertIsNone(readOnly.ringOpenFile(b"new", openFlags(FXF_WRITE | FXF_CREAT), {}))
        self.assertIsNone(self.fs.ringStat(b"/"))


# -- the avatar --------------------------------------------------------------

if TYPE_CHECKING:
    _Case = TestCase
else:
    _Case = object


class AvatarTestsMixin(_Case):
    """
    Requests to a L{ShareSFTPServer} with its default L{Workers} and the
    global reactor: the same results through the ring and without it.
    """

    #: Whether the avatar may use the reactor's ring.
    ring: bool

    # Seconds: a completion never delivered fails the test soon.
    timeout = 60

    def setUp(self) -> None:
        from twisted.internet import reactor as installed

        self.reactor: Any = installed
        # A process umask that lets a file be created with 0644 in one
        # call (no fchmod after the open).
        self.addCleanup(os.umask, os.umask(0o022))
        # The share's folder counts as checked lately, however slow the
        # machine: every request then may go to the ring.
        self.patch(resolver, "ROOT_RECHECK", 3600.0)
        self.base = os.path.realpath(self.mktemp())
        self.share = os.path.join(self.base, "s")
        self.outside = os.path.join(self.base, "outside")
        os.makedirs(self.share)
        os.makedirs(self.outside)
        self.avatar = self.makeAvatar()

    def makeAvatar(self, **kwargs: Any) -> ShareSFTPServer:
        avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["s"], cwd=self.base), reactor=self.reactor, ring=self.ring, **kwargs
        )
        workers = avatar.engine
        assert isinstance(workers, Workers)
        self.addCleanup(workers.stop)
        return avatar

    def path(self, *names: str) -> str:
        return os.path.join(self.share, *names)

    def opened(
        self, name: bytes, flags: int, attrs: dict[str, object] | None = None
    ) -> Deferred[ShareFile]:
        d = self.avatar.openFile(name, flags, attrs or {})

        def keep(f: ShareFile) -> ShareFile:
            self.addCleanup(f.confined.close)
            return f

        return d.addCallback(keep)

    def attrs(self, path: bytes, follow: bool) -> Deferred[dict[str, object]]:
        # Answered at once, raised at once, or later: a Deferred in any case.
        getAttrs: Callable[[bytes, bool], Any] = self.avatar.getAttrs
        d: Deferred[dict[str, object]] = defer.maybeDeferred(getAttrs, path, follow)
        return d

    def threadsUsed(self) -> int:
        workers = self.avatar.engine
        assert isinstance(workers, Workers)
        return workers.threads

    @defer.inlineCallbacks
    def test_createWriteClose(self) -> Any:
        """
        A file created, written in two chunks, statted and closed has the
        data, the size and the permissions asked for (minus the umask).
        """
        f = yield self.opened(b"f", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {"permissions": 0o644})
        # The second WRITE waits for the first, then starts on its own.
        data = bytearray(b"world")  # as the core passes it: a view of its buffer
        written = yield gatherResults(
            [f.writeChunk(0, b"hello "), f.writeChunk(6, memoryview(data))]
        )
        self.assertEqual(written, [None, None])
        attrs = yield self.attrs(b"f", False)
        self.assertEqual(attrs["size"], 11)
        self.assertEqual(attrs["permissions"], stat.S_IFREG | 0o644)
        self.assertIsNone((yield f.close()))
        self.assertEqual(readFile(self.path("f")), b"hello world")
        found = os.stat(self.path("f"))
        self.assertEqual(found.st_size, 11)
        self.assertEqual(stat.S_IMODE(found.st_mode), 0o644)
        self.checkThreads()

    def checkThreads(self) -> None:
        """
        After L{test_createWriteClose}: whether worker threads were used as
        they should be (none through the ring).
        """
        raise NotImplementedError()

    @defer.inlineCallbacks
    def test_createKeepsPermissionsBeyondUmask(self) -> Any:
        """
        A file created with permissions the process umask would remove
        (with an avatar umask of 0) gets them all.
        """
        self.avatar = self.makeAvatar(umask=0)
        f = yield self.opened(b"f", FXF_WRITE | FXF_CREAT, {"permissions": 0o666})
        yield f.close()
        self.assertEqual(stat.S_IMODE(os.stat(self.path("f")).st_mode), 0o666)

    @defer.inlineCallbacks
    def test_symlinkInside(self) -> Any:
        """
        LSTAT of a symlink in the share gives the link's attributes; STAT
        follows it to its target's.
        """
        writeFile(self.path("target"), b"1234567")
        os.symlink("target", self.path("link"))
        f = yield self.opened(b"link", FXF_READ)
        lstat = yield self.attrs(b"link", False)
        self.assertTrue(stat.S_ISLNK(lstat["permissions"]))
        self.assertEqual(lstat["size"], len("target"))
        followed = yield self.attrs(b"link", True)
        self.assertTrue(stat.S_ISREG(followed["permissions"]))
        self.assertEqual(followed["size"], 7)
        # The same while the path is busy (the requests wait for their turn).
        pending = f.close()
        busy = yield gatherResults([self.attrs(b"link", False), self.attrs(b"link", True), pending])
        self.assertEqual(busy[:2], [lstat, followed])

    @defer.inlineCallbacks
    def test_symlinkOutside(self) -> Any:
        """
        STAT through a symlink leading out of the share fails with
        L{PermissionError}, and so does creating a file below a symlink to
        a folder outside; nothing is created there.
        """
        writeFile(os.path.join(self.outside, "secret"), b"secret!")
        os.symlink(os.path.join(self.outside, "secret"), self.path("leak"))
        os.symlink(self.outside, self.path("out"))
        for path in (b"leak", b"out/secret"):
            yield self.assertFailure(self.attrs(path, True), PermissionError)
        yield self.assertFailure(
            self.avatar.openFile(b"out/newfile", FXF_WRITE | FXF_CREAT, {}), PermissionError
        )
        yield self.assertFailure(
            self.avatar.openFile(b"out/secret", FXF_WRITE | FXF_CREAT | FXF_TRUNC, {}),
            PermissionError,
        )
        self.assertEqual(sorted(os.listdir(self.outside)), ["secret"])
        self.assertEqual(readFile(os.path.join(self.outside, "secret")), b"secret!")

    @defer.inlineCallbacks
    def test_createExisting(self) -> Any:
        """
        FXF_CREAT|FXF_EXCL of an existing file fails with
        L{FileExistsError}; FXF_CREAT alone opens it with its data, which
        FXF_TRUNC removes.
        """
        writeFile(self.path("f"), b"old data")
        yield self.assertFailure(
            self.avatar.openFile(b"f", FXF_WRITE | FXF_CREAT | FXF_EXCL, {}), FileExistsError
        )
        self.assertEqual(readFile(self.path("f")), b"old data")
        f = yield self.opened(b"f", FXF_READ | FXF_WRITE | FXF_CREAT)
        yield f.writeChunk(0, b"new")
        self.assertEqual((yield f.readChunk(0, 100)), b"new data")
        yield f.close()
        self.assertEqual(readFile(self.path("f")), b"new data")
        f = yield self.opened(b"f", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        yield f.close()
        self.assertEqual(readFile(self.path("f")), b"")

    @defer.inlineCallbacks
    def test_missing(self) -> Any:
        """
        STAT and LSTAT of a missing path fail with L{FileNotFoundError},
        also when they wait for their turn; creating a file in a missing
        folder fails the same way.
        """
        for follow in (True, False):
            yield self.assertFailure(self.attrs(b"missing", follow), FileNotFoundError)
        f = yield self.opened(b"missing", FXF_WRITE | FXF_CREAT)
        os.unlink(self.path("missing"))
        # Behind the close, on the same path.
        pending = f.close()
        busy = [self.attrs(b"missing", True), self.attrs(b"missing", False)]
        yield pending
        for d in busy:
            yield self.assertFailure(d, FileNotFoundError)
        yield self.assertFailure(
            self.avatar.openFile(b"nowhere/f", FXF_WRITE | FXF_CREAT, {}), FileNotFoundError
        )

    @defer.inlineCallbacks
    def test_readAfterWrites(self) -> Any:
        """
        A READ made after WRITEs sees them, and a WRITE made after the READ
        does not change what it read.
        """
        f = yield self.opened(b"f", FXF_READ | FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        writes = [f.writeChunk(i * 3, b"%03d" % i) for i in range(10)]
        read = f.readChunk(0, 100)
        later = f.writeChunk(0, b"zzz")
        fstat = defer.maybeDeferred(f.getAttrs)
        close = f.close()
        results = yield gatherResults([*writes, read, later, fstat, close])
        self.assertEqual(results[:10], [None] * 10)
        self.assertEqual(results[10], b"".join(b"%03d" % i for i in range(10)))
        self.assertIsNone(results[11])
        self.assertEqual(results[12]["size"], 30)
        self.assertEqual(readFile(self.path("f")), b"zzz" + results[10][3:])

    @defer.inlineCallbacks
    def test_pipelinedWrites(self) -> Any:
        """
        Many WRITEs at consecutive offsets made without waiting (as sshfs
        does), then a CLOSE: each succeeds and the file holds the data in
        order.
        """
        chunks = [bytes((i + j) % 256 for j in range(4096)) for i in range(50)]
        f = yield self.opened(b"f", FXF_WRITE | FXF_CREAT | FXF_TRUNC)
        writes = [f.writeChunk(i * 4096, chunk) for i, chunk in enumerate(chunks)]
        close = f.close()
        results = yield gatherResults([*writes, close])
        self.assertEqual(results, [None] * 51)
        self.assertEqual(readFile(self.path("f")), b"".join(chunks))

    @defer.inlineCallbacks
    def test_pipelinedFiles(self) -> Any:
        """
        Several files created, written and closed without waiting, each
        statted right after its OPEN (as sshfs does): each STAT finds the
        new, still empty file, and each file holds its own data.
        """
        names = [b"f%d" % i for i in range(20)]
        opens = [self.opened(name, FXF_WRITE | FXF_CREAT | FXF_EXCL) for name in names]
        stats = [self.attrs(name, True) for name in names]

        def write(f: ShareFile) -> Deferred[Any]:
            data = f.confined.virtualPath * 1000
            return gatherResults([f.writeChunk(0, data), f.close()])

        yield gatherResults([d.addCallback(write) for d in opens])
        found = yield gatherResults(stats)
        for name, attrs in zip(names, found, strict=True):
            self.assertEqual(readFile(self.path(name.decode())), (b"/s/" + name) * 1000)
            self.assertTrue(stat.S_ISREG(attrs["permissions"]))
            self.assertEqual(attrs["size"], 0)

    @defer.inlineCallbacks
    def test_writeQueuedBehindClose(self) -> Any:
        """
        A WRITE made after CLOSE on the same file (as stock Conch's server
        lets through until the CLOSE is answered) fails, and writes nothing
        to the file that took the descriptor's number meanwhile.
        """
        other = os.path.join(self.base, "other")
        writeFile(other, b"")
        f = yield self.opened(b"f", FXF_WRITE | FXF_CREAT)
        taken: list[int] = []

        def takeNumber(result: object) -> object:
            # Once the first WRITE is done (and, maybe, the file closed):
            # a file opened elsewhere in the process.
            taken.append(os.open(other, os.O_WRONLY | os.O_CLOEXEC))
            return result

        first = f.writeChunk(0, b"data").addCallback(takeNumber)
        close = f.close()
        late = f.writeChunk(0, b"LATE")
        results = yield defer.DeferredList([first, close, late], consumeErrors=True)
        for fd in taken:
            os.close(fd)
        self.assertEqual([ok for ok, _ in results], [True, True, False])
        self.assertTrue(results[2][1].check(OSError))
        self.assertEqual(readFile(other), b"")
        self.assertEqual(readFile(self.path("f")), b"data")


class AvatarRingTests(AvatarTestsMixin, TestCase):
    """
    The avatar's requests through the reactor's ring.
    """

    skip = UNUSABLE
    ring = True

    def setUp(self) -> None:
        super().setUp()
        workers = self.avatar.engine
        assert isinstance(workers, Workers)
        if workers.ring is None:
            raise SkipTest("The installed reactor has no ring")
        self.assertIs(workers.ring, ringFor(self.reactor))

    def checkThreads(self) -> None:
        # Everything was made by the kernel (or answered from memory).
        self.assertEqual(self.threadsUsed(), 0)


class AvatarThreadTests(AvatarTestsMixin, TestCase):
    """
    The same requests without the ring: in worker threads.
    """

    ring = False

    def setUp(self) -> None:
        super().setUp()
        workers = self.avatar.engine
        assert isinstance(workers, Workers)
        self.assertIsNone(workers.ring)

    def checkThreads(self) -> None:
        # The assertion of AvatarRingTests tells the two apart.
        self.assertGreater(self.threadsUsed(), 0)


class DroppedRingTests(SynchronousTestCase):
    """
    A ring dropped without L{Ring.close} does what C{close} does: the kernel
    never uses memory Python has given back.
    """

    skip = UNUSABLE

    def test_droppedWithWriteInFlight(self) -> None:
        """
        A WRITE blocked on a full pipe, its ring dropped and collected, its
        data's memory reused: the reader gets the pipe's earlier contents and
        at most the WRITE's own bytes, never the memory's new contents.
        """
        reader, writer = os.pipe()
        self.addCleanup(os.close, reader)
        fcntl.fcntl(writer, 1031, 4096)  # F_SETPIPE_SZ: one page
        filler = b"f" * 4096
        self.assertEqual(os.write(writer, filler), 4096)
        ring = Ring(entries=4)
        size = 64 * 1024
        data = bytes([ord("w")]) * size  # made here: referenced by the ring only
        results: list[int] = []
        self.assertTrue(ring.write(writer, data, 0, results.append))
        del data
        self.assertEqual(results, [])
        del ring
        gc.collect()
        # The write end stays open while the kernel may still write to it.
        os.close(writer)
        reused = [bytes([ord("R")]) * size for _ in range(64)]
        received = bytearray()
        while True:
            ready, _, _ = select.select([reader], [], [], 10)
            self.assertTrue(ready, "The pipe's write end was never released")
            chunk = os.read(reader, 65536)
            if not chunk:
                break
            received += chunk
        del reused
        self.assertEqual(bytes(received[:4096]), filler)
        self.assertEqual(bytes(received[4096:]).strip(b"w"), b"")
