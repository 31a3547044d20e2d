"""
The engine of C{conchshare sftp-server}: SFTP on two pipes (stdin, stdout)
served by a few threads, without a reactor.

Why not the reactor: on a pipe to one client, the reactor only relays.
Reading a request there and running its filesystem call in a worker costs
two thread wake-ups per request on top of the one the request's arrival
costs (reactor to worker, worker back to reactor): most of the time of an
sshfs metadata round trip (measured: bench/README.md).

How: one lock guards the protocol core (L{SFTPServerCore}) and the
avatar's ordering state.  A serving thread that finds no call ready and no
one reading takes its turn at reading stdin; it feeds what it read to the
core, and then runs, itself, the call the request asked for: the thread
the request woke answers it, one wake-up in all, as OpenSSH's sftp-server
does.  Before it blocks in read, the reading thread polls stdin for a
moment (L{SPIN}): a client waiting for each reply sends the next request
within tens of microseconds, and being woken from a blocking read costs
more than that on a virtual machine.  Other threads are woken only when
there is more to do than that: other calls ready (run alongside), or a
call running longer than L{SLOW} (a watchdog thread then wakes one to read
on).  So pipelined requests never wait for each other's disk I/O,
beyond L{SLOW}: a slow call holds one thread, and the others go on
serving.  Calls still apply in the connection's order (its L{engine},
see L{conchshare.sftp.ordering}), requests in flight are bounded (past the bound nobody reads: backpressure), and a
full stdout blocks the writer, under the lock, until the client reads.

The engine (L{ThreadedServer.engine}, an
L{conchshare.sftp.engine.OrderedEngine}) keeps the connection's order under
that lock and starts each call, once its keys allow, by queueing it for a
serving thread (L{ThreadedServer.start}).
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.sftp.core import MAX_IN_FLIGHT, MAX_OPEN_HANDLES, SFTPServerCore
from conchshare.sftp.engine import OrderedEngine
from conchshare.spin import worthSpinning
from conchshare.switches import switchedOn

__all__ = ["READ_SIZE", "ThreadedServer"]

#: Bytes asked of stdin per read: a whole large WRITE at once.
READ_SIZE = 1024 * 1024

#: A call running this long (seconds) gets another thread reading on.
#: Also how often the watchdog thread wakes while calls run: each wake-up
#: takes a CPU from the client's side of a round trip (a shorter period
#: made an sshfs untar slower: bench/README.md).
SLOW = 0.01

#: The watchdog sleeps for good after this long without a call (seconds).
_WATCH_IDLE = 0.5

#: How long (seconds) the reading thread watches stdin for the next request
#: before it blocks in read: see L{ThreadedServer}.
SPIN = 0.0001

_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "Deferred[Any]"]


class ThreadedServer:
    """
    SFTP on a pair of file descriptors, served by L{threads} threads.

    Build it, build the avatar with its L{engine} (for example
    C{ShareSFTPServer(shares, engine=server.engine)}), then L{serve} it.

    @ivar engine: the L{conchshare.sftp.engine.ICallEngine} to give the
        avatar: its calls run in the serving threads, and the calls that
        never wait in the thread that read the request.
    """

    _log = Logger()

    def __init__(
        self,
        inputFd: int = 0,
        outputFd: int = 1,
        *,
        threads: int = 4,
        maxInFlight: int = MAX_IN_FLIGHT,
        maxOpenHandles: int = MAX_OPEN_HANDLES,
        logRequests: bool = False,
        spin: float | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """
        @param inputFd: where requests come from (blocking reads).
        @param outputFd: where replies go (blocking writes).
        @param threads: serving threads (at least 2: one may read while
            another runs a call).
        @param maxInFlight: requests in flight before reading pauses.
        @param maxOpenHandles: open handles allowed.
        @param logRequests: log every request at debug level.
        @param spin: how long (seconds) to poll stdin for the next request
            before blocking in read (0: never).  A client that waits for each
            reply (sshfs creating a file: LOOKUP, OPEN, FSTAT, WRITE,
            SETSTAT, ...) sends its next request some tens of microseconds
            later; a thread that blocked meanwhile is woken by the kernel,
            which on a virtual machine costs a wake-up of an idle virtual CPU
            and the reload of the interpreter's caches (measured:
            bench/README.md).  The cost is at most C{spin} of CPU time per
            request.  Default: L{SPIN} where the process may run on two CPUs
            or more, 0 on one (see L{conchshare.spin.worthSpinning}) or with the switch
            C{CONCHSHARE_THREADED_WAIT=0}.
        @param clock: seconds, monotonic: how long calls run, and how long
            the reading thread polls.
        """
        self._clock = clock
        self._input = inputFd
        self._output = outputFd
        self._threads = max(2, threads)
        self._maxInFlight = maxInFlight
        self._maxOpenHandles = maxOpenHandles
        self._logRequests = logRequests
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._watchWakeup = threading.Condition(self._lock)
        self._watching = False  # the watchdog polls (else it sleeps)
        self._running: dict[int, float] = {}  # calls running: their start
        self._calls = 0
        self._lastStart = 0.0
        self._poller = select.poll()  # used by the reading thread
        self._poller.register(inputFd, select.POLLIN)
        self._ready: deque[_Call] = deque()
        self._idle = 0  # threads waiting for something to do
        self._reading = False
        self._paused = False
        self._inputDone = False  # end of input, or the core gave up on it
        self._lossPending = False
        self._lost = False  # the core was told the connection is lost
        self._outputGone = False
        self._finished = threading.Event()
        if spin is None:
            # Off (CONCHSHARE_THREADED_WAIT=0): block in read at once.
            spin = SPIN if worthSpinning() and switchedOn("CONCHSHARE_THREADED_WAIT") else 0.0
        self._spin = spin
        # Where stdin is read: WRITE data is kept there (see _freshBuffer).
        self._buffer = bytearray(READ_SIZE)
        self.core: SFTPServerCore | None = None
        self.engine = OrderedEngine(self.start, inlineReads=True)

    # -- how the engine starts a call -------------------------------------

    def start(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Queue a blocking call for a serving thread (L{engine} calls it with
        the lock held, from the core, once the call's keys allow).

        @return: a Deferred fired, lock held, with the call's result.
        """
        d: Deferred[Any] = Deferred()
        self._ready.append((function, args, kwargs, d))
        return d

    # -- serving ----------------------------------------------------------

    def serve(self, avatar: object) -> None:
        """
        Serve C{avatar} until the input ends (or the core drops the client)
        and every handle is closed.  Returns then; interruptible by signals
        (the serving threads are daemons).
        """
        self.core = SFTPServerCore(
            avatar,
            self._write,
            writeSequence=self._writeSequence,
            writesBuffers=True,
            pauseReading=self._pause,
            resumeReading=self._resume,
            disconnect=self._disconnect,
            maxInFlight=self._maxInFlight,
            maxOpenHandles=self._maxOpenHandles,
            logRequests=self._logRequests,
        )
        for number in range(self._threads):
            threading.Thread(
                target=self._serve, name=f"conchshare-sftp-{number}", daemon=True
            ).start()
        threading.Thread(target=self._watch, name="conchshare-sftp-watchdog", daemon=True).start()
        while not self._finished.wait(1.0):
            pass

    def _serve(self) -> None:
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if self._ready:
                    self._runOne()
                elif self._lossPending:
                    self._lossPending = False
                    self._lost = True
                    assert self.core is not None
                    self.core.connectionLost().addCallback(self._done)
                elif self._finished.is_set():
                    return
                elif self._mayRead():
                    self._readOnce()
                else:
                    self._idle += 1
                    self._wakeup.wait()
                    self._idle -= 1
        except BaseException:
            self._log.failure("An SFTP serving thread failed")
            self._done(None)
        finally:
            lock.release()

    def _watch(self) -> None:
        # While calls run, every SLOW seconds: if one has run that long and
        # nobody reads, wake a thread to read on.  Asleep after a quiet
        # _WATCH_IDLE (the next call wakes it).
        with self._lock:
            clock = self._clock
            while not self._finished.is_set():
                now = clock()
                if not self._running and now - self._lastStart > _WATCH_IDLE:
                    self._watching = False
                    self._watchWakeup.wait()
                    self._watching = True
                    continue
                self._watchWakeup.wait(SLOW)
                if not (self._idle and self._mayRead()):
                    continue
                now = clock()
                if any(now - started >= SLOW for started in self._running.values()):
                    self._wakeup.notify()

    def _mayRead(self) -> bool:
        return not (self._reading or self._paused or self._inputDone)

    def _runOne(self) -> None:
        # Lock held.  Run the first ready call here; first wake whom it
        # takes to read on and to run the other ready calls meanwhile.
        function, args, kwargs, d = self._ready.popleft()
        # Other calls ready: run alongside.  Requests still to read wait
        # for this call (or for SLOW): waking a thread costs more than most
        # calls take, and two threads taking turns at the interpreter lock
        # made even uploads slower (bench/README.md).
        wanted = len(self._ready)
        if wanted and self._idle:
            self._wakeup.notify(min(wanted, self._idle))
        self._calls += 1
        call = self._calls
        self._running[call] = self._lastStart = self._clock()
        if not self._watching:
            self._watchWakeup.notify()
        self._lock.release()
        try:
            try:
                result = function(*args, **kwargs)
            except BaseException as e:
                failure = Failure(e)
                ok = False
            else:
                ok = True
        finally:
            self._lock.acquire()
            del self._running[call]
        if ok:
            d.callback(result)
        else:
            d.errback(failure)

    def _readOnce(self) -> None:
        # Lock held.  Read stdin without it, then feed the core.
        core = self.core
        assert core is not None
        self._reading = True
        room = core.receiveBuffer()
        self._freshBuffer()
        direct = 0
        self._lock.release()
        try:
            if self._spin:
                self._await()
            try:
                if room is None:
                    count = os.readv(self._input, (self._buffer,))
                else:
                    with room:
                        direct = len(room)
                        count = os.readv(self._input, (room, self._buffer))
                    direct = min(direct, count)
            except OSError:
                count = 0
        finally:
            self._lock.acquire()
            self._reading = False
        if self._inputDone:
            return  # the core gave up on the client meanwhile
        if not count:
            self._inputDone = True
            core.whenIdle().addCallback(lambda _: self._lose())
            return
        if direct:
            core.receivedInto(direct)
        if count > direct:
            # Given away: the core keeps the data of WRITEs where it is,
            # and the next read goes to another buffer while it does.
            with memoryview(self._buffer) as view:
                core.dataReceived(view[: count - direct], keepable=True)

    def _freshBuffer(self) -> None:
        # The core keeps WRITE data in the read buffer until written (no
        # copy): a buffer still viewed is left to it, and reading goes on
        # in a new one.  (A view pins a bytearray's size: growing it by a
        # byte fails then.)
        buffer = self._buffer
        try:
            buffer.append(0)
        except BufferError:
            self._buffer = bytearray(READ_SIZE)
        else:
            del buffer[-1]

    def _await(self) -> None:
        # Lock not held.  Poll stdin for up to self._spin seconds (see
        # __init__); then the caller blocks in read if nothing came.
        poll = self._poller.poll
        clock = self._clock
        deadline = clock() + self._spin
        while not poll(0) and clock() < deadline:
            pass

    # -- the core's transport ---------------------------------------------

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        # Lock held: replies go out whole, in order; a full pipe blocks
        # every thread here (backpressure).
        self._writeSequence([data])

    def _writeSequence(self, pieces: list[Any]) -> None:
        if self._outputGone:
            return
        views = [memoryview(piece) for piece in pieces if len(piece)]
        try:
            while views:
                written = os.writev(self._output, views[:_IOV_MAX])
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError:
            # The client is gone (EPIPE): nothing more to say to it.
            self._outputGone = True
            self._disconnect()

    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        if self._idle:
            self._wakeup.notify()

    def _disconnect(self) -> None:
        # The core drops the client (a protocol error), or stdout is gone:
        # read no more; close the handles once out of the core's call.
        self._inputDone = True
        self._lose()

    def _lose(self) -> None:
        if not (self._lossPending or self._lost) and self.core is not None:
            self._lossPending = True
            if self._idle:
                self._wakeup.notify()

    def _done(self, _: object) -> None:
        self._finished.set()
        self._wakeup.notify_all()
        self._watchWakeup.notify_all()
