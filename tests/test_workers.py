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
from twisted.trial.unittest import SynchronousTestCase, TestCase

from conchshare.confined import ConfinedFile
from conchshare.sftp.workers import Job, KeyOrder, Workers, afterDelivery
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
            self.assertTrue(afterDelivery(lambda: events.append("after")))

        d = workers.run([b"k"], lambda: None)
        d.addCallback(delivered)
        self.assertFalse(afterDelivery(lambda: None))
        waiter: Deferred[None] = Deferred()

        def check() -> None:
            self.assertEqual(events, ["result", "after"])
            waiter.callback(None)

        d.addCallback(lambda _: workers.run([b"k"], lambda: None))
        d.addCallback(lambda _: check())
        return waiter

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

    def test_stopped(self) -> None:
        """
        Once stopped, calls are refused.
        """
        workers = self.workers()
        workers.stop()
        self.assertRaises(RuntimeError, workers.run, [b"k"], lambda: None)


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
