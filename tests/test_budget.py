"""
The process-wide memory budget (L{conchshare.budget}): SFTP requests in
flight shared by servers, giving memory back once traffic stops.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from conchshare.budget import LARGEST_REQUEST, MemoryBudget, trimMemory
from conchshare.sftp.protocol import SFTPServerProtocol
from tests.sftpfake import FakeSFTPServer


class InFlightTests(unittest.SynchronousTestCase):
    def test_aloneKeepsItsBound(self) -> None:
        """
        One server alone keeps its own bound: one client is served as
        before.
        """
        budget = MemoryBudget(replies=4 * LARGEST_REQUEST)
        server = SFTPServerProtocol(FakeSFTPServer(), memoryBudget=budget)
        server.makeConnection(StringTransport())
        assert server.core is not None
        self.assertEqual(server.core._maxInFlight, 64)

    def test_shared(self) -> None:
        """
        Several servers share the reply budget, at least one request each;
        when they end, the others get their share back.
        """
        budget = MemoryBudget(replies=4 * LARGEST_REQUEST)
        servers = [SFTPServerProtocol(FakeSFTPServer(), memoryBudget=budget) for _ in range(8)]
        for server in servers:
            server.makeConnection(StringTransport())
        limits = {server.core._maxInFlight for server in servers if server.core}
        self.assertEqual(limits, {1})
        for server in servers[2:]:
            server.connectionLost(None)
        limits = {server.core._maxInFlight for server in servers[:2] if server.core}
        self.assertEqual(limits, {2})
        servers[1].connectionLost(None)
        assert servers[0].core is not None
        self.assertEqual(servers[0].core._maxInFlight, 64)

    def test_neverAboveItsOwnBound(self) -> None:
        """
        A server made with a lower C{maxInFlight} keeps it.
        """
        budget = MemoryBudget()
        server = SFTPServerProtocol(FakeSFTPServer(), maxInFlight=4, memoryBudget=budget)
        server.makeConnection(StringTransport())
        assert server.core is not None
        self.assertEqual(server.core._maxInFlight, 4)


class TrimTests(unittest.SynchronousTestCase):
    def test_trimOnceAfterTraffic(self) -> None:
        """
        Memory is given back once, at the first check that finds no traffic
        since the one before; not again until traffic comes back.
        """
        trims: list[None] = []
        budget = MemoryBudget(trim=lambda: trims.append(None))
        self.addCleanup(budget.stop)
        self.assertFalse(budget.checkIdle())
        budget._moved += 1  # as touch() does, without its thread
        self.assertFalse(budget.checkIdle())  # traffic since the last check
        self.assertTrue(budget.checkIdle())
        self.assertFalse(budget.checkIdle())
        self.assertEqual(len(trims), 1)
        budget._moved += 1
        budget.checkIdle()
        self.assertTrue(budget.checkIdle())
        self.assertEqual(len(trims), 2)

    def test_trimMemory(self) -> None:
        """
        On glibc, free memory can be given back.
        """
        import platform

        if platform.libc_ver()[0] != "glibc":
            raise unittest.SkipTest("not glibc")
        self.assertTrue(trimMemory())
