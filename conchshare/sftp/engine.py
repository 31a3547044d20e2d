"""
The execution seam: "run this call off the reactor, ordered by these keys".

The avatar (L{conchshare.sftp.avatar}) decides which blocking filesystem
call a request becomes and under which ordering keys
(L{conchshare.sftp.ordering}); an I{engine} (an L{ICallEngine}) runs it.
The engines:

  - L{conchshare.sftp.workers.Workers}: worker threads and the io_uring
    ring, results delivered on the reactor thread (channels, the nested
    server, C{twistd conchshare}, embedders);
  - L{OrderedEngine}: keeps the order in the calling thread and starts
    each call through a function once its keys allow.  C{conchshare
    sftp-server}'s L{conchshare.sftp.threaded.ThreadedServer} starts them
    in its serving threads; by default a call runs at once, in the caller
    (synchronous: what the unit tests use, with a latch where the order
    is under test).

Each engine keeps its calls in a L{conchshare.sftp.ordering.KeyOrder},
the seam's pure part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from conchshare.sftp.ordering import KeyOrder

__all__ = [
    "AGAIN",
    "Batch",
    "ICallEngine",
    "Job",
    "KernelCall",
    "OrderedEngine",
    "Start",
]


#: Returned by a call that is not done: it is made again, still holding
#: its keys, once the calls ready to run when it returned have started
#: (a long copy-data, in steps: other clients' calls go in between).
AGAIN = object()


class KernelCall(Protocol):
    """
    A call that may run in the kernel (io_uring) instead of a thread:
    what the avatar hands L{ICallEngine.run} beside the function (see
    L{conchshare.sftp.workers}).
    """

    def start(self, ring: Any, report: Callable[[Any], None]) -> bool:
        """
        Submit the call's first operation to C{ring}, in the reactor
        thread; C{report} is called once, in the reactor thread, with
        C{(True, result)}, C{(False, exception)} or C{FALLBACK}.

        @return: whether it was submitted (L{False}: it runs in a thread).
        """


class Batch:
    """
    What lets calls run as one (see L{ICallEngine.run}): the calls made
    with the same batch, on the same single key, one right behind the
    other.
    """

    def accepts(self, jobs: list[Job], job: Job) -> bool:
        """
        Whether C{job} may join C{jobs} (taken so far, in call order;
        never empty).  Called in a worker thread with the engine's lock
        held: decide quickly, without blocking.
        """
        return False

    def call(self, jobs: list[Job]) -> None:
        """
        Run C{jobs} (several, in call order) as one, setting each one's
        result as L{Job.call} would have (C{ok} and C{value}); never
        raises.  Called in a worker thread.
        """
        for job in jobs:
            job.call()


class Job:
    """
    One call: its keys, whether it only shares them, the callable and its
    arguments, and the Deferred its result goes to.
    """

    __slots__ = (
        "keys",
        "shared",
        "solo",
        "function",
        "args",
        "deferred",
        "ok",
        "value",
        "batch",
        "ring",
    )

    def __init__(
        self,
        keys: tuple[bytes, ...],
        shared: bool,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        batch: Batch | None = None,
        ring: KernelCall | None = None,
        solo: tuple[bytes, ...] = (),
    ) -> None:
        """
        @param keys: its keys; repeats are dropped (in order).
        """
        if len(keys) > 1:
            keys = tuple(dict.fromkeys(keys))
        self.keys = keys
        self.shared = shared
        #: Keys held exclusive although C{shared} (see L{KeyOrder}).
        self.solo = solo
        self.function = function
        self.args = args
        self.batch = batch
        self.ring = ring
        self.deferred: Deferred[Any] = Deferred()
        self.ok = True
        self.value: Any = None

    def call(self) -> None:
        """
        Run the call, keeping its result or exception (never raises).
        """
        try:
            self.value = self.function(*self.args)
        except BaseException as e:
            self.ok = False
            self.value = e

    def fire(self) -> None:
        """
        Fire the Deferred with what L{call} kept (in the reactor thread).
        """
        if self.ok:
            self.deferred.callback(self.value)
        else:
            self.deferred.errback(Failure(self.value))


class ICallEngine(Interface):
    """
    Runs the avatar's blocking calls off the reactor thread, in the order
    their keys give (L{conchshare.sftp.ordering}), and tells the thread
    that feeds the protocol core when to wake whom.

    Called from one thread (the reactor's, or under the engine's lock).
    """

    inlineReads = Attribute(
        "Whether the avatar may make the calls that never wait (cached "
        "reads, attributes and directories the kernel has in memory) in the "
        "calling thread instead of handing them over."
    )

    ring = Attribute(
        "The io_uring ring its L{KernelCall}s start in, or L{None}: then the "
        "avatar builds no L{KernelCall}."
    )

    def run(
        keys: Iterable[bytes],
        function: Callable[..., Any],
        *args: object,
        shared: bool = False,
        batch: Batch | None = None,
        ring: KernelCall | None = None,
        solo: tuple[bytes, ...] = (),
    ) -> Deferred[Any]:
        """
        Call C{function(*args)} once every earlier call on one of C{keys}
        allows (shared calls run alongside each other).

        @param shared: the call only reads what the keys name.
        @param solo: keys of C{keys} held exclusive although C{shared}.
        @param batch: what may run this call together with the calls made
            with the same batch that wait right behind it.
        @param ring: how the call may run in the kernel instead.
        @return: a Deferred firing with the result (after L{AGAIN}, the
            last step's), or failing with the exception.
        """

    def sharedFree(*keys: bytes) -> bool:
        """
        Whether a shared call on C{keys} would start at once: nothing
        exclusive runs or waits on them.
        """

    def busy() -> bool:
        """
        Whether calls are running or waiting for a thread (a hint).
        """

    def holdWakeups() -> bool:
        """
        Hold back the wake-ups of threads for the calls handed over from
        now on, until L{releaseWakeups}: the calls one feed brings then
        wait together, and a batch runs as one.

        @return: whether this call started holding (L{False}: already
            held; do not release).
        """

    def releaseWakeups() -> None:
        """
        Wake the threads held back since L{holdWakeups}.
        """

    def afterDelivery(call: Callable[[], object]) -> bool:
        """
        Defer C{call} to the end of the batch of results being delivered,
        if one is: so that the replies a batch produces are written at
        once.

        @return: whether C{call} will be called (L{False}: no batch is
            being delivered; call it yourself).
        """

    def waitBriefly() -> None:
        """
        In the thread that handed calls over: wait a moment for them, and
        deliver what is ready (or return at once).
        """


#: How L{OrderedEngine} starts a call once its keys allow: C{start(function,
#: *args)} returns a Deferred firing with the call's result.
Start = Callable[..., "Deferred[Any]"]


@implementer(ICallEngine)
class OrderedEngine:
    """
    An L{ICallEngine} that keeps the order in the calling thread and starts
    each call through C{start} once its turn comes: C{conchshare
    sftp-server}'s (L{conchshare.sftp.threaded.ThreadedServer.start}), or
    synchronous by default (every call made at once, in the caller: for
    tests, with a latch as C{start} where the order is under test).

    Calls never run as one (a L{Batch} is ignored) and never in the kernel.
    """

    #: Calls are never handed to the kernel.
    ring = None

    def __init__(self, start: Start | None = None, *, inlineReads: bool = False) -> None:
        """
        @param start: how to start each call once its turn comes (default:
            call it at once; it may return a Deferred).
        @param inlineReads: see L{ICallEngine.inlineReads}.
        """
        self._start: Start = start if start is not None else maybeDeferred
        self.inlineReads = inlineReads
        self._order: KeyOrder[Job] = KeyOrder()

    def __len__(self) -> int:
        """
        The number of keys in use (zero when idle).
        """
        return len(self._order)

    def sharedFree(self, *keys: bytes) -> bool:
        return self._order.sharedFree(*keys)

    def busy(self) -> bool:
        """
        @return: L{False}: it has no threads of its own.
        """
        return False

    def holdWakeups(self) -> bool:
        return False

    def releaseWakeups(self) -> None:
        pass

    def afterDelivery(self, call: Callable[[], object]) -> bool:
        return False

    def waitBriefly(self) -> None:
        pass

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
        See L{ICallEngine.run}; C{batch} and C{ring} are ignored.
        """
        job = Job(tuple(keys), shared, function, args, solo=solo)
        if self._order.add(job):
            self._begin(job)
        return job.deferred

    def _begin(self, job: Job) -> None:
        # A call answering AGAIN is made again, still holding its keys: in
        # this loop when start answered at once (no recursion).
        while True:
            step = _Step()
            try:
                d = self._start(job.function, *job.args)
            except BaseException:
                d = fail()
            d.addBoth(self._finished, job, step)
            step.returned = True
            if not step.again:
                return

    def _finished(self, result: object, job: Job, step: _Step) -> None:
        if result is AGAIN:
            if step.returned:
                self._begin(job)
            else:
                step.again = True
            return
        following = self._order.finish(job)
        if isinstance(result, Failure):
            job.deferred.errback(result)
        else:
            job.deferred.callback(result)
        for candidate in following:
            self._begin(candidate)


class _Step:
    # One step of a call made by OrderedEngine: whether start returned,
    # and whether the call asked to be made again before that.
    __slots__ = ("returned", "again")

    def __init__(self) -> None:
        self.returned = False
        self.again = False
