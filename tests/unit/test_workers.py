"""
Tests for L{conchshare.sftp.workers}: the order of calls per key, the worker
threads, and batched delivery.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from conchshare.fs import ConfinedFile
from conchshare.sftp.engine import ICallEngine
from conchshare.sftp.ordering import Batch, Job, KeyOrder
from conchshare.sftp.workers import FALLBACK, RingCall, Workers
from conchshare.shares import Share


def job(keys: tuple[bytes, ...], shared: bool = False) -> Job:
    return Job(keys, shared, lambda: None, ())


class KeyOrderTests(SynchronousTestCase):
    def test_sharedRunTogether(self) -> None:
        """
        Shared calls on a key run together; an exclusive call waits for
        them, and a shared call made after it waits for it.
        """
        order = KeyOrder()
        r1, r2, w, r3 = job((b"k",), True), job((b"k",), True), job((b"k",)), job((b"k",), True)
        self.assertTrue(order.add(r1))
        self.assertTrue(order.add(r2))
        self.assertFalse(order.add(w))
        self.assertFalse(order.add(r3))
        self.assertFalse(order.sharedFree(b"k"))
        self.assertEqual(order.finish(r1), [])
        self.assertEqual(order.finish(r2), [w])
        self.assertEqual(order.finish(w), [r3])
        self.assertEqual(order.finish(r3), [])
        self.assertEqual(len(order), 0)
        self.assertTrue(order.sharedFree(b"k"))

    def test_sharedRunsReleasedTogether(self) -> None:
        """
        The shared calls queued behind an exclusive one all start when it
        ends, up to the next exclusive call.
        """
        order = KeyOrder()
        w1, r1, r2, w2 = job((b"k",)), job((b"k",), True), job((b"k",), True), job((b"k",))
        for j in (w1, r1, r2, w2):
            order.add(j)
        self.assertEqual(order.finish(w1), [r1, r2])
        self.assertEqual(order.finish(r2), [])
        self.assertEqual(order.finish(r1), [w2])

    def test_twoKeys(self) -> None:
        """
        A call on two keys waits for both, and holds up later calls on
        either; calls on other keys go by.
        """
        order = KeyOrder()
        a, b = job((b"a",)), job((b"b",))
        ab, a2, c = job((b"a", b"b")), job((b"a",), True), job((b"c",))
        self.assertTrue(order.add(a))
        self.assertTrue(order.add(b))
        self.assertFalse(order.add(ab))
        self.assertFalse(order.add(a2))
        self.assertTrue(order.add(c))
        self.assertEqual(order.finish(a), [])
        self.assertEqual(order.finish(b), [ab])
        self.assertEqual(order.finish(ab), [a2])


class _Pairs(Batch):
    # Accepts up to two calls more, with even arguments.
    def accepts(self, jobs: list[Job], job: Job) -> bool:
        return len(jobs) < 3 and job.args[0] % 2 == 0

    def call(self, jobs: list[Job]) -> None:
        for one in jobs:
            one.ok, one.value = True, ("together", one.args[0])


class BatchTests(SynchronousTestCase):
    def test_joining(self) -> None:
        """
        A call started with a batch takes the calls waiting right behind it
        on its key that the batch accepts, up to the first it does not:
        another batch, a shared call, a call on more keys, or one refused.
        """
        order = KeyOrder()
        batch, other = _Pairs(), _Pairs()
        running = job((b"k",))
        self.assertTrue(order.add(running))
        calls = [Job((b"k",), False, lambda n: n, (n,), batch) for n in (0, 2, 4, 6)]
        shared = Job((b"k",), True, lambda n: n, (8,), batch)
        odd = Job((b"k",), False, lambda n: n, (9,), batch)
        foreign = Job((b"k",), False, lambda n: n, (10,), other)
        twoKeys = Job((b"k", b"l"), False, lambda n: n, (12,), batch)
        last = Job((b"k",), False, lambda n: n, (14,), batch)
        for one in [*calls, shared, odd, foreign, twoKeys, last]:
            self.assertFalse(order.add(one))
        self.assertEqual(order.finish(running), [calls[0]])
        self.assertEqual(order.joining(calls[0]), calls[:3])
        self.assertEqual(order.finish(calls[0]), [calls[3]])
        self.assertEqual(order.joining(calls[3]), [calls[3]])  # shared next
        self.assertEqual(order.finish(calls[3]), [shared])
        self.assertEqual(order.finish(shared), [odd])
        self.assertEqual(order.joining(odd), [odd])  # another batch next
        self.assertEqual(order.finish(odd), [foreign])
        self.assertEqual(order.joining(foreign), [foreign])  # two keys next
        self.assertEqual(order.finish(foreign), [twoKeys])
        self.assertEqual(order.finish(twoKeys), [last])
        self.assertEqual(order.joining(last), [last])
        self.assertEqual(order.finish(last), [])
        self.assertEqual(len(order), 0)


class WorkersTests(TestCase):
    def workers(self, threads: int = 4) -> Workers:
        from twisted.internet import reactor

        workers = Workers(reactor, threads)
        self.addCleanup(workers.stop)
        return workers

    def test_inOrderPerKey(self) -> Deferred[Any]:
        """
        Exclusive calls on one key run one after another in call order.
        """
        workers = self.workers()
        seen: list[int] = []
        ds = [workers.run([b"k"], seen.append, i) for i in range(200)]
        d = gatherResults(ds)
        d.addCallback(lambda _: self.assertEqual(seen, list(range(200))))
        return d

    def test_sharedInParallel(self) -> Deferred[Any]:
        """
        Two shared calls on one key run at the same time.
        """
        workers = self.workers()
        barrier = threading.Barrier(2, timeout=10)
        d = gatherResults([workers.run([b"k"], barrier.wait, shared=True) for _ in range(2)])
        return d

    def test_slowCallDoesNotHoldOthers(self) -> Deferred[Any]:
        """
        A call blocked in a thread does not hold up calls on other keys.
        """
        workers = self.workers(2)
        gate = threading.Event()
        slow = workers.run([b"slow"], gate.wait, 10)
        fast = workers.run([b"fast"], lambda: "done")

        def fastDone(result: str) -> Deferred[Any]:
            self.assertEqual(result, "done")
            self.assertFalse(slow.called)
            gate.set()
            return slow

        return fast.addCallback(fastDone)

    def test_failure(self) -> Deferred[Any]:
        """
        An exception in the call fails its Deferred and releases its key.
        """
        workers = self.workers()
        failed = workers.run([b"k"], os.stat, "/nonexistent/really")
        after = workers.run([b"k"], lambda: 1)
        d = self.assertFailure(failed, FileNotFoundError)
        d.addCallback(lambda _: after)
        d.addCallback(self.assertEqual, 1)
        d.addCallback(lambda _: self.assertEqual(len(workers), 0))
        return d

    def test_batchedDelivery(self) -> Deferred[Any]:
        """
        Results come back in the reactor thread; what is deferred with
        L{afterDelivery} during a delivery runs once it is over.
        """
        workers = self.workers()
        main = threading.get_ident()
        events: list[str] = []

        def delivered(result: object) -> None:
            self.assertEqual(threading.get_ident(), main)
            events.append("result")
            self.assertTrue(workers.afterDelivery(lambda: events.append("after")))

        d = workers.run([b"k"], lambda: None)
        d.addCallback(delivered)
        self.assertFalse(workers.afterDelivery(lambda: None))
        waiter: Deferred[None] = Deferred()

        def check() -> None:
            self.assertEqual(events, ["result", "after"])
            waiter.callback(None)

        d.addCallback(lambda _: workers.run([b"k"], lambda: None))
        d.addCallback(lambda _: check())
        return waiter

    def test_singleDelivery(self) -> Deferred[Any]:
        """
        While L{Workers} delivers a batch of one result, its L{Delivery}
        says so (the callback may write its reply itself); outside a
        delivery it has no batch.
        """
        workers = self.workers()
        seen: list[tuple[bool, bool]] = []

        def delivered(result: object) -> None:
            seen.append((workers.delivery.after is not None, workers.delivery.single))

        d = workers.run([b"k"], lambda: None)
        d.addCallback(delivered)
        self.assertEqual((workers.delivery.after, workers.delivery.single), (None, False))

        def check() -> None:
            self.assertEqual(seen, [(True, True)])
            self.assertEqual((workers.delivery.after, workers.delivery.single), (None, False))

        from twisted.internet import reactor

        # Checked on the reactor's next turn, after the delivery.
        return d.addCallback(lambda _: deferLater(reactor, 0, check))

    def test_waitBriefly(self) -> Deferred[Any]:
        """
        L{Workers.waitBriefly} waits for the calls handed over and delivers
        their results before it returns; not while calls are slow.
        """
        workers = self.workers()
        workers.WAIT = 30.0
        gate = threading.Event()
        threading.Timer(0.05, gate.set).start()
        d = workers.run([b"k"], gate.wait, 10)
        workers.waitBriefly()
        self.assertTrue(self.successResultOf(d))

        workers._lastCall = 1000.0  # the last call was slow
        gate = threading.Event()
        d = workers.run([b"k"], gate.wait, 10)
        started = time.monotonic()
        workers.waitBriefly()
        self.assertLess(time.monotonic() - started, 5)
        self.assertNoResult(d)
        gate.set()
        return d

    def test_waitBrieflySwitchOff(self) -> Deferred[Any]:
        """
        With C{CONCHSHARE_WORKERS_WAIT=0}, L{Workers.waitBriefly} does not
        wait for a call handed to a thread: it returns while the call is
        held, and the result comes through the reactor as usual.
        """
        self.patch(os, "environ", {**os.environ, "CONCHSHARE_WORKERS_WAIT": "0"})
        workers = self.workers()
        workers.WAIT = 30.0
        gate = threading.Event()
        d = workers.run([b"k"], gate.wait, 10)
        workers.waitBriefly()
        self.assertNoResult(d)
        gate.set()
        d.addCallback(self.assertTrue)
        return d

    def test_batch(self) -> Deferred[Any]:
        """
        Calls that wait behind one another run together through their
        batch, each with its own result, delivered in order; a batch that
        raises fails each of its calls.
        """
        workers = self.workers()

        class Broken(_Pairs):
            def call(self, jobs: list[Job]) -> None:
                raise ValueError("broken")

        gate = threading.Event()
        held = workers.run([b"k"], gate.wait, 10)
        batch, broken = _Pairs(), Broken()
        together = [workers.run([b"k"], lambda n: n, n, batch=batch) for n in (0, 2, 4)]
        alone = workers.run([b"k"], lambda n: ("alone", n), 6, batch=batch)
        failing = [workers.run([b"k"], lambda n: n, n, batch=broken) for n in (8, 10)]
        gate.set()
        outcomes: list[object] = []
        for d in [*together, alone, *failing]:
            d.addCallbacks(outcomes.append, lambda f: outcomes.append(str(f.value)))
        d = gatherResults([held, *together, alone], consumeErrors=True)

        def check(_: object) -> Deferred[Any]:
            waiter: Deferred[Any] = Deferred()

            def done() -> None:
                self.assertEqual(
                    outcomes,
                    [
                        ("together", 0),
                        ("together", 2),
                        ("together", 4),
                        ("alone", 6),
                        "broken",
                        "broken",
                    ],
                )
                waiter.callback(None)

            gatherResults(failing).addBoth(lambda _: done())
            return waiter

        return d.addCallback(check)

    def test_heldWakeups(self) -> Deferred[Any]:
        """
        Calls handed over while wake-ups are held back (one feed's
        requests) are all waiting when a thread starts: those of one batch
        run as one.
        """
        workers = self.workers()
        groups: list[int] = []

        class Recording(_Pairs):
            def accepts(self, jobs: list[Job], job: Job) -> bool:
                return True

            def call(self, jobs: list[Job]) -> None:
                groups.append(len(jobs))
                super().call(jobs)

        batch = Recording()
        self.assertTrue(workers.holdWakeups())
        self.assertFalse(workers.holdWakeups())  # nested: the outer one releases
        calls = [workers.run([b"k"], lambda n: n, n, batch=batch) for n in range(5)]
        self.assertEqual(workers.threads, 0)
        workers.releaseWakeups()
        d = gatherResults(calls)
        d.addCallback(self.assertEqual, [("together", n) for n in range(5)])
        d.addCallback(lambda _: self.assertEqual(groups, [5]))
        return d

    def test_heldWakeupsPerEngine(self) -> Deferred[Any]:
        """
        Holding one engine's wake-ups (a feed of one protocol) holds back
        no other engine's: the hold is the engine's state, not a module
        global.
        """
        held, other = self.workers(), self.workers()
        self.assertTrue(held.holdWakeups())
        waiting = held.run([b"k"], lambda: "held")
        going = other.run([b"k"], lambda: "other")
        self.assertEqual((held.threads, other.threads), (0, 1))
        held.releaseWakeups()
        self.assertEqual(held.threads, 1)
        d = gatherResults([waiting, going])
        d.addCallback(self.assertEqual, ["held", "other"])
        return d

    def test_feed(self) -> Deferred[Any]:
        """
        L{Workers.feed} feeds the core with wake-ups held (the feed's calls
        wait together and run as one batch), wakes the threads after, and
        waits briefly only after a small feed that left the core settled.
        """
        workers = self.workers()
        groups: list[int] = []
        waits: list[str] = []
        workers.waitBriefly = lambda: waits.append("waited")  # type: ignore[method-assign]

        class Recording(_Pairs):
            def accepts(self, jobs: list[Job], job: Job) -> bool:
                return True

            def call(self, jobs: list[Job]) -> None:
                groups.append(len(jobs))
                super().call(jobs)

        batch = Recording()
        calls: list[Deferred[Any]] = []

        class Core:
            settled = True

            def dataReceived(self, data: bytes) -> None:
                threads = workers.threads
                calls.extend(workers.run([b"k"], lambda n: n, n, batch=batch) for n in data)
                assert workers.threads == threads  # held

        core = Core()
        workers.feed(core, bytes(range(5)), True)
        core.settled = False
        workers.feed(core, b"", True)
        workers.feed(core, b"", False)
        self.assertEqual(waits, ["waited"])
        d = gatherResults(calls)
        d.addCallback(self.assertEqual, [("together", n) for n in range(5)])
        d.addCallback(lambda _: self.assertEqual(groups, [5]))
        return d

    def test_engine(self) -> None:
        """
        L{Workers} is an L{ICallEngine}.
        """
        self.assertTrue(verifyObject(ICallEngine, self.workers()))

    def test_stopped(self) -> Deferred[Any]:
        """
        A stop lets the call in flight end and deliver its result; calls
        made after the stop still run, in order, on a thread started for
        them.
        """
        workers = self.workers(1)
        gate = threading.Event()
        seen: list[str] = []
        inFlight = workers.run([b"k"], lambda: gate.wait(10) and seen.append("held"))
        workers.stop()
        later = workers.run([b"k"], seen.append, "later")
        gate.set()
        d = gatherResults([inFlight, later])
        d.addCallback(lambda _: self.assertEqual(seen, ["held", "later"]))
        return d

    def test_stoppedIdle(self) -> Deferred[Any]:
        """
        A call made after the idle threads ended on a stop starts a thread.
        """
        workers = self.workers(1)
        d = workers.run([b"k"], lambda: None)

        def stopThenCall(_: object) -> Deferred[Any]:
            workers.stop()
            return workers.run([b"k"], lambda: "after")

        d.addCallback(stopThenCall)
        d.addCallback(self.assertEqual, "after")
        return d


class _Later(RingCall):
    """
    A call "in the kernel" that reports C{outcome} from the reactor a
    little later (or raises, or is refused), noting when it started.
    """

    def __init__(self, log: list[str], name: str, outcome: Any, *, refuse: bool = False) -> None:
        self.log = log
        self.name = name
        self.outcome = outcome
        self.refuse = refuse

    def start(self, ring: Any, report: Any) -> bool:
        from twisted.internet import reactor

        if self.outcome is RuntimeError:
            raise RuntimeError("cannot start")
        if self.refuse:
            return False
        self.log.append(f"ring {self.name}")
        reactor.callLater(0, report, self.outcome)  # type: ignore[attr-defined]
        return True


class _All(Batch):
    # Takes every call waiting behind the first; notes when it runs them.
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def accepts(self, jobs: list[Job], job: Job) -> bool:
        return True

    def call(self, jobs: list[Job]) -> None:
        self.log.append("together")
        for one in jobs:
            one.call()


class RingCallTests(TestCase):
    """
    Calls made with a L{RingCall} on L{Workers} that have a ring: they
    start there when their keys are free, keep their order with the calls
    around them, and run in a thread when the ring cannot take them.
    """

    def workers(self) -> Workers:
        from twisted.internet import reactor

        workers = Workers(reactor, 2, ring=object())
        self.addCleanup(workers.stop)
        return workers

    def threaded(self, log: list[str], name: str) -> Any:
        def call() -> str:
            log.append(f"thread {name}")
            return f"{name} in a thread"

        return call

    def test_inRing(self) -> Deferred[Any]:
        """
        A call whose key is free starts in the ring, and its result is
        what the ring reported; no thread is started.  The call made next
        on the same key waits for it, and starts in the ring once it ends.
        """
        workers = self.workers()
        log: list[str] = []
        first = workers.run(
            [b"k"], self.threaded(log, "a"), ring=_Later(log, "a", (True, "a in the ring"))
        )
        second = workers.run(
            [b"k"], self.threaded(log, "b"), ring=_Later(log, "b", (True, "b in the ring"))
        )
        self.assertEqual(log, ["ring a"])

        def check(results: list[str]) -> None:
            self.assertEqual(results, ["a in the ring", "b in the ring"])
            self.assertEqual(log, ["ring a", "ring b"])
            self.assertEqual(workers.threads, 0)

        return gatherResults([first, second]).addCallback(check)

    def test_failure(self) -> Deferred[Any]:
        """
        An exception the ring reports fails the call.
        """
        workers = self.workers()
        d = workers.run(
            [b"k"], lambda: None, ring=_Later([], "a", (False, FileNotFoundError(2, "No")))
        )
        return self.assertFailure(d, FileNotFoundError)

    def test_fallback(self) -> Deferred[Any]:
        """
        A call the ring hands back (L{FALLBACK}) runs in a thread, still
        before the calls made after it on its key.
        """
        workers = self.workers()
        log: list[str] = []
        first = workers.run([b"k"], self.threaded(log, "a"), ring=_Later(log, "a", FALLBACK))
        second = workers.run([b"k"], self.threaded(log, "b"))

        def check(results: list[str]) -> None:
            self.assertEqual(results, ["a in a thread", "b in a thread"])
            self.assertEqual(log, ["ring a", "thread a", "thread b"])

        return gatherResults([first, second]).addCallback(check)

    def test_refused(self) -> Deferred[Any]:
        """
        A call the ring does not take (full) runs in a thread.
        """
        workers = self.workers()
        log: list[str] = []
        d = workers.run([b"k"], self.threaded(log, "a"), ring=_Later(log, "a", None, refuse=True))

        def check(result: str) -> None:
            self.assertEqual(result, "a in a thread")
            self.assertEqual(log, ["thread a"])

        return d.addCallback(check)

    def test_startFails(self) -> Deferred[Any]:
        """
        A call whose start in the ring raises runs in a thread; the error
        is logged, not raised to the caller.
        """
        workers = self.workers()
        log: list[str] = []
        d = workers.run([b"k"], self.threaded(log, "a"), ring=_Later(log, "a", RuntimeError))

        def check(result: str) -> None:
            self.assertEqual(result, "a in a thread")
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

        return d.addCallback(check)

    def test_batchWaitingStaysInThreads(self) -> Deferred[Any]:
        """
        Calls released by a call in the ring start in the ring, except
        calls of a batch with more of the batch waiting behind them: those
        run in a thread, together.
        """
        workers = self.workers()
        log: list[str] = []
        batch = _All(log)
        first = workers.run(
            [b"k"], self.threaded(log, "a"), ring=_Later(log, "a", (True, "a in the ring"))
        )
        rest = [
            workers.run(
                [b"k"], self.threaded(log, name), batch=batch, ring=_Later(log, name, (True, name))
            )
            for name in ("b", "c")
        ]

        def check(results: list[str]) -> None:
            self.assertEqual(results, ["a in the ring", "b in a thread", "c in a thread"])
            self.assertEqual(log, ["ring a", "together", "thread b", "thread c"])

        return gatherResults([first, *rest]).addCallback(check)


class ReadCachedTests(SynchronousTestCase):
    def test_readCached(self) -> None:
        """
        L{ConfinedFile.readCached} returns cached data read in full, and
        L{None} at the end of the file (left to L{ConfinedFile.read}).
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"0123456789")
        fd = os.open(path, os.O_RDONLY)
        confined = ConfinedFile(fd, Share(b"s", path, False), append=False, virtualPath=b"/s/f")
        self.addCleanup(confined.close)
        if getattr(os, "RWF_NOWAIT", None) is not None:
            self.assertEqual(confined.readCached(2, 4), b"2345")
        self.assertIsNone(confined.readCached(8, 4))
        self.assertEqual(confined.read(8, 4), b"89")
        confined.close()
        self.assertIsNone(confined.readCached(0, 4))


class _Keeping(RingCall):
    """
    A call "in the kernel" that keeps its data and its report while it
    runs, as the calls of L{conchshare.fs} do, and reports success
    from the reactor a little later.
    """

    def __init__(self, data: Any) -> None:
        self.data = data

    def start(self, ring: Any, report: Any) -> bool:
        from twisted.internet import reactor

        self.report = report
        reactor.callLater(0, report, (True, None))  # type: ignore[attr-defined]
        return True


class _Data:
    """
    Something weakly referable standing for a WRITE's data.
    """


class RingCallMemoryTests(TestCase):
    def test_dataFreedWhenDone(self) -> Deferred[Any]:
        """
        Once a call made in the ring has its result delivered, its data is
        freed at once, not at the next garbage collection: with 64 clients
        uploading, WRITE data waiting for the collector was most of the
        memory used.
        """
        import gc
        import weakref

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        workers = Workers(reactor, 1, ring=object())
        self.addCleanup(workers.stop)
        gc.disable()
        self.addCleanup(gc.enable)
        data = _Data()
        freed = weakref.ref(data)
        d = workers.run([b"k"], lambda: None, ring=_Keeping(data))
        del data

        def later(_: object) -> Deferred[None]:
            return deferLater(reactor, 0, lambda: None)  # type: ignore[arg-type]

        d.addCallback(later)
        d.addCallback(lambda _: self.assertIsNone(freed()))
        return d
