"""
An SFTP server core (L{conchshare.sftp.core.SFTPServerCore}) fed bytes
by hand: what it writes, and whether it paused, resumed or disconnected.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from conchshare.sftp.core import SFTPServerCore
from tests.support.sftpfake import FakeSFTPServer
from tests.support.wire import INIT


class Harness:
    """
    One core with its avatar, recording what it writes and asks for.
    """

    def __init__(self, avatar: object | None = None, **options: int) -> None:
        self.avatar = avatar if avatar is not None else FakeSFTPServer()
        self.out = bytearray()
        self.pauses = 0
        self.resumes = 0
        self.disconnects = 0
        self._writeWaiters: list[Deferred[None]] = []
        self.core = SFTPServerCore(
            self.avatar,
            self._write,
            pauseReading=self._pause,
            resumeReading=self._resume,
            disconnect=self._disconnect,
            **options,
        )

    def _write(self, data: bytes) -> None:
        self.out.extend(data)
        waiters, self._writeWaiters = self._writeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenWritten(self) -> Deferred[None]:
        """
        Fire once the core writes again (a reply delivered later, from a
        worker or the ring, through the reactor).
        """
        waiter: Deferred[None] = Deferred()
        self._writeWaiters.append(waiter)
        return waiter

    def _pause(self) -> None:
        self.pauses += 1

    def _resume(self) -> None:
        self.resumes += 1

    def _disconnect(self) -> None:
        self.disconnects += 1

    def feed(self, data: bytes) -> None:
        self.core.dataReceived(data)

    def take(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out

    def init(self) -> bytes:
        self.feed(INIT)
        return self.take()
