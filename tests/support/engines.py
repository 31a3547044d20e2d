"""
The engines that run an avatar's calls, set up for a test: a runner that
holds every call until the test runs it (L{ManualRunner}), C{conchshare
sftp-server}'s engine on a pair of pipes (L{Served}), and a fresh epoll
reactor, Twisted's or conchshare's polling one (L{epollReactor},
L{spinningReactor}).
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare.sftp import wire
from conchshare.sftp.avatar import ShareSFTPServer
from conchshare.sftp.threaded import ThreadedServer
from conchshare.shares import ShareSet
from tests.support.wire import INIT


class ManualRunner:
    """
    A runner that holds every call until the test runs it.
    """

    def __init__(self) -> None:
        self.calls: list[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred[Any]]
        ] = []

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((function, args, kwargs, d))
        return d

    def runNext(self) -> None:
        function, args, kwargs, d = self.calls.pop(0)
        try:
            result = function(*args, **kwargs)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)


def epollReactor(case: SynchronousTestCase) -> Any:
    """
    A new (not installed) epoll reactor, its poller closed after C{case};
    skips C{case} where there is none.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        raise SkipTest("No epoll reactor here")
    reactor: Any = EPollReactor()  # type: ignore[no-untyped-call]
    case.addCleanup(reactor._poller.close)
    return reactor


def spinningReactor(case: SynchronousTestCase) -> Any:
    """
    A new (not installed) L{conchshare.spinreactor.SpinningEPollReactor},
    its poller closed after C{case}; skips C{case} where there is no epoll.
    """
    try:
        from conchshare.spinreactor import SpinningEPollReactor
    except ImportError:
        raise SkipTest("No epoll reactor here")
    reactor: Any = SpinningEPollReactor()
    case.addCleanup(reactor._poller.close)
    return reactor


#: Seconds any single wait of a test may take.
TIMEOUT = 10.0


class Served:
    """
    A L{ThreadedServer} serving the share C{s} (one file, C{f}) on a pair of
    pipes, from its own thread, as C{main} serves stdin and stdout.
    """

    def __init__(self, base: str, *, threads: int = 4, maxInFlight: int = 64) -> None:
        os.makedirs(os.path.join(base, "s"))
        with open(os.path.join(base, "s", "f"), "wb") as f:
            f.write(b"0123456789")
        self.threads = threads
        self.toServer = os.pipe()
        self.fromServer = os.pipe()
        self.engine = ThreadedServer(
            self.toServer[0], self.fromServer[1], threads=threads, maxInFlight=maxInFlight
        )
        self.avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["s"], cwd=base), engine=self.engine.engine
        )
        self.thread = threading.Thread(target=self.engine.serve, args=(self.avatar,), daemon=True)
        self.thread.start()
        self.received = b""
        self.inputOpen = True
        self.send(INIT)
        kind, _ = self.receive()
        assert kind == wire.FXP_VERSION

    def send(self, data: bytes) -> None:
        os.write(self.toServer[1], data)

    def closeInput(self) -> None:
        if self.inputOpen:
            self.inputOpen = False
            os.close(self.toServer[1])

    def receive(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """
        The next reply: its type and the rest of its body (request id
        first).  Fails after C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if len(self.received) >= 4:
                (length,) = struct.unpack(">I", self.received[:4])
                if len(self.received) >= 4 + length:
                    body = self.received[4 : 4 + length]
                    self.received = self.received[4 + length :]
                    return body[0], body[1:]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("No reply in time")
            readable, _, _ = select.select([self.fromServer[0]], [], [], left)
            if readable:
                chunk = os.read(self.fromServer[0], 65536)
                if not chunk:
                    raise AssertionError("The server closed its output")
                self.received += chunk

    def settle(self) -> None:
        """
        Wait until every serving thread but the one reading has nothing to
        do (as between requests of a long session).
        """
        deadline = time.monotonic() + TIMEOUT
        while self.engine._idle < self.threads - 1:
            if time.monotonic() > deadline:
                raise AssertionError("The serving threads never settled")
            time.sleep(0.001)

    def holdMakeDirectory(self) -> threading.Event:
        """
        Make every MKDIR wait (a slow disk) until the returned event is set
        (at most L{TIMEOUT}).  L{held} is set once one waits.
        """
        return self.hold("makeDirectory")

    def hold(self, name: str) -> threading.Event:
        """
        Make every call of the filesystem's method C{name} wait (a slow
        disk) until the returned event is set (at most L{TIMEOUT}).
        L{held} is set once one waits.
        """
        release = threading.Event()
        self.held = threading.Event()
        filesystem = self.avatar.filesystem
        method = getattr(filesystem, name)

        def slow(*args: object, **kwargs: object) -> object:
            self.held.set()
            release.wait(TIMEOUT)
            return method(*args, **kwargs)

        setattr(filesystem, name, slow)
        return release

    def stop(self) -> bool:
        """
        End the input; whether the server then finished serving in time.
        """
        self.closeInput()
        self.thread.join(TIMEOUT)
        finished = not self.thread.is_alive()
        for fd in (self.toServer[0], self.fromServer[0], self.fromServer[1]):
            try:
                os.close(fd)
            except OSError:
                pass
        return finished
