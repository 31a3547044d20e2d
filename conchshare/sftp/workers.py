"""
Where the avatar's blocking filesystem calls run: a few worker threads,
each call once its keys allow (the order of L{conchshare.sftp.ordering}:
a call holds keys shared or exclusive, and starts after the earlier calls
on them as L{KeyOrder} says).

L{Workers} runs calls in at most C{threads} threads, started on demand.  A
worker that finishes a call starts the next call its keys release itself,
without a round trip through the reactor (the WRITEs of one file, pipelined
by sshfs, run back to back).  Results go back to the reactor thread in
batches: one C{callFromThread} for all the calls done since the reactor last
collected them.

Calls made with a L{Batch} may run as one: a worker starting such a call
also takes the calls waiting right behind it on its key that the batch
accepts (the WRITEs of one file at consecutive offsets: one C{pwritev}
instead of one call, one wake-up and one hand-over each).  They start and
end together, each with its own result.

A call may run in steps: returning L{AGAIN}, it is made again, still
holding its keys, once the calls ready at that moment have started (a
copy-data of gigabytes takes a thread from other clients for one step at
a time, and the later requests on its files still wait for its end).

With a ring (L{conchshare.fs.ring}), a call made with a L{RingCall} whose
keys are free starts in the kernel instead, from the reactor thread, and
ends there (its completion is delivered by the reactor); the calls it
releases start there too when they can.  A call the kernel cannot finish
as asked reports L{FALLBACK} and runs in a thread, still holding its keys,
so the order per key is the same either way.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from time import monotonic
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from conchshare.fs.ring import FALLBACK, RingCall, RingOutcome
from conchshare.sftp.engine import AGAIN, Delivery, Fed, ICallEngine, KernelCall
from conchshare.sftp.ordering import Batch, Job, KeyOrder
from conchshare.switches import switchedOn

__all__ = [
    "FALLBACK",
    "KernelRing",
    "RingCall",
    "Workers",
]

_log = Logger()


class KernelRing(Protocol):
    """
    What L{Workers} needs of its io_uring ring (L{conchshare.fs.ring.Ring}).
    """

    def spin(self, seconds: float, clock: Callable[[], float]) -> bool:
        """
        Poll the completion queue for up to C{seconds} (by C{clock}).

        @return: whether a completion came.
        """

    def doRead(self) -> object:
        """
        Deliver the completions that came.
        """


class _Reactor(Protocol):
    # What Workers needs of its reactor (IReactorFromThreads, IReactorCore).
    def callFromThread(self, callable: Callable[..., object], *args: object) -> None: ...

    def addSystemEventTrigger(
        self, phase: str, eventType: str, callable: Callable[..., object], *args: object
    ) -> Any: ...


def _signal(wake: threading.Lock) -> None:
    """
    Wake the thread waiting to acquire C{wake}.  A signal already pending
    (the waiter gave up waiting in the meantime) is left as it is.
    """
    try:
        wake.release()
    except RuntimeError:
        pass


def _callBatch(jobs: list[Job]) -> None:
    # Never raises, as Job.call: a broken batch fails each of its calls.
    batch = jobs[0].batch
    assert batch is not None
    try:
        batch.call(jobs)
    except BaseException as e:
        for job in jobs:
            job.ok = False
            job.value = e


@implementer(ICallEngine)
class Workers:
    """
    The reactor's engine (an L{ICallEngine}): runs blocking calls in up to
    C{threads} daemon threads, or in the kernel, ordered per key (see the
    module docstring).

    Latency: right after the reactor thread hands over calls, it may wait
    for them (L{waitBriefly}), at most L{WAIT} seconds, instead of going
    back to poll for a wake-up: a cheap call (a stat) is answered without
    the round trip through the reactor's waker.  Whatever takes longer is
    handed back with C{callFromThread} as usual, so a slow call holds the
    reactor up by L{WAIT} at most.
    """

    #: Whether the avatar may read cached file data in the reactor thread
    #: (see L{conchshare.fs.ConfinedFile.readCached}).
    inlineReads = True

    #: The longest the reactor thread waits for calls it just handed over.
    WAIT = 0.0003

    def __init__(
        self,
        reactor: _Reactor,
        threads: int = 4,
        *,
        name: str = "conchshare-fs",
        ring: KernelRing | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        """
        @param reactor: an L{IReactorFromThreads} and L{IReactorCore};
            results are handed back with its C{callFromThread}, and the
            threads stop at its shutdown.
        @param threads: the most threads running calls at once.
        @param name: the threads' name.
        @param ring: a L{conchshare.fs.ring.Ring} whose completions C{reactor}
            delivers: calls made with a L{RingCall} start there when their
            keys are free (L{None}: always in threads).
        @param clock: seconds, monotonic: how long calls take, and how long
            L{waitBriefly} waits.
        """
        self._reactor = reactor
        self.ring = ring
        self._clock = clock
        self._max = max(1, threads)
        self._name = name
        # One lock for the state; waking goes through locks used as
        # one-shot signals, released after the state lock is (a thread
        # woken while the waker still held a Condition's lock would block
        # again on it: two wake-ups per hand-over).
        self._lock = threading.Lock()
        self._idleWakes: list[threading.Lock] = []  # of idle threads, last idle last
        self._reactorWake = threading.Lock()
        self._reactorWake.acquire()
        self._order = KeyOrder()
        #: Whether a shared call on C{keys} would start at once: nothing
        #: exclusive runs or waits on them (C{sharedFree(*keys)}).  Only
        #: calls made from the reactor thread can change that to C{False}.
        self.sharedFree: Callable[..., bool] = self._order.sharedFreeUnder(self._lock)
        self._ready: deque[Job] = deque()
        self._done: list[Job] = []
        self._collecting = False
        self._reactorWaiting = False
        self._started = 0  # threads started so far
        self._live = 0  # of which have not ended
        self._between = 0  # awake threads not in a call: they take ready calls
        self._calling = 0
        self._lastCall = 0.0  # how long the last call took (seconds)
        # Off (CONCHSHARE_WORKERS_WAIT=0): waitBriefly never waits for threads.
        self._waitForThreads = switchedOn("CONCHSHARE_WORKERS_WAIT")
        self._stopped = False
        self._shutdownTrigger = False
        # Wake-ups held back (holdWakeups), and whether one was.
        self._holding = False
        self._wakeHeldBack = False
        #: While _collect fires a batch of results (in the reactor thread):
        #: what to call once all are fired (L{afterDelivery}).
        self.delivery = Delivery()
        self._inRing = 0  # calls in the ring, not yet reported

    def __len__(self) -> int:
        """
        The number of keys in use (zero when idle).
        """
        with self._lock:
            return len(self._order)

    @property
    def threads(self) -> int:
        """
        The number of threads started so far.
        """
        return self._started

    def busy(self) -> bool:
        """
        Whether calls are running or waiting for a thread (read without the
        lock: a hint, for L{conchshare.spin}).
        """
        return bool(self._calling or self._ready)

    def holdWakeups(self) -> bool:
        """
        Hold back the wake-ups of worker threads for calls handed over from
        now on, until L{releaseWakeups}: the calls one feed brings (the
        WRITEs of a 1 MiB read) then wait together, and those of one batch
        run as one (see L{Batch}) instead of the first running alone.  A
        thread already awake still takes them meanwhile.  In the reactor
        thread.

        @return: whether this call started holding (L{False}: already held;
            do not release).
        """
        if self._holding:
            return False
        self._holding = True
        return True

    def releaseWakeups(self) -> None:
        """
        Wake the worker threads held back since L{holdWakeups}.
        """
        self._holding = False
        if self._wakeHeldBack:
            self._wakeHeld()

    def feed(self, core: Fed, data: bytes, small: bool) -> None:
        """
        See L{ICallEngine.feed}: in the reactor thread.
        """
        if self._holding:
            core.dataReceived(data)
        else:
            self._holding = True
            try:
                core.dataReceived(data)
            finally:
                self._holding = False
                if self._wakeHeldBack:
                    self._wakeHeld()
        if small and core.settled:
            # Small requests (metadata): their answers come within a
            # fraction of a millisecond, so wait for them rather than for
            # a wake-up.  After data (WRITEs) read on.
            self.waitBriefly()

    def holdingWakeups(self, call: Callable[..., object], *args: object) -> None:
        """
        Call C{call(*args)} between L{holdWakeups} and L{releaseWakeups}
        (see L{ICallEngine.holdingWakeups}).
        """
        if self._holding:
            call(*args)
            return
        self._holding = True
        try:
            call(*args)
        finally:
            self._holding = False
            if self._wakeHeldBack:
                self._wakeHeld()

    def afterDelivery(self, call: Callable[[], object]) -> bool:
        """
        Defer C{call} to the end of the batch of results being delivered, if
        one is: so that the replies a batch produces are written at once.

        @return: whether C{call} will be called (L{False}: no batch is being
            delivered; call it yourself).
        """
        after = self.delivery.after
        if after is None:
            return False
        after.append(call)
        return True

    def run(
        self,
        keys: Iterable[bytes],
        function: Callable[..., Any],
        *args: object,
        shared: bool = False,
        batch: Batch | None = None,
        ring: KernelCall | None = None,
        solo: tuple[bytes, ...] = (),
    ) -> Deferred[Any]:
        """
        Call C{function(*args)} in a worker thread, once earlier calls on
        C{keys} allow (see L{KeyOrder}).  Call it from the reactor thread.

        @param shared: the call only reads what the keys name.
        @param solo: keys of C{keys} held exclusive although C{shared}.
        @param batch: what may run this call together with the calls made
            with the same batch that wait right behind it (see L{Batch}).
        @param ring: how the call may run in the kernel instead: used when
            the call may start at once and the workers have a ring.
        @return: a Deferred firing, in the reactor thread, with the result
            or the exception.
        """
        d: Deferred[Any] = Deferred()
        wake = None
        with self._lock:
            job, ready = self._order.take(d, tuple(keys), shared, function, args, batch, ring, solo)
            if not ready:
                return d
            if ring is None or self.ring is None:
                wake = self._readied(job)
        if wake is not None:
            _signal(wake)
        elif ring is not None and self.ring is not None:
            self._startInRing(job)
        return d

    def _startInRing(self, job: Job) -> None:
        # In the reactor thread: job may start; start it in the kernel, or
        # in a thread if the kernel cannot take it.
        assert job.ring is not None
        self._inRing += 1
        started = False
        try:
            started = job.ring.start(self.ring, partial(self._ringReported, job))
        except Exception:
            _log.failure("Starting a call in the kernel; it runs in a thread")
        if not started:
            self._inRing -= 1
            job.ring = None  # see _ringReported
            self._toThread(job)

    def _readied(self, job: Job) -> threading.Lock | None:
        # Lock held: job may start; queue it for a thread.  Returns the
        # wake-up to signal once the lock is released, if any.
        self._ready.append(job)
        if len(self._ready) > self._between:
            if not self._holding:
                return self._wakeOne()
            self._wakeHeldBack = True
        return None

    def _toThread(self, job: Job) -> None:
        # A started job (holding its keys) goes to a worker thread.
        with self._lock:
            wake = self._readied(job)
        if wake is not None:
            _signal(wake)

    def _ringReported(self, job: Job, outcome: RingOutcome) -> None:
        # In the reactor thread: a call started in the ring is done, or
        # must run in a thread after all.
        self._inRing -= 1
        # The ring call holds its report (which holds the job): without
        # this cycle the job, and the WRITE data it holds, is freed as
        # soon as its result is delivered, not at the next collection.
        job.ring = None
        if outcome is FALLBACK:
            self._toThread(job)
            return
        job.ok, job.value = outcome
        wake = None
        inRing = []
        with self._lock:
            following = self._order.finish(job)
            for candidate in following:
                # Calls that can go on in the kernel do, unless they may
                # run as one with calls waiting behind them (a batch of
                # WRITEs: one pwritev in a thread).
                if candidate.ring is not None and (
                    candidate.batch is None or self._order.alone(candidate)
                ):
                    inRing.append(candidate)
                else:
                    self._ready.append(candidate)
            if len(self._ready) > self._between:
                wake = self._wakeOne()
            self._done.append(job)
        if wake is not None:
            _signal(wake)
        for candidate in inRing:
            self._startInRing(candidate)
        if not self._collecting:
            self._collect()

    def _wakeHeld(self) -> None:
        # Wake-ups were held back (holdWakeups): wake a thread if the calls
        # are still waiting for one.  In the reactor thread.
        wake = None
        with self._lock:
            self._wakeHeldBack = False
            if len(self._ready) > self._between:
                wake = self._wakeOne()
        if wake is not None:
            _signal(wake)

    def stop(self) -> None:
        """
        Let the threads end once idle; calls in flight and queued calls
        still run and deliver their results.  Calls made afterwards still
        run too (in a thread started for them, which ends once idle): a
        reactor shutting down (this is its C{during shutdown} trigger) may
        still deliver replies and close the clients' files; a call never
        fails because of the stop.
        """
        with self._lock:
            self._stopped = True
            wakes, self._idleWakes = self._idleWakes, []
            self._between += len(wakes)
        for wake in wakes:
            _signal(wake)

    def _wakeOne(self) -> threading.Lock | None:
        # Lock held: more calls are ready than awake threads will take.
        # Take an idle thread (to be signalled once the lock is released),
        # or start one.
        if self._idleWakes:
            self._between += 1
            return self._idleWakes.pop()
        if self._live < self._max:
            if not self._shutdownTrigger:
                self._shutdownTrigger = True
                self._reactor.addSystemEventTrigger("during", "shutdown", self.stop)
            self._between += 1
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{self._started}", daemon=True
            )
            self._started += 1
            self._live += 1
            thread.start()
        return None

    def _work(self) -> None:
        lock = self._lock
        ready = self._ready
        clock = self._clock
        wake = threading.Lock()
        wake.acquire()
        lock.acquire()
        try:
            while True:
                if not ready:
                    self._between -= 1
                    if self._stopped:
                        self._live -= 1
                        return
                    # Whoever takes our wake from the list counts us as
                    # between calls again.
                    self._idleWakes.append(wake)
                    lock.release()
                    try:
                        wake.acquire()
                    finally:
                        lock.acquire()
                    continue
                job = ready.popleft()
                # One call into the order to start (only when calls wait:
                # some may join this one) and one to finish.
                jobs = (
                    self._order.joining(job)
                    if job.batch is not None and self._order.waiting
                    else None
                )
                self._between -= 1
                self._calling += 1
                other = None
                if ready and len(ready) > self._between:
                    # This call may be slow: the others must not wait for it.
                    other = self._wakeOne()
                lock.release()
                try:
                    if other is not None:
                        _signal(other)
                    started = clock()
                    if jobs is None or len(jobs) == 1:
                        # Job.call, made here: no hop through the order's
                        # module on the way to the system call.
                        try:
                            job.value = job.function(*job.args)
                        except BaseException as e:
                            job.ok = False
                            job.value = e
                    else:
                        _callBatch(jobs)
                    self._lastCall = clock() - started
                finally:
                    lock.acquire()
                self._calling -= 1
                self._between += 1
                if jobs is None and job.ok and job.value is AGAIN:
                    # Not done: its next step queues behind the calls
                    # ready now, keeping its keys.
                    ready.append(job)
                    continue
                following = self._order.finish(job)
                if following:
                    ready.extendleft(reversed(following))
                if jobs is None:
                    self._done.append(job)
                else:
                    self._done.extend(jobs)
                if self._reactorWaiting:
                    self._reactorWaiting = False
                    lock.release()
                    try:
                        _signal(self._reactorWake)
                    finally:
                        lock.acquire()
                elif not self._collecting:
                    self._collecting = True
                    lock.release()
                    try:
                        self._reactor.callFromThread(self._collect)
                    finally:
                        lock.acquire()
        finally:
            lock.release()

    def waitBriefly(self) -> None:
        """
        In the reactor thread: wait up to L{WAIT} seconds for the calls
        handed over so far, and deliver the results that are ready.  While
        calls take much longer than that (a slow disk), it does not wait at
        all: the reactor is not held up call after call.  Nor with the
        switch C{CONCHSHARE_WORKERS_WAIT=0} (the wait for the ring is
        L{conchshare.fs.ring.Ring.spin}'s).
        """
        ring = self.ring
        if ring is not None and self._inRing and not (self._ready or self._calling):
            # Only calls in the kernel: poll for their completion (no
            # thread needs the GIL meanwhile).
            if ring.spin(self.WAIT, self._clock):
                ring.doRead()  # its eventfd too: no wake-up for nothing
            return
        if not self._waitForThreads or self._lastCall > 4 * self.WAIT:
            return
        if not (self._ready or self._calling or self._done):
            # Nothing handed over (answered inline): nothing to wait for.
            # Read without the lock: a call that ends meanwhile is
            # delivered through callFromThread as usual.
            return
        lock = self._lock
        reactorWake = self._reactorWake
        clock = self._clock
        lock.acquire()
        try:
            deadline = clock() + self.WAIT
            while self._ready or self._calling:
                remaining = deadline - clock()
                if remaining <= 0:
                    break
                # Drop a signal left over from an earlier wait.
                reactorWake.acquire(False)
                self._reactorWaiting = True
                lock.release()
                try:
                    reactorWake.acquire(True, remaining)
                finally:
                    lock.acquire()
                    self._reactorWaiting = False
            done = bool(self._done)
        finally:
            lock.release()
        if done:
            self._collect()

    def _collect(self) -> None:
        # In the reactor thread: fire every call done since the last time.
        # The calls their callbacks hand over wait together (holdWakeups).
        with self._lock:
            done, self._done = self._done, []
            self._collecting = False
        delivery = self.delivery
        outer = delivery.after
        if outer is None:
            delivery.after = []
            delivery.single = len(done) == 1
        else:
            # Results fired within another batch's: part of it.
            delivery.single = False
        holding = self.holdWakeups()
        try:
            for job in done:
                # Fired here, not through a method of the job: one module
                # less on every reply's way (see ARCHITECTURE.rst).
                deferred = job.deferred
                assert deferred is not None
                if job.ok:
                    deferred.callback(job.value)
                else:
                    deferred.errback(Failure(job.value))
        finally:
            delivery.single = False
            if holding:
                self.releaseWakeups()
            if outer is None:
                calls, delivery.after = delivery.after, None
                for call in calls or ():
                    try:
                        call()
                    except Exception:
                        _log.failure("After delivering results")
