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

Each engine keeps its calls (L{Job}s) in a
L{conchshare.sftp.ordering.KeyOrder}, the seam's pure part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from conchshare.sftp.ordering import Batch, Job, KeyOrder

__all__ = [
    "AGAIN",
    "Batch",
    "Delivery",
    "Fed",
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


class Fed(Protocol):
    """
    What L{ICallEngine.feed} feeds (L{conchshare.sftp.core.SFTPServerCore}).
    """

    @property
    def settled(self) -> bool:
        """
        Whether the last feed brought only small requests and left nothing
        buffered.
        """

    def dataReceived(self, data: bytes) -> None:
        """
        Take bytes from the client.
        """


class Delivery:
    """
    The batch of results an engine is delivering, as the callbacks it
    fires see it: an attribute read, not a call, on every reply's way.

    @ivar after: what to call once every result of the batch is fired (the
        replies the batch produced are then written together), or L{None}
        while no batch is being delivered.
    @ivar single: the batch is of one result, and nothing else is fired
        meanwhile: the callback that makes its reply may write it itself,
        at its end, instead of deferring that to C{after} (no other reply
        of the batch could join it).
    """

    __slots__ = ("after", "single")

    def __init__(self) -> None:
        self.after: list[Callable[[], object]] | None = None
        self.single = False


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

    delivery = Attribute(
        "A L{Delivery}: what the callbacks of the results being delivered "
        "may defer to the end of their batch (see L{afterDelivery})."
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

    def holdingWakeups(call: Callable[..., object], *args: object) -> None:
        """
        Call C{call(*args)} with the wake-ups of threads held back: the
        calls it hands over wait together (a batch runs as one), and
        threads are woken once it returns.
        """

    def feed(core: Fed, data: bytes, small: bool) -> None:
        """
        Feed C{data} to C{core} holding wake-ups (L{holdingWakeups}); then,
        if the feed was C{small} and left the core L{Fed.settled}, wait a
        moment for the calls it handed over (L{waitBriefly}).  What the
        protocol does with each chunk of bytes it receives: one call into
        the engine per feed.
        """

    def afterDelivery(call: Callable[[], object]) -> bool:
        """
        Defer C{call} to the end of the batch of results being delivered,
        if one is: so that the replies a batch produces are written at
        once (what appending to C{delivery.after} does, when not L{None}).

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
        #: Results are not delivered in batches: its C{after} stays None.
        self.delivery = Delivery()
        self._order = KeyOrder()

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

    def holdingWakeups(self, call: Callable[..., object], *args: object) -> None:
        call(*args)

    def feed(self, core: Fed, data: bytes, small: bool) -> None:
        core.dataReceived(data)

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
        d: Deferred[Any] = Deferred()
        job, ready = self._order.take(d, tuple(keys), shared, function, args, solo=solo)
        if ready:
            self._begin(job)
        return d

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
        assert job.deferred is not None
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
