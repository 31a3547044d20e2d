"""
The order in which one connection's SFTP requests run: pure bookkeeping
(no threads, no I/O, nothing imported from the engines), the pure part of
the execution seam (L{conchshare.sftp.engine}): every engine keeps its
calls in a L{KeyOrder} (L{conchshare.sftp.workers.Workers} for channels,
L{conchshare.sftp.engine.OrderedEngine} for C{sftp-server} and tests).

The rule (the SFTP v3 draft, filexfer-02 section 6.1: the results are "the
same as if it had sent the requests one at a time"):

  Per connection, a readers-writer order over the connection's whole view
  of the file system (its I{connection key}), plus a key per open handle.

  - I{Readers} change nothing another request can observe: READ, FSTAT,
    STAT, LSTAT, READLINK, REALPATH, OPENDIR, READDIR, statvfs, fstatvfs,
    fsync, expand-path, and an OPEN that can neither create nor truncate.
    They hold the connection key shared: readers run together.
  - I{Writers} are every other request (WRITE, an OPEN that may create or
    truncate, SETSTAT, FSETSTAT, REMOVE, RENAME, MKDIR, RMDIR, SYMLINK and
    the extensions that change something).  They hold the connection key
    exclusive: a writer starts after every earlier request has ended, and
    before any later one starts.
  - So the results equal those of one-at-a-time processing in arrival
    order, whatever names (hard links, symlinks, renamed folders) the
    requests use: readers commute with each other.
  - Handle keys cover what the connection key does not: READ and FSTAT
    share their file's key, and READDIR holds its directory's key
    exclusive (the listing advances).
  - CLOSE holds its handle's key exclusive (it never races a request on
    the same descriptor), and not the connection key: closing changes
    nothing another request can observe, except what removing a name of
    a file still open does on some file systems (NFS, FUSE: the file is
    renamed to a hidden name, so its folder is not empty).  So CLOSE holds
    the connection's I{close key} shared, and the requests that remove or
    replace a name (REMOVE, RMDIR, RENAME, posix-rename) hold it exclusive
    besides the connection key: they wait for earlier CLOSEs, and later
    CLOSEs wait for them.  (sshfs sends a file's CLOSE without waiting for
    it, then creates the next file: that OPEN need not wait.)
  - An answer the reactor thread gives at once from what the kernel has in
    memory (a cached STAT, READ, OPENDIR, ...) is allowed only while no
    earlier writer waits or runs (L{KeyOrder.sharedFree}).
  - A directory is read ahead when opened.  A writer made after the OPENDIR
    and before the handle's first READDIR may have changed the listing:
    that READDIR reads the directory again from the start
    (L{ConnectionOrder.changes} counts the writers).
  - Requests of different connections are not ordered.

How calls wait (L{KeyOrder}): a call holds one or more keys, each shared or
exclusive.  It starts once every earlier call on one of its keys has
started and nothing incompatible runs on them; it waits in the queue of
each of its keys, queues in call order, so the earliest waiting call heads
all of its queues once the calls before it are done (no deadlock).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from itertools import count
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["Batch", "ConnectionOrder", "Job", "KeyOrder", "orderedKeys"]

# Process-wide numbering, so that keys never repeat: two connections (or
# two handles) of one engine never share a key.  They pass no state
# between layers.
_connections = count(1)
_handles = count(1)


class ConnectionOrder:
    """
    The keys of one connection's requests (see the module docstring).
    Used in one thread (the reactor's, or under the engine's lock).
    """

    def __init__(self) -> None:
        number = next(_connections)
        #: The key of the connection's view of the file system.
        self.key = b"\0connection %d" % number
        #: The key of its CLOSEs (shared) and of the requests that remove
        #: or replace a name (exclusive).
        self.closeKey = b"\0closes %d" % number
        #: How many writers were made so far.
        self.changes = 0

    def handleKey(self) -> bytes:
        """
        @return: a key for a new handle, never given before.
        """
        return b"\0handle %d" % next(_handles)

    def writer(self) -> bytes:
        """
        Count a writer made now (call it once per writer, in arrival
        order).

        @return: the connection key, for the writer to hold exclusive.
        """
        self.changes += 1
        return self.key

    def remover(self) -> tuple[bytes, bytes]:
        """
        Count a writer that removes or replaces a name, made now.

        @return: the connection key and the close key, for the writer to
            hold exclusive.
        """
        self.changes += 1
        return (self.key, self.closeKey)


class Batch:
    """
    What lets calls run as one (see L{KeyOrder.joining}): the calls made
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
    arguments, its result once made, and the Deferred the engine fires
    with it.
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
        ring: Any = None,
        solo: tuple[bytes, ...] = (),
        deferred: Deferred[Any] | None = None,
    ) -> None:
        """
        @param keys: its keys; repeats are dropped (in order).
        @param ring: how it may run in the kernel instead (a
            L{conchshare.sftp.engine.KernelCall}), for the engine.
        @param deferred: where the engine delivers its result.
        """
        if len(keys) > 1:
            keys = tuple(dict.fromkeys(keys))
        self.keys = keys
        self.shared = shared
        #: Keys held exclusive although C{shared}.
        self.solo = solo
        self.function = function
        self.args = args
        self.batch = batch
        self.ring = ring
        self.deferred = deferred
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


class _Key:
    __slots__ = ("running", "exclusive", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.exclusive = False
        self.waiting: deque[Job] = deque()


def _exclusive(job: Job, key: bytes) -> bool:
    # Whether job holds key exclusive.
    return not job.shared or key in job.solo


class KeyOrder:
    """
    The ordering state of every key in use.  Not thread-safe: its user
    holds a lock (L{conchshare.sftp.workers.Workers}) or stays in one
    thread.

    A L{Job} has C{keys} (no repeats), C{shared} (it holds them all
    shared) and C{solo} (keys it holds exclusive even so).
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, _Key] = {}
        #: How many calls wait (taken in, not started): when none do, no
        #: call can join another (L{joining} need not be asked).
        self.waiting = 0

    def __len__(self) -> int:
        """
        The number of keys in use (zero when idle).
        """
        return len(self._keys)

    def sharedFree(self, *keys: bytes) -> bool:
        """
        Whether a call holding C{keys} shared would start at once: nothing
        waits on them and nothing exclusive runs.
        """
        for key in keys:
            state = self._keys.get(key)
            if state is not None and (state.waiting or state.exclusive):
                return False
        return True

    def take(
        self,
        deferred: Deferred[Any],
        keys: tuple[bytes, ...],
        shared: bool,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        batch: Batch | None = None,
        ring: Any = None,
        solo: tuple[bytes, ...] = (),
    ) -> tuple[Job, bool]:
        """
        Take a new call in (a L{Job} made of the arguments, see its
        constructor).

        @return: the job, and whether it may start now (as L{add}).
        """
        job = Job(keys, shared, function, args, batch, ring, solo, deferred)
        return job, self.add(job)

    def sharedFreeUnder(self, lock: AbstractContextManager[object]) -> Callable[..., bool]:
        """
        L{sharedFree}, taking C{lock} first: for an engine whose threads
        change the order, to give its callers as its own C{sharedFree} (one
        call, no hop through the engine: it is asked before every answer
        given from the kernel's caches).
        """
        sharedFree = self.sharedFree

        def sharedFreeLocked(*keys: bytes) -> bool:
            with lock:
                return sharedFree(*keys)

        return sharedFreeLocked

    def add(self, job: Job) -> bool:
        """
        Take C{job} in.

        @return: whether it may start now (it then counts as running);
            otherwise it waits until L{finish} returns it.
        """
        states: list[_Key] = []
        ready = True
        for key in job.keys:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _Key()
            elif state.waiting or (state.running and (state.exclusive or _exclusive(job, key))):
                ready = False
            states.append(state)
        if ready:
            for key, state in zip(job.keys, states, strict=True):
                state.running += 1
                state.exclusive = _exclusive(job, key)
        else:
            self.waiting += 1
            for state in states:
                state.waiting.append(job)
        return ready

    def finish(self, job: Job) -> list[Job]:
        """
        C{job}, which was running, is done.

        @return: the calls that may start now, in call order; they count
            as running.
        """
        for key in job.keys:
            state = self._keys[key]
            state.running -= 1
            if not state.running:
                state.exclusive = False
                if not state.waiting:
                    del self._keys[key]
        started: list[Job] = []
        check = list(job.keys)
        for key in check:  # grows as calls start
            waiting = self._keys.get(key)
            if waiting is None or not waiting.waiting:
                continue
            head = waiting.waiting[0]
            if self._startable(head):
                for headKey in head.keys:
                    headState = self._keys[headKey]
                    headState.waiting.popleft()
                    headState.running += 1
                    headState.exclusive = _exclusive(head, headKey)
                started.append(head)
                self.waiting -= 1
                # Its keys' next calls may run alongside it (shared).
                check.extend(head.keys)
        return started

    def alone(self, job: Job) -> bool:
        """
        Whether no call waiting right behind C{job} (running) could run
        as one with it (see L{joining}).
        """
        return self._next(job) is None

    def joining(self, job: Job) -> list[Job]:
        """
        C{job}, which was just started, and the calls waiting right behind
        it that its L{Batch} accepts: they count as started with it (and
        are done when L{finish} is called for C{job}).

        @return: C{job} first, then the calls taken, in call order.
        """
        jobs = [job]
        batch = job.batch
        while True:
            candidate = self._next(job)
            if candidate is None or batch is None or not batch.accepts(jobs, candidate):
                return jobs
            for key in job.keys:
                self._keys[key].waiting.popleft()
            self.waiting -= 1
            jobs.append(candidate)

    def _next(self, job: Job) -> Job | None:
        # The call waiting right behind job on every key of it, made with
        # the same batch and keys, exclusive: one that may join job.
        batch = job.batch
        if batch is None or job.shared:
            return None
        candidate = None
        for key in job.keys:
            waiting = self._keys[key].waiting
            if not waiting:
                return None
            head = waiting[0]
            if candidate is None:
                if head.batch is not batch or head.keys != job.keys or head.shared:
                    return None
                candidate = head
            elif head is not candidate:
                return None
        return candidate

    def _startable(self, job: Job) -> bool:
        for key in job.keys:
            state = self._keys[key]
            if state.waiting[0] is not job:
                return False
            if state.running and (state.exclusive or _exclusive(job, key)):
                return False
        return True


def orderedKeys(keys: Iterable[bytes]) -> tuple[bytes, ...]:
    """
    C{keys} without repeats, in order.
    """
    unique = tuple(keys)
    if len(unique) > 1:
        unique = tuple(dict.fromkeys(unique))
    return unique
