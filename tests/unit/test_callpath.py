"""
The path of one WRITE and one STAT through conchshare's modules (issue 13,
item 8): from the protocol's C{dataReceived} to the system call (in a
worker thread, in io_uring, or on the reactor thread from the kernel's
caches) and back to C{transport.write}, counted as changes of conchshare
module between consecutive conchshare frames.  The harness, and exactly
what it counts, is C{bench/callpath.py}; ARCHITECTURE.rst lists the
modules crossed.

Issue 13 asks for each count to be at most half of what the same harness
measured at the commit issue 13 started from (L{BEFORE}).  One path meets
that; the other three are at 57%, 62% and 59% of it.  Each count is held
to L{NOW} (the counts in ARCHITECTURE.rst): a change that makes a request
cross more modules fails here, and one that makes it cross fewer lowers
L{NOW} (and ARCHITECTURE.rst's table) with it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface.verify import verifyObject

from bench.callpath import PATHS, DeliveryReactor, measure, newRing
from conchshare.switches import switchedOn

#: The counts at 328387c, the commit issue 13 started from.  To measure
#: them again, from the top of this checkout:
#:
#:   git worktree add /tmp/conchshare-328387c 328387c
#:   PYTHONPATH=/tmp/conchshare-328387c python bench/callpath.py
BEFORE = {
    "WRITE in a worker thread": 28,
    "WRITE through io_uring": 34,
    "STAT from the kernel's caches on the reactor thread": 17,
    "STAT in a worker thread": 34,
}

#: The counts now (ARCHITECTURE.rst, "The call-path test").
NOW = {
    "WRITE in a worker thread": 16,
    "WRITE through io_uring": 21,
    "STAT from the kernel's caches on the reactor thread": 8,
    "STAT in a worker thread": 20,
}


class CallPathTests(SynchronousTestCase):
    """
    Each path is measured twice: the harness makes the path the same
    whatever the machine's load, which the second measurement checks.
    """

    def check(self, name: str) -> None:
        """
        Measure the path C{name}, print it, and hold its count to L{NOW}'s
        (at most half of L{BEFORE}'s is the target, printed).
        """
        if switchedOn("CONCHSHARE_PORTABLE_FS"):
            raise SkipTest("CONCHSHARE_PORTABLE_FS=1: the paths measured are the Linux ones")
        first = measure(name)
        second = measure(name)
        print(f"\n{name}: {first.changes} module changes (at 328387c: {BEFORE[name]})")
        print(f"  {first.modules(compact=True)}")
        self.assertEqual(first, second, "The path differs from one measurement to the next")
        print(f"  half of 328387c's: {BEFORE[name] // 2}")
        self.assertLessEqual(
            first.changes,
            NOW[name],
            f"{name}: {first.changes} changes of module, more than the {NOW[name]}"
            f" recorded in ARCHITECTURE.rst\n{first.modules(compact=True)}",
        )

    def test_paths(self) -> None:
        """
        Every path of the harness has a count to compare with.
        """
        self.assertEqual(sorted(PATHS), sorted(BEFORE))

    def test_reactor(self) -> None:
        """
        The harness's reactor takes calls from threads: it is an
        L{IReactorFromThreads}, and runs them when iterated.
        """
        reactor = DeliveryReactor()
        self.addCleanup(reactor.closePipe)
        self.assertTrue(verifyObject(IReactorFromThreads, reactor))
        called: list[int] = []
        reactor.callFromThread(called.append, 1)
        self.assertEqual(called, [])
        reactor.iterate()
        self.assertEqual(called, [1])

    def test_writeInWorkerThread(self) -> None:
        """
        A WRITE made by a worker thread (no io_uring: not Linux, or
        C{CONCHSHARE_IO_URING=0}).
        """
        self.check("WRITE in a worker thread")

    def test_writeThroughRing(self) -> None:
        """
        A WRITE made in the kernel through io_uring.
        """
        ring = None if switchedOn("CONCHSHARE_PORTABLE_FS") else newRing()
        if ring is None:
            raise SkipTest("io_uring is not usable here (or CONCHSHARE_PORTABLE_FS=1)")
        ring.close()
        self.check("WRITE through io_uring")

    def test_statFromCaches(self) -> None:
        """
        A STAT answered on the reactor thread from the kernel's caches.
        """
        if switchedOn("CONCHSHARE_PORTABLE_FS"):
            raise SkipTest("CONCHSHARE_PORTABLE_FS=1: the kernel's caches are not read")
        self.check("STAT from the kernel's caches on the reactor thread")

    def test_statInWorkerThread(self) -> None:
        """
        A STAT made by a worker thread (the share's folder is checked
        again first).
        """
        self.check("STAT in a worker thread")
