"""
The call path of one SFTP request through conchshare, as issue 13 counts
it: how many times control moves from one conchshare module to another
between the protocol's C{dataReceived} and the reply's C{transport.write}.

    python bench/callpath.py [--repeat N] [--compact]
    PYTHONPATH=/path/to/other/tree python bench/callpath.py

The second form measures another checkout (C{git worktree add} one at the
commit to compare with): everything conchshare-specific that differs
between trees is in the adaptor section below.  C{tests/unit/test_callpath.py}
runs the same harness and holds the counts to half of those measured at
the commit issue 13 started from.

What is measured.  A real L{SFTPServerProtocol} serves one share (a
temporary folder) with the real engine (L{Workers}: threads, and io_uring
where usable) on a C{StringTransport}; its reactor is L{DeliveryReactor},
which delivers the engine's results only when the harness iterates it.
After INIT, OPEN and one request of the same kind to warm up, one WRITE
(32 KiB) or one STAT is fed to C{dataReceived}, and every call and return
event of every thread is seen through C{sys.setprofile} and
C{threading.setprofile} until the reply reaches C{transport.write}.

What is counted.  After each event, the I{place} is the module of the
innermost conchshare frame on that thread's stack (calls and returns
through Twisted, say a Deferred's callbacks, do not move it; an event with
no conchshare frame on the stack is left out).  The count is the number of
times the place changes in the sequence of places.  A call into another
module and its return are two changes: a bounce.

Threads.  The thread that makes the system call (a worker) runs while the
reactor thread is still in C{dataReceived}; their events interleave
differently from run to run, so the sequence is made of whole segments,
each one thread's events in their own order, put in the order the request
passed between them: the reactor thread's feed (C{dataReceived}, until it
returns), then each worker's events (from when the feed began until it
hands its result to the reactor, C{callFromThread}), then the reactor
thread's delivery.  A worker is held when it enters the file system layer
until the feed has returned, so that the reactor never finds the result
already there (the engine waits briefly for results that are): the path
is the same whatever the machine's load (without the hold, the reactor
thread found a STAT's result already there in 196 of 200 runs).  A STAT
is answered from the kernel's caches on the reactor thread only while
the share's folder was checked lately: the check's interval is set for
each path (L{PATHS}) so that the path taken is the one named, and each
measurement checks where the reply came from (L{PathError} otherwise).

System calls are shown, not counted: C{os} functions called from
conchshare code, and the io_uring submission.
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import shutil
import struct
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

# -- the adaptor: what differs between the trees measured -------------------

#: Modules of the file system layer: a worker entering one of them is about
#: to make its system call (and the engine holds none of its locks then).
FS_MODULES = ("conchshare.confined", "conchshare.fs")


def makeAvatar(base: str, reactor: Any, ring: Any) -> Any:
    """
    The SFTP avatar serving the share C{s} (the folder C{base}/s), its
    calls run by its own L{Workers} (8 threads) on C{reactor}, which make
    the calls they can in C{ring} (L{None}: threads only).
    """
    import inspect

    from conchshare.sftp.avatar import ShareSFTPServer
    from conchshare.sftp.workers import Workers
    from conchshare.shares import ShareSet

    shares = ShareSet.fromSpecs(["s"], cwd=base)
    if "engine" in inspect.signature(ShareSFTPServer).parameters:
        build: Any = ShareSFTPServer
        return build(shares, engine=Workers(reactor, 8, ring=ring))
    # Before the engine was an argument; ringFor() gives a ring only to a
    # reactor that polls descriptors.
    avatar: Any = ShareSFTPServer(shares, reactor=reactor, ring=False)
    if ring is not None:
        avatar.workers.ring = ring
    return avatar


def stopEngine(avatar: Any) -> None:
    """
    Let the avatar's worker threads end.
    """
    engine = getattr(avatar, "engine", None)
    (engine if engine is not None else avatar.workers).stop()


def _module(name: str) -> Any:
    """
    The module C{name} of the conchshare tree measured, or L{None}: not
    there (nor one of another tree that an editable install would find).
    """
    import importlib

    import conchshare

    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    tree = os.path.dirname(os.path.abspath(conchshare.__file__))
    if not os.path.abspath(module.__file__ or "").startswith(tree + os.sep):
        return None
    return module


def watchRing(reactor: Any, ring: Any) -> Callable[[], None]:
    """
    Have C{reactor} deliver C{ring}'s completions, as the reactor's own
    ring would be (L{conchshare.sftp.ringwatch} where there is one).

    @return: what undoes it.
    """
    ringwatch = _module("conchshare.sftp.ringwatch")
    if ringwatch is None:
        reactor.addReader(ring)
        return lambda: reactor.removeReader(ring)
    if hasattr(ringwatch, "watch"):
        stop: Callable[[], None] = ringwatch.watch(reactor, ring)
        return stop
    reader = ringwatch.RingReader(reactor, ring)
    ring.busy = reader.busy
    return lambda: reactor.removeReader(reader)


#: Where the io_uring module may be, first found first.
URING_MODULES = ("conchshare.fs.ring", "conchshare.uring")


def _uring() -> Any:
    for name in URING_MODULES:
        module = _module(name)
        if module is not None:
            return module
    raise RuntimeError(f"None of {URING_MODULES} is in this tree: update the adaptor")


def newRing() -> Any:
    """
    A new io_uring, or L{None} where io_uring is not usable.
    """
    uring = _uring()
    if not uring.usable():
        return None
    return uring.Ring()


def systemEntries() -> dict[CodeType, str]:
    """
    Functions that enter the kernel through C{ctypes} (which the profiler
    does not see), by the name they are shown with.
    """
    return {_uring().Ring._submit.__code__: "io_uring_enter"}


def makeProtocol(avatar: Any) -> Any:
    """
    The SFTP server protocol for one connection to C{avatar}.
    """
    from conchshare.sftp.protocol import SFTPServerProtocol

    return SFTPServerProtocol(avatar)


@contextmanager
def rootRecheck(seconds: float) -> Iterator[None]:
    """
    Set how long a share's folder counts as checked lately (0: never, so
    every call checks it and none is answered from the kernel's caches on
    the reactor thread; an hour: always, however slow the machine).
    """
    import conchshare.sftp.avatar  # noqa: F401  (and the file system layer below it)

    modules: list[Any] = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("conchshare.") and hasattr(module, "ROOT_RECHECK")
    ]
    if not modules:
        raise RuntimeError("No conchshare module defines ROOT_RECHECK: update the adaptor")
    saved = [module.ROOT_RECHECK for module in modules]
    for module in modules:
        module.ROOT_RECHECK = seconds
    try:
        yield
    finally:
        for module, value in zip(modules, saved, strict=True):
            module.ROOT_RECHECK = value


# -- SFTP packets ----------------------------------------------------------

FXP_INIT, FXP_OPEN, FXP_CLOSE, FXP_WRITE, FXP_STAT = 1, 3, 4, 6, 17
FXP_STATUS, FXP_HANDLE, FXP_ATTRS = 101, 102, 105
FXF_WRITE, FXF_CREAT, FXF_TRUNC = 0x02, 0x08, 0x10

#: The WRITE measured: as large as OpenSSH's sftp sends.
WRITE_SIZE = 32 * 1024


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def init() -> bytes:
    return _packet(FXP_INIT, struct.pack(">I", 3))


def openForWrite(requestId: int, path: bytes) -> bytes:
    flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
    return _packet(
        FXP_OPEN, struct.pack(">I", requestId) + _string(path) + struct.pack(">II", flags, 0)
    )


def write(requestId: int, handle: bytes, offset: int, data: bytes) -> bytes:
    body = (
        struct.pack(">I", requestId) + _string(handle) + struct.pack(">Q", offset) + _string(data)
    )
    return _packet(FXP_WRITE, body)


def stat(requestId: int, path: bytes) -> bytes:
    return _packet(FXP_STAT, struct.pack(">I", requestId) + _string(path))


def close(requestId: int, handle: bytes) -> bytes:
    return _packet(FXP_CLOSE, struct.pack(">I", requestId) + _string(handle))


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """
    The replies in C{data}: (type, request id, the rest).
    """
    found = []
    while len(data) >= 9:
        length, kind, requestId = struct.unpack_from(">IBI", data)
        found.append((kind, requestId, data[9 : 4 + length]))
        data = data[4 + length :]
    return found


# -- the reactor -----------------------------------------------------------


@implementer(IReactorFromThreads)
class DeliveryReactor(MemoryReactorClock):
    """
    A memory reactor that also takes calls from threads (and, like a real
    reactor, is woken through a pipe by them) and polls the readers added
    to it, but only when L{iterate} is called: the harness decides when
    results are delivered.
    """

    def __init__(self) -> None:
        super().__init__()
        self._calls: deque[tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]] = deque()
        self._callsLock = threading.Lock()
        self._wakeIn, self._wakeOut = os.pipe()
        os.set_blocking(self._wakeIn, False)

    def callFromThread(self, callable: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        with self._callsLock:
            self._calls.append((callable, args, kwargs))
        os.write(self._wakeOut, b"x")

    def iterate(self, timeout: float = 10.0) -> None:
        """
        Wait up to C{timeout} seconds for a call from a thread or a readable
        reader, then run what is there.

        @raise TimeoutError: nothing came.
        """
        readers = list(self.getReaders())
        ready, _, _ = select.select([self._wakeIn, *readers], [], [], timeout)
        if not ready:
            raise TimeoutError(f"Nothing to deliver after {timeout} s")
        for reader in ready:
            if reader is self._wakeIn:
                try:
                    os.read(self._wakeIn, 4096)
                except BlockingIOError:
                    pass
            else:
                reader.doRead()
        with self._callsLock:
            calls, self._calls = self._calls, deque()
        for callable, args, kwargs in calls:
            callable(*args, **kwargs)

    def closePipe(self) -> None:
        os.close(self._wakeIn)
        os.close(self._wakeOut)


# -- the recorder ----------------------------------------------------------

#: os functions that make no system call.
_NOT_SYSTEM = frozenset({"fspath", "strerror", "major", "minor", "makedev"})


@dataclass
class _Thread:
    # One thread's events in a measurement: places (module names) and
    # system calls ("!name"), each place only when it changes.
    entries: list[str] = field(default_factory=list)
    place: str | None = None
    first: int = 0  # sequence number of its first entry
    handedOver: bool = False


class Recorder:
    """
    Sees every call and return of every thread (installed before the
    engine starts its threads) and, while measuring, records the places
    (see the module docstring).
    """

    def __init__(self, reactor: DeliveryReactor, transport: StringTransport) -> None:
        self._modules: dict[CodeType, str | None] = {}
        self._main = threading.get_ident()
        self._stops = {type(transport).write.__code__, type(transport).writeSequence.__code__}
        self._handOver = type(reactor).callFromThread.__code__
        self._system = systemEntries()
        self._sequence = itertools.count()
        self._fed = threading.Event()
        self.active = False
        self.feeding = False
        self.threads: dict[int, _Thread] = {}
        self.feedEnd = 0
        self.stopped = False

    def install(self) -> None:
        threading.setprofile(self._event)
        sys.setprofile(self._event)

    def uninstall(self) -> None:
        sys.setprofile(None)
        threading.setprofile(None)
        self._fed.set()

    def start(self) -> None:
        """
        Begin measuring: the reactor thread is about to feed the request.
        """
        self.threads = {self._main: _Thread()}
        self.feedEnd = 0
        self.stopped = False
        self._fed.clear()
        self.feeding = True
        self.active = True

    def fed(self) -> None:
        """
        The feed returned: what the reactor thread does next is delivery;
        workers held at the file system layer go on.
        """
        self.feeding = False
        self.feedEnd = len(self.threads[self._main].entries)
        self._fed.set()

    def finish(self) -> None:
        self.active = False
        self.feeding = False
        self._fed.set()

    def _module(self, frame: FrameType) -> str | None:
        code = frame.f_code
        try:
            return self._modules[code]
        except KeyError:
            pass
        name = frame.f_globals.get("__name__", "")
        module = name if isinstance(name, str) and name.startswith("conchshare.") else None
        self._modules[code] = module
        return module

    def _place(self, frame: FrameType | None) -> str | None:
        while frame is not None:
            module = self._module(frame)
            if module is not None:
                return module
            frame = frame.f_back
        return None

    def _event(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.active:
            return
        ident = threading.get_ident()
        thread = self.threads.get(ident)
        if thread is None:
            thread = self.threads[ident] = _Thread()
        code = frame.f_code
        if ident == self._main:
            if event == "call" and code in self._stops:
                # The reply reached the transport.
                self.stopped = True
                self.finish()
                return
        elif thread.handedOver:
            return
        elif code is self._handOver:
            # A worker hands its result to the reactor thread: the rest of
            # this worker's events are not the request's (nor are those in
            # the hand-over, or on the way back from an earlier one).
            if event == "call":
                thread.handedOver = True
            return
        if event == "c_call":
            if getattr(arg, "__module__", None) == "posix" and arg.__name__ not in _NOT_SYSTEM:
                place = self._place(frame)
                if place is not None:
                    self._enter(thread, place)
                    self._mark(thread, "os." + arg.__name__)
            return
        if event == "call":
            if not thread.entries:
                # Where this thread was when the request reached it.
                self._enterAt(thread, frame.f_back)
            module = self._module(frame)
            if (
                self.feeding
                and module is not None
                and module.startswith(FS_MODULES)
                and ident != self._main
            ):
                # Held until the feed returns (see the module docstring).
                self._fed.wait(10.0)
            self._enterAt(thread, frame)
            if code in self._system:
                self._mark(thread, self._system[code])
        elif event == "return":
            if not thread.entries:
                self._enterAt(thread, frame)
            self._enterAt(thread, frame.f_back)

    def _enterAt(self, thread: _Thread, frame: FrameType | None) -> None:
        place = self._place(frame)
        if place is not None:
            self._enter(thread, place)

    def _enter(self, thread: _Thread, place: str) -> None:
        if place != thread.place:
            if not thread.entries:
                thread.first = next(self._sequence)
            thread.place = place
            thread.entries.append(place)

    def _mark(self, thread: _Thread, name: str) -> None:
        thread.entries.append("!" + name)

    def segments(self) -> list[tuple[str, list[str]]]:
        """
        The measured request's places, thread by thread in the order the
        request passed between them (see the module docstring).
        """
        main = self.threads[self._main].entries
        found = [("reactor", main[: self.feedEnd])]
        others = sorted(
            (thread for ident, thread in self.threads.items() if ident != self._main),
            key=lambda thread: thread.first,
        )
        for thread in others:
            if thread.entries:
                found.append(("worker", thread.entries))
        if main[self.feedEnd :]:
            found.append(("reactor", main[self.feedEnd :]))
        return [(who, entries) for who, entries in found if entries]


# -- one measurement -------------------------------------------------------


@dataclass(frozen=True)
class CallPath:
    """
    What one request's path was.

    @ivar name: which path (see L{PATHS}).
    @ivar changes: how many times the place changed.
    @ivar segments: each thread's part: who ran it, and its places
        (module names without C{conchshare.}) and system calls (C{!name}).
    """

    name: str
    changes: int
    segments: tuple[tuple[str, tuple[str, ...]], ...]

    def modules(self, *, compact: bool = False) -> str:
        """
        The modules crossed, one line: C{>} between places, system calls in
        brackets, C{|} where the request moves to another thread.

        @param compact: write a back and forth repeated, such as C{core >
            wire > core > wire > core}, as C{core > (wire > core) x2}.
        """
        parts = []
        for who, entries in self.segments:
            text = [
                f"[{entry[1:]}]" if entry.startswith("!") else entry.removeprefix("conchshare.")
                for entry in entries
            ]
            if compact:
                text = _folded(text)
            parts.append(f"{who}: " + " > ".join(text))
        return " | ".join(parts)


def _folded(names: list[str]) -> list[str]:
    # Each run of the same two names repeated (a, b, a, b) as one "(a > b) xN".
    folded = []
    index = 0
    while index < len(names):
        pair = names[index : index + 2]
        times = 1
        while len(pair) == 2 and names[index + 2 * times : index + 2 * times + 2] == pair:
            times += 1
        if times > 1:
            folded.append(f"({pair[0]} > {pair[1]}) x{times}")
            index += 2 * times
        else:
            folded.append(names[index])
            index += 1
    return folded


def _changes(segments: list[tuple[str, list[str]]]) -> int:
    places = [entry for _, entries in segments for entry in entries if not entry.startswith("!")]
    return sum(1 for before, after in itertools.pairwise(places) if before != after)


class PathError(Exception):
    """
    The request did not take the path it was measured for.
    """


@dataclass(frozen=True)
class Path:
    """
    A path to measure: the request, the engine, how long a share's folder
    counts as checked lately, and where the reply must come from.
    """

    request: str  # "WRITE" or "STAT"
    ring: bool
    recheck: float
    where: str  # "worker", "ring" or "reactor"


#: The paths measured, by name.
PATHS: dict[str, Path] = {
    "WRITE in a worker thread": Path("WRITE", False, 3600.0, "worker"),
    "WRITE through io_uring": Path("WRITE", True, 3600.0, "ring"),
    "STAT from the kernel's caches on the reactor thread": Path("STAT", False, 3600.0, "reactor"),
    "STAT in a worker thread": Path("STAT", False, 0.0, "worker"),
}


class _Connection:
    # One SFTP connection to a fresh avatar, fed by hand.

    def __init__(self, base: str, ring: Any) -> None:
        self.reactor = DeliveryReactor()
        self.transport = StringTransport()
        self.recorder = Recorder(self.reactor, self.transport)
        self.recorder.install()  # before the engine starts a thread
        self.unwatch = None
        try:
            if ring is not None:
                self.unwatch = watchRing(self.reactor, ring)
            self.avatar = makeAvatar(base, self.reactor, ring)
            self.protocol = makeProtocol(self.avatar)
            self.protocol.makeConnection(self.transport)
        except BaseException:
            self._release()
            raise
        self.nextId = 1

    def request(self, packet: bytes) -> tuple[int, int, bytes]:
        # Feed one request and deliver until its reply is written.
        self.transport.clear()
        self.protocol.dataReceived(packet)
        while not self.transport.value():
            self.reactor.iterate()
        (reply,) = replies(self.transport.value())
        return reply

    def measure(self, packet: bytes) -> tuple[list[tuple[str, list[str]]], bool]:
        # Feed one request while recording; deliver until its reply is
        # written.  Also returns whether the reply was written in the feed.
        self.transport.clear()
        recorder = self.recorder
        recorder.start()
        try:
            self.protocol.dataReceived(packet)
        finally:
            recorder.fed()
        inFeed = recorder.stopped
        try:
            while not self.transport.value():
                self.reactor.iterate()
        finally:
            recorder.finish()
        if not recorder.stopped:
            raise PathError("The reply was not written through transport.write")
        return recorder.segments(), inFeed

    def close(self, handle: bytes | None) -> None:
        try:
            if handle is not None:
                self.request(close(self.nextId, handle))
            self.protocol.connectionLost(None)
            stopEngine(self.avatar)
        finally:
            self._release()

    def _release(self) -> None:
        self.recorder.uninstall()
        self.reactor.closePipe()
        if self.unwatch is not None:
            self.unwatch()


def measure(name: str) -> CallPath:
    """
    Measure the path called C{name} (a key of L{PATHS}) once.

    @raise PathError: the request took another path (io_uring is not
        usable here, or the share's filesystem is not one whose caches are
        read on the reactor thread).
    """
    path = PATHS[name]
    ring = None
    if path.ring:
        ring = newRing()
        if ring is None:
            raise PathError("io_uring is not usable here")
    base = tempfile.mkdtemp(prefix="callpath-")
    try:
        os.mkdir(os.path.join(base, "s"))
        with rootRecheck(path.recheck):
            connection = _Connection(base, ring)
            handle = None
            try:
                kind, _, _ = connection.request(init())
                kind, _, body = connection.request(openForWrite(1, b"/s/f"))
                if kind != FXP_HANDLE:
                    raise PathError(f"OPEN answered type {kind}")
                handle = body[4:]
                if path.request == "WRITE":
                    data = b"w" * WRITE_SIZE
                    warmUp = write(2, handle, 0, data)
                    packet = write(3, handle, WRITE_SIZE, data)
                    expected = (FXP_STATUS, 3, b"\0\0\0\0")  # FX_OK
                else:
                    warmUp = stat(2, b"/s/f")
                    packet = stat(3, b"/s/f")
                    expected = (FXP_ATTRS, 3, b"")
                if connection.request(warmUp)[0] != expected[0]:
                    raise PathError(f"{path.request} failed")
                segments, inFeed = connection.measure(packet)
                ((kind, requestId, body),) = replies(connection.transport.value())
                if (kind, requestId) != expected[:2] or not body.startswith(expected[2]):
                    raise PathError(f"{path.request} answered type {kind}: {body[:40]!r}")
                connection.nextId = 4
            finally:
                connection.close(handle)
    finally:
        if ring is not None:
            ring.close()
        shutil.rmtree(base, ignore_errors=True)
    workers = [entries for who, entries in segments if who == "worker"]
    where = "reactor" if inFeed else "worker" if workers else "ring"
    if where != path.where:
        raise PathError(f"{name}: the reply came from the {where}, not the {path.where}")
    return CallPath(
        name, _changes(segments), tuple((who, tuple(entries)) for who, entries in segments)
    )


def measureAll() -> dict[str, CallPath | PathError]:
    """
    Measure every path of L{PATHS}; a path that cannot be taken here gives
    its L{PathError}.
    """
    found: dict[str, CallPath | PathError] = {}
    for name in PATHS:
        try:
            found[name] = measure(name)
        except PathError as e:
            found[name] = e
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="measure N times (all must agree)")
    parser.add_argument(
        "--compact", action="store_true", help="fold modules crossed back and forth"
    )
    options = parser.parse_args()
    import conchshare

    print(f"conchshare from {os.path.dirname(os.path.dirname(conchshare.__file__))}")
    runs = [measureAll() for _ in range(options.repeat)]
    for name in PATHS:
        results = [run[name] for run in runs]
        first = results[0]
        if isinstance(first, PathError):
            print(f"{name}: not measured ({first})")
            continue
        counts = sorted({r.changes for r in results if isinstance(r, CallPath)})
        same = all(isinstance(r, CallPath) and r == first for r in results)
        print(f"{name}: {first.changes} module changes" + ("" if same else f" (varied: {counts})"))
        print(f"    {first.modules(compact=options.compact)}")


if __name__ == "__main__":
    main()
