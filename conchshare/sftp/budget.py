"""
The open-handle budget shared by every SFTP client of this process.

Every open handle holds a file descriptor, and descriptors are a process-wide
resource: without a shared budget one client could hold so many that every
other client's OPEN (and the next connection) fails with C{EMFILE}.

Rules:
  - The budget is C{min(RLIMIT_NOFILE soft limit - 64, 65,536)} handles (the
    64 left are for sockets, pipes and the descriptors a request uses while
    it runs), read when the process-wide budget is first used.
  - No client may hold more than half of it (L{HandleBudget.perClient}).
  - The last L{RESERVE} free handles are for clients holding fewer than
    L{RESERVE}: a new client can always open that many, however many the
    others hold.
  - What a client holds is counted from the client itself (its open handles
    and the opens in flight), so nothing can leak from the count: a client
    that is gone holds nothing.
"""

from __future__ import annotations

import resource
import threading
import weakref
from typing import Protocol

__all__ = ["MAX_BUDGET", "RESERVE", "HandleBudget", "processBudget"]

#: Handles a new client can always open (and descriptors kept aside).
RESERVE = 64

#: The largest budget, whatever the descriptor limit.
MAX_BUDGET = 65536


class HandleHolder(Protocol):
    """
    A client: it says how many handles it holds (opening included).
    """

    @property
    def handlesHeld(self) -> int: ...


class HandleBudget:
    """
    Handles shared by clients (see the module docstring for the rules).

    @ivar total: the handles of all clients together.
    @ivar perClient: the most one client may hold.
    """

    def __init__(self, total: int) -> None:
        self.total = max(total, 2)
        self.perClient = self.total // 2
        # Weak references: a client that is gone holds nothing (a plain
        # list is read faster than a WeakSet, on every OPEN).
        self._clients: list[weakref.ref[HandleHolder]] = []
        self._lock = threading.Lock()

    def join(self, client: HandleHolder) -> None:
        """
        Count C{client}'s handles in the budget, for as long as it lives.
        """
        with self._lock:
            alive = [ref for ref in self._clients if ref() is not None]
            self._clients = [*alive, weakref.ref(client)]

    def mayOpen(self, client: HandleHolder) -> bool:
        """
        Whether C{client} may open one more handle now.  The caller counts it
        in L{HandleHolder.handlesHeld} at once if so.
        """
        held = client.handlesHeld
        if held >= self.perClient:
            return False
        used = 0
        for ref in self._clients:  # replaced, never changed: no lock needed
            other = ref()
            if other is not None:
                used += other.handlesHeld
        free = self.total - used
        if held >= RESERVE:
            return free > RESERVE
        return free > 0


def budgetFor(softLimit: int) -> int:
    """
    The budget of a process whose soft C{RLIMIT_NOFILE} is C{softLimit}.
    """
    if softLimit == resource.RLIM_INFINITY or softLimit < 0:
        return MAX_BUDGET
    return min(softLimit - RESERVE, MAX_BUDGET)


# The process-wide registry of the one handle budget (L{processBudget}):
# every SFTP core of the process shares it.
_process: list[HandleBudget] = []


def processBudget() -> HandleBudget:
    """
    The budget of this process, made on first use from its descriptor limit
    at that time (the commands raise it first: see
    L{conchshare.command.raiseFileLimit}).
    """
    if not _process:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        _process.append(HandleBudget(budgetFor(soft)))
    return _process[0]
