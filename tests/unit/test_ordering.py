"""
Tests for L{conchshare.sftp.ordering}: within one connection, requests sent
together give the results of processing them one at a time in the order
received, whatever names they use for one file (issue 10, item 1).

Each case sends some requests one at a time (the set-up), then several
together, the first of them held in a latch (a blocking filesystem call)
until every later request has either been answered or is waiting for it:
without the order, a later request overtakes the held one every time.  The
replies, matched by request id, must equal those of the same requests sent
one at a time.  Both engines are driven through the SFTP core, bytes in and
replies out: the reactor engine (the avatar's L{Workers}, with a fake
reactor whose thread is the test's) and the engine of C{sftp-server} (the
avatar's L{OrderedEngine}, with a start function that holds the latched call; and the
real L{ThreadedServer} on pipes).
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from conchshare.sftp import wire
from conchshare.sftp.avatar import ShareSFTPServer
from conchshare.sftp.core import SFTPServerCore
from conchshare.sftp.engine import OrderedEngine
from conchshare.sftp.ordering import Batch, Job, KeyOrder
from conchshare.sftp.workers import Workers
from conchshare.shares import ShareSet
from tests.support import CHECKOUT
from tests.support.wire import INIT, NO_ATTRS, request, s, u32, u64

TIMEOUT = 10.0

# Request types and open flags.
OPEN, CLOSE, READ, WRITE, SETSTAT, OPENDIR, READDIR = 3, 4, 5, 6, 9, 11, 12
REMOVE, MKDIR, RMDIR, STAT, RENAME = 13, 14, 15, 17, 18
EXTENDED = 200
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 1, 2, 8, 16

Reply = tuple[object, ...]


class Held:
    """
    A filesystem call (a bound method) standing in for the real one: the
    first call made after L{arm} is the held one.  With C{blocking}, it
    waits in its thread until L{release}; otherwise the engine's runner
    holds it (L{LatchRunner}).
    """

    def __init__(self, method: Callable[..., Any], blocking: bool) -> None:
        self.method = method
        self.blocking = blocking
        self.armed = False
        self.entered = threading.Event()
        self.released = threading.Event()

    def arm(self) -> None:
        self.armed = True

    def release(self) -> None:
        self.released.set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed and self.blocking:
            self.armed = False
            self.entered.set()
            if not self.released.wait(TIMEOUT):
                raise AssertionError("The held call was never released")
        return self.method(*args, **kwargs)


def _held(function: Callable[..., Any]) -> Held | None:
    while isinstance(function, partial):
        function = function.func
    return function if isinstance(function, Held) else None


class LatchRunner:
    """
    How an L{OrderedEngine} starts the avatar's calls: calls
    run at once, in the calling thread, except an armed L{Held} call, which
    runs when the test releases it.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        held = _held(function)
        if held is not None and held.armed:
            held.armed = False
            held.entered.set()
            d: Deferred[Any] = Deferred()
            self.pending.append((function, args, d))
            return d
        return maybeDeferred(function, *args)

    def release(self) -> None:
        for function, args, d in self.pending:
            maybeDeferred(function, *args).chainDeferred(d)
        self.pending = []


class ThreadReactor:
    """
    The part of a reactor L{Workers} uses: C{callFromThread} and
    C{addSystemEventTrigger}.  The calls wait until the test thread (the
    reactor thread) runs them; it never shuts down (the test stops the
    workers).
    """

    def __init__(self) -> None:
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = threading.Condition()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        with self._wake:
            self._calls.append((function, args))
            self._wake.notify()

    def addSystemEventTrigger(
        self, phase: str, eventType: str, function: Callable[..., Any], *args: Any
    ) -> None:
        pass

    def pending(self) -> bool:
        with self._wake:
            return bool(self._calls)

    def runCalls(self, wait: float) -> None:
        """
        Run the calls made so far; if none, wait up to C{wait} seconds for
        one first.
        """
        with self._wake:
            if not self._calls:
                self._wake.wait(wait)
            calls, self._calls = list(self._calls), deque()
        for function, args in calls:
            function(*args)


class Engine:
    """
    One connection: the SFTP core over a fresh share C{s}, bytes in,
    replies out.
    """

    blocking = False

    def __init__(self, base: str) -> None:
        os.makedirs(os.path.join(base, "s"))
        self.shares = ShareSet.fromSpecs(["s"], cwd=base)
        self.avatar = self.makeAvatar()
        self.out = bytearray()
        self.replies: dict[int, tuple[int, bytes]] = {}
        self.core = SFTPServerCore(self.avatar, self.out.extend)
        self.core.dataReceived(INIT)
        self.collect()
        self.out.clear()

    def makeAvatar(self) -> ShareSFTPServer:
        raise NotImplementedError()

    def stop(self) -> None:
        pass

    def collect(self) -> None:
        """
        Parse what the core wrote into L{replies}.
        """
        data = bytes(self.out)
        self.out.clear()
        while data:
            (length,) = struct.unpack(">I", data[:4])
            body, data = data[4 : 4 + length], data[4 + length :]
            if body[0] != wire.FXP_VERSION:
                (rid,) = struct.unpack(">I", body[1:5])
                self.replies[rid] = (body[0], body[5:])

    def turn(self, wait: float) -> None:
        """
        Let the engine deliver what is done (waiting up to C{wait} seconds
        when nothing is).
        """
        self.collect()

    def await_(self, ids: list[int]) -> None:
        deadline = TIMEOUT
        while not all(rid in self.replies for rid in ids):
            self.turn(0.01)
            deadline -= 0.01
            if deadline < 0:
                raise AssertionError(f"No reply to {ids} in time")

    def feed(self, data: bytes) -> None:
        self.core.dataReceived(data)

    def call(self, data: bytes, rid: int) -> tuple[int, bytes]:
        """
        Send one request and wait for its reply.
        """
        self.feed(data)
        self.await_([rid])
        return self.replies[rid]

    def quiet(self, waiting: int) -> bool:
        """
        Whether nothing but the held call runs or is about to be delivered,
        C{waiting} requests being unanswered.
        """
        return True

    def together(self, data: bytes, ids: list[int], held: Held) -> None:
        """
        Send C{data} (the requests C{ids}) in one feed, the first request's
        filesystem call held until every later one has been answered or
        waits; then release it and wait for every reply.
        """
        held.arm()
        self.feed(data)
        if not held.entered.wait(TIMEOUT):
            raise AssertionError("The first request's call was never made")
        later = ids[1:]
        deadline = TIMEOUT
        while not all(rid in self.replies for rid in later) and not self.quiet(len(ids)):
            self.turn(0.001)
            deadline -= 0.001
            if deadline < 0:
                raise AssertionError("The later requests neither ran nor waited")
        self.collect()
        held.release()
        self.releaseRunner()
        self.await_(ids)

    def releaseRunner(self) -> None:
        pass

    def hold(self, owner: object, name: str) -> Held:
        """
        Put a L{Held} in place of C{owner}'s method C{name}.
        """
        held = Held(getattr(owner, name), self.blocking)
        setattr(owner, name, held)
        return held

    def fileOf(self, handle: bytes) -> Any:
        """
        The open file (L{conchshare.fs.ConfinedFile}) of a handle.
        """
        return self.core._files[handle].confined


class WorkersEngine(Engine):
    """
    The reactor engine: the avatar's own L{Workers} (threads), results
    delivered to the test thread; inline answers from the kernel's caches
    allowed, as in C{conchshare share}.  No io_uring (its calls bypass the
    held methods).
    """

    blocking = True

    def makeAvatar(self) -> ShareSFTPServer:
        self.reactor = ThreadReactor()
        avatar = ShareSFTPServer(self.shares, reactor=self.reactor, ring=False)
        assert isinstance(avatar.engine, Workers)
        self.workers = avatar.engine
        return avatar

    def stop(self) -> None:
        self.workers.stop()

    def turn(self, wait: float) -> None:
        self.reactor.runCalls(wait)
        self.collect()

    def quiet(self, waiting: int) -> bool:
        workers = self.workers
        with workers._lock:
            idle = not workers._ready and workers._calling == 1 and not workers._done
        return idle and not self.reactor.pending()


class PathOrderEngine(Engine):
    """
    The engine of C{sftp-server}: the avatar ordered by an L{OrderedEngine},
    inline answers allowed (as C{sftp-server} builds it), calls run by a
    L{LatchRunner}.
    """

    def makeAvatar(self) -> ShareSFTPServer:
        self.runner = LatchRunner()
        return ShareSFTPServer(self.shares, engine=OrderedEngine(self.runner, inlineReads=True))

    def releaseRunner(self) -> None:
        self.runner.release()


class ThreadedEngine(Engine):
    """
    The engine of C{sftp-server} itself: L{ThreadedServer} on pipes, its
    threads running the calls (the share also holds C{f}, ten bytes).
    """

    blocking = True

    def __init__(self, base: str) -> None:
        from tests.support.engines import Served

        self.served = Served(base)
        self.avatar = self.served.avatar
        self.replies = {}
        core = self.served.engine.core
        assert core is not None
        self.core = core

    def stop(self) -> None:
        self.served.stop()

    def feed(self, data: bytes) -> None:
        self.served.send(data)

    def collect(self) -> None:
        pass

    def turn(self, wait: float) -> None:
        try:
            kind, body = self.served.receive(timeout=wait)
        except AssertionError:
            return
        (rid,) = struct.unpack(">I", body[:4])
        self.replies[rid] = (kind, body[4:])

    def quiet(self, waiting: int) -> bool:
        engine = self.served.engine
        with engine._lock:
            return self.core.inFlight == waiting and not engine._ready and len(engine._running) == 1


def normalised(reply: tuple[int, bytes]) -> Reply:
    """
    What of a reply one-at-a-time processing fixes: a status's code; that a
    handle came; data; an ATTRS's size and permissions; a NAME's file names
    (as a set, without C{.} and C{..}).
    """
    kind, body = reply
    if kind == wire.FXP_STATUS:
        return ("status", struct.unpack(">I", body[:4])[0])
    if kind == wire.FXP_HANDLE:
        return ("handle",)
    if kind == wire.FXP_DATA:
        return ("data", wire.Reader(body).string())
    if kind == wire.FXP_ATTRS:
        attrs = wire.Reader(body).attrs()
        return ("attrs", attrs.get("size"), attrs.get("permissions"))
    if kind == wire.FXP_NAME:
        reader = wire.Reader(body)
        names = set()
        for _ in range(reader.u32()):
            names.add(reader.string())
            reader.string()
            reader.attrs()
        return ("names", frozenset(names - {b".", b".."}))
    return ("kind", kind)


def handleOf(reply: tuple[int, bytes]) -> bytes:
    kind, body = reply
    assert kind == wire.FXP_HANDLE, reply
    return wire.Reader(body).string()


def openRequest(rid: int, path: bytes, flags: int) -> bytes:
    return request(OPEN, rid, s(path) + u32(flags) + NO_ATTRS)


def writeRequest(rid: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return request(WRITE, rid, s(handle) + u64(offset) + s(data))


def hardlinkRequest(rid: int, old: bytes, new: bytes) -> bytes:
    return request(EXTENDED, rid, s(b"hardlink@openssh.com") + s(old) + s(new))


def sizeAttrs(size: int) -> bytes:
    return u32(wire.FILEXFER_ATTR_SIZE) + u64(size)


#: A case: given an engine, make its set-up one request at a time; return
#: the requests to send together (id, bytes; the first is held) and what
#: to hold: C{(owner, method name)}.
Case = Callable[[Engine], tuple[list[tuple[int, bytes]], tuple[object, str]]]


def _written(e: Engine, path: bytes) -> bytes:
    # A file created with "foo" written through the handle returned.
    h = handleOf(e.call(openRequest(1, path, FXF_WRITE | FXF_CREAT | FXF_TRUNC), 1))
    e.call(writeRequest(2, h, 0, b"foo"), 2)
    return h


def afterRename(e: Engine) -> Any:
    """
    OPEN f, WRITE "foo", RENAME f g; then WRITE "bar" at 3 and STAT g.
    """
    h = _written(e, b"/s/f")
    e.call(request(RENAME, 3, s(b"/s/f") + s(b"/s/g")), 3)
    return (
        [(10, writeRequest(10, h, 3, b"bar")), (11, request(STAT, 11, s(b"/s/g")))],
        (e.fileOf(h), "write"),
    )


def afterHardlink(e: Engine) -> Any:
    """
    OPEN f, WRITE "foo", hardlink f g; then WRITE "bar" at 3 and STAT g.
    """
    h = _written(e, b"/s/f")
    e.call(hardlinkRequest(3, b"/s/f", b"/s/g"), 3)
    return (
        [(10, writeRequest(10, h, 3, b"bar")), (11, request(STAT, 11, s(b"/s/g")))],
        (e.fileOf(h), "write"),
    )


def afterParentRename(e: Engine) -> Any:
    """
    MKDIR d, OPEN d/f, WRITE "foo", RENAME d e; then WRITE "bar" at 3 and
    STAT e/f.
    """
    e.call(request(MKDIR, 5, s(b"/s/d") + NO_ATTRS), 5)
    h = _written(e, b"/s/d/f")
    e.call(request(RENAME, 3, s(b"/s/d") + s(b"/s/e")), 3)
    return (
        [(10, writeRequest(10, h, 3, b"bar")), (11, request(STAT, 11, s(b"/s/e/f")))],
        (e.fileOf(h), "write"),
    )


def truncateOtherName(e: Engine) -> Any:
    """
    f holds six bytes, opened for reading, renamed g; then SETSTAT g
    size=0 and READ the handle.
    """
    w = _written(e, b"/s/f")
    e.call(writeRequest(3, w, 3, b"bar"), 3)
    e.call(request(CLOSE, 4, s(w)), 4)
    h = handleOf(e.call(openRequest(5, b"/s/f", FXF_READ), 5))
    e.call(request(RENAME, 6, s(b"/s/f") + s(b"/s/g")), 6)
    return (
        [
            (10, request(SETSTAT, 10, s(b"/s/g") + sizeAttrs(0))),
            (11, request(READ, 11, s(h) + u64(0) + u32(100))),
        ],
        (e.avatar.filesystem, "setAttrs"),
    )


def makeDirectoryThenCreate(e: Engine) -> Any:
    """
    MKDIR a and OPEN a/f (CREAT).
    """
    return (
        [
            (10, request(MKDIR, 10, s(b"/s/a") + NO_ATTRS)),
            (11, openRequest(11, b"/s/a/f", FXF_WRITE | FXF_CREAT)),
        ],
        (e.avatar.filesystem, "makeDirectory"),
    )


def removeThenRemoveDirectory(e: Engine) -> Any:
    """
    REMOVE a/x and RMDIR a.
    """
    e.call(request(MKDIR, 1, s(b"/s/a") + NO_ATTRS), 1)
    h = handleOf(e.call(openRequest(2, b"/s/a/x", FXF_WRITE | FXF_CREAT), 2))
    e.call(request(CLOSE, 3, s(h)), 3)
    return (
        [(10, request(REMOVE, 10, s(b"/s/a/x"))), (11, request(RMDIR, 11, s(b"/s/a")))],
        (e.avatar.filesystem, "removeFile"),
    )


def createAfterOpenDirectory(e: Engine) -> Any:
    """
    OPENDIR d (holding "one"); then OPEN d/new (CREAT) and READDIR, twice.
    """
    e.call(request(MKDIR, 1, s(b"/s/d") + NO_ATTRS), 1)
    h = handleOf(e.call(openRequest(2, b"/s/d/one", FXF_WRITE | FXF_CREAT), 2))
    e.call(request(CLOSE, 3, s(h)), 3)
    d = handleOf(e.call(request(OPENDIR, 4, s(b"/s/d")), 4))
    return (
        [
            (10, openRequest(10, b"/s/d/new", FXF_WRITE | FXF_CREAT)),
            (11, request(READDIR, 11, s(d))),
            (12, request(READDIR, 12, s(d))),
        ],
        (e.avatar.filesystem, "openFile"),
    )


class OrderingMixin:
    """
    The cases, for an engine.
    """

    engine: type[Engine]
    mktemp: Callable[[], str]
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]

    def serve(self, case: Case, together: bool) -> dict[int, Reply]:
        engine = self.engine(os.path.realpath(self.mktemp()))
        self.addCleanup(engine.stop)
        requests, (owner, name) = case(engine)
        ids = [rid for rid, _ in requests]
        if together:
            held = engine.hold(owner, name)
            engine.together(b"".join(data for _, data in requests), ids, held)
        else:
            for rid, data in requests:
                engine.call(data, rid)
        return {rid: normalised(engine.replies[rid]) for rid in ids}

    def check(self, case: Case) -> dict[int, Reply]:
        """
        The replies to the requests sent together equal those to the same
        requests sent one at a time.

        @return: the replies.
        """
        oneByOne = self.serve(case, together=False)
        replies = self.serve(case, together=True)
        self.assertEqual(replies, oneByOne)
        return replies

    def test_afterRename(self) -> None:
        """
        A STAT of the name a file was renamed to sees the WRITE made on the
        file's handle before it.
        """
        replies = self.check(afterRename)
        self.assertEqual(replies[10], ("status", wire.FX_OK))
        self.assertEqual(replies[11][:2], ("attrs", 6))

    def test_afterHardlink(self) -> None:
        """
        A STAT of a hard link sees the WRITE made on the file before it.
        """
        replies = self.check(afterHardlink)
        self.assertEqual(replies[11][:2], ("attrs", 6))

    def test_afterParentRename(self) -> None:
        """
        A STAT of the file under its folder's new name sees the WRITE made
        before it.
        """
        replies = self.check(afterParentRename)
        self.assertEqual(replies[11][:2], ("attrs", 6))

    def test_truncateOtherName(self) -> None:
        """
        A READ after a SETSTAT that truncated the file under another name
        finds the end of the file.
        """
        replies = self.check(truncateOtherName)
        self.assertEqual(replies[10], ("status", wire.FX_OK))
        self.assertEqual(replies[11], ("status", wire.FX_EOF))

    def test_makeDirectoryThenCreate(self) -> None:
        """
        A file is created in the folder made by the MKDIR before it.
        """
        replies = self.check(makeDirectoryThenCreate)
        self.assertEqual(replies[11], ("handle",))

    def test_removeThenRemoveDirectory(self) -> None:
        """
        RMDIR of a folder emptied by the REMOVE before it succeeds.
        """
        replies = self.check(removeThenRemoveDirectory)
        self.assertEqual(replies[11], ("status", wire.FX_OK))

    def test_createAfterOpenDirectory(self) -> None:
        """
        A file created after OPENDIR and before the first READDIR is listed
        (what was read ahead is not used), and listed once.
        """
        replies = self.check(createAfterOpenDirectory)
        self.assertEqual(replies[11], ("names", frozenset({b"one", b"new"})))
        self.assertEqual(replies[12], ("status", wire.FX_EOF))


class WorkersOrderingTests(OrderingMixin, SynchronousTestCase):
    engine = WorkersEngine


class PathOrderOrderingTests(OrderingMixin, SynchronousTestCase):
    engine = PathOrderEngine


class ThreadedOrderingTests(OrderingMixin, SynchronousTestCase):
    engine = ThreadedEngine


def _job(keys: tuple[bytes, ...], shared: bool, solo: tuple[bytes, ...] = ()) -> Job:
    return Job(keys, shared, lambda: None, (), solo=solo)


class KeyOrderTests(SynchronousTestCase):
    """
    The readers-writer order with handle keys, alone.
    """

    def test_writerAfterReaders(self) -> None:
        """
        Readers run together; a writer waits for them, and a reader made
        after the writer waits for it.
        """
        order = KeyOrder()
        r1, r2 = _job((b"G",), True), _job((b"G", b"h"), True)
        w = _job((b"G", b"h"), False)
        r3 = _job((b"G",), True)
        self.assertTrue(order.add(r1))
        self.assertTrue(order.add(r2))
        self.assertFalse(order.add(w))
        self.assertFalse(order.add(r3))
        self.assertFalse(order.sharedFree(b"G"))
        self.assertEqual(order.finish(r1), [])
        self.assertEqual(order.finish(r2), [w])
        self.assertEqual(order.finish(w), [r3])
        self.assertEqual(order.finish(r3), [])
        self.assertEqual(len(order), 0)

    def test_soloKey(self) -> None:
        """
        A call shared on the connection but exclusive on its handle (CLOSE,
        READDIR) runs beside other readers, not beside reads of its handle.
        """
        order = KeyOrder()
        read = _job((b"G", b"h"), True)
        other = _job((b"G", b"k"), True)
        close = _job((b"G", b"h"), True, solo=(b"h",))
        self.assertTrue(order.add(read))
        self.assertFalse(order.add(close))
        self.assertFalse(order.sharedFree(b"G", b"h"))
        self.assertEqual(order.finish(read), [close])
        self.assertTrue(order.add(other))
        self.assertFalse(order.sharedFree(b"h"))
        self.assertTrue(order.sharedFree(b"G", b"k"))
        self.assertEqual(order.finish(close), [])
        self.assertEqual(order.finish(other), [])
        self.assertEqual(len(order), 0)

    def test_mergedWritesHoldTheConnection(self) -> None:
        """
        Consecutive WRITEs of one file, waiting right behind each other on
        the connection and the handle, join one batch; a reader between
        them ends the batch.
        """
        from conchshare.sftp.ordering import Batch

        class All(Batch):
            def accepts(self, jobs: list[Job], job: Job) -> bool:
                return True

        batch = All()
        order = KeyOrder()
        blocker = _job((b"G",), False)
        writes = [Job((b"G", b"h"), False, lambda: None, (), batch) for _ in range(3)]
        stat = _job((b"G",), True)
        last = Job((b"G", b"h"), False, lambda: None, (), batch)
        order.add(blocker)
        for job in [*writes, stat, last]:
            self.assertFalse(order.add(job))
        [first] = order.finish(blocker)
        self.assertIs(first, writes[0])
        self.assertFalse(order.alone(first))
        self.assertEqual(order.joining(first), writes)
        self.assertTrue(order.alone(first))
        self.assertEqual(order.finish(first), [stat])
        self.assertEqual(order.finish(stat), [last])
        self.assertEqual(order.joining(last), [last])

    def test_waitingCounted(self) -> None:
        """
        L{KeyOrder.waiting} is the number of calls taken in and not yet
        started, whether they start when others finish or join a batch;
        when it is zero no call can join another (the engine does not ask
        L{KeyOrder.joining}).
        """

        class All(Batch):
            def accepts(self, jobs: list[Job], job: Job) -> bool:
                return True

        batch = All()
        order = KeyOrder()
        blocker = _job((b"G",), False)
        writes = [Job((b"G", b"h"), False, lambda: None, (), batch) for _ in range(3)]
        stat = _job((b"G",), True)
        self.assertEqual(order.waiting, 0)
        self.assertTrue(order.add(blocker))
        self.assertEqual(order.waiting, 0)
        for job in [*writes, stat]:
            order.add(job)
        self.assertEqual(order.waiting, 4)
        [first] = order.finish(blocker)
        self.assertEqual(order.waiting, 3)
        self.assertEqual(order.joining(first), writes)
        self.assertEqual(order.waiting, 1)
        self.assertEqual(order.finish(first), [stat])
        self.assertEqual(order.waiting, 0)
        self.assertEqual(order.finish(stat), [])
        self.assertEqual((order.waiting, len(order)), (0, 0))


class ConnectionsTests(SynchronousTestCase):
    """
    Each connection has its own order (L{ShareSFTPServer.forConnection}).
    """

    def test_otherConnectionNotHeld(self) -> None:
        """
        A writer held on one connection holds back that connection's later
        requests, not another connection's of the same avatar.
        """
        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        runner = LatchRunner()
        avatar = ShareSFTPServer(ShareSet.fromSpecs(["s"], cwd=base), engine=OrderedEngine(runner))
        one, other = avatar.forConnection(), avatar.forConnection()
        self.assertIs(one.filesystem, other.filesystem)
        held = Held(avatar.filesystem.makeDirectory, blocking=False)
        avatar.filesystem.makeDirectory = held  # type: ignore[method-assign]
        held.arm()
        made = one.makeDirectory(b"/s/d", {})
        sameConnection = one.getAttrs(b"/s/d", False)
        otherConnection = other.getAttrs(b"/s", False)
        self.assertNoResult(made)
        self.assertNoResult(sameConnection)
        self.successResultOf(maybeDeferred(lambda: otherConnection))
        runner.release()
        self.successResultOf(made)
        assert isinstance(sameConnection, Deferred)
        mode = self.successResultOf(sameConnection)["permissions"]
        assert isinstance(mode, int)
        self.assertTrue(stat.S_ISDIR(mode))

    def test_serviceSessionsHaveTheirOwnOrder(self) -> None:
        """
        L{ShareService} serves each SFTP session with its own view of the
        one avatar: the same filesystem and workers, its own order.
        """
        from twisted.internet.testing import MemoryReactorClock

        from conchshare.service import ShareService

        base = os.path.realpath(self.mktemp())
        os.makedirs(base)
        service = ShareService(
            "me@example.org", [base], reactor=MemoryReactorClock(), configFile="none", mode="raw"
        )
        service._avatar = service._makeAvatar()
        factory = service._protocolFactory()
        one, other = factory().avatar, factory().avatar
        self.assertIsNot(one, other)
        self.assertIs(one.filesystem, other.filesystem)
        self.assertIs(one.engine, other.engine)
        self.assertNotEqual(one._connection.key, other._connection.key)


class CloseTests(SynchronousTestCase):
    """
    CLOSE is ordered by its handle alone.
    """

    def setUp(self) -> None:
        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "s"))
        self.runner = LatchRunner()
        self.avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["s"], cwd=base), engine=OrderedEngine(self.runner)
        )

    def test_closeNotHeldByWriter(self) -> None:
        """
        A CLOSE made after a writer on another name runs at once; a
        request on the closed handle's file made after the CLOSE (a READ)
        waits for the CLOSE, and fails.
        """
        d = self.avatar.openFile(b"/s/f", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        f = self.successResultOf(d)
        held = Held(self.avatar.filesystem.makeDirectory, blocking=False)
        self.avatar.filesystem.makeDirectory = held  # type: ignore[method-assign]
        held.arm()
        made = self.avatar.makeDirectory(b"/s/d", {})
        closed = f.close()
        self.successResultOf(closed)
        self.assertNoResult(made)
        self.runner.release()
        self.successResultOf(made)

    def test_closeAfterReads(self) -> None:
        """
        A CLOSE waits for the READs of its file made before it, and the
        READs made after it fail.
        """
        d = self.avatar.openFile(b"/s/f", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        f = self.successResultOf(d)
        self.successResultOf(f.writeChunk(0, b"data"))
        held = Held(f.confined.read, blocking=False)
        f.confined.read = held  # type: ignore[method-assign]
        held.arm()
        read = f.readChunk(0, 10)
        closed = f.close()
        after = f.readChunk(0, 10)
        self.assertNoResult(read)
        self.assertNoResult(closed)
        self.assertNoResult(after)
        self.runner.release()
        self.assertEqual(self.successResultOf(read), b"data")
        self.successResultOf(closed)
        self.failureResultOf(after, OSError)

    def test_removeWaitsForClose(self) -> None:
        """
        A REMOVE made after a CLOSE waits for it (removing the name of a
        file still open renames it on NFS or FUSE), and a CLOSE made after
        a REMOVE waits for the REMOVE.
        """
        d = self.avatar.openFile(b"/s/f", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        f = self.successResultOf(d)
        d = self.avatar.openFile(b"/s/g", FXF_READ | FXF_WRITE | FXF_CREAT, {})
        g = self.successResultOf(d)
        held = Held(f.confined.close, blocking=False)
        f.confined.close = held  # type: ignore[method-assign]
        held.arm()
        closed = f.close()
        removed = self.avatar.removeFile(b"/s/f")
        closedAfter = g.close()
        self.assertNoResult(closed)
        self.assertNoResult(removed)
        self.assertNoResult(closedAfter)
        self.runner.release()
        self.successResultOf(closed)
        self.successResultOf(removed)
        self.successResultOf(closedAfter)


class PurityTests(SynchronousTestCase):
    def test_importsNoEngine(self) -> None:
        """
        The ordering module, the execution seam's pure part, imports no
        engine and no Twisted (a fresh interpreter loads neither).
        """
        code = (
            "import sys, conchshare.sftp.ordering\n"
            "print(sorted(m for m in sys.modules if m.startswith("
            "('twisted', 'conchshare.sftp.workers', 'conchshare.sftp.engine',"
            " 'conchshare.sftp.threaded', 'conchshare.fs'))))"
        )
        root = CHECKOUT
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONPATH": root},
        )
        self.assertEqual(result.stdout.strip(), b"[]")
