"""
The SFTP core's handles: the requests that open them (OPEN, OPENDIR) and
list directories (READDIR), closing them all when the connection is lost
(L{HandleRequests}, a base class of L{conchshare.sftp.core.SFTPServerCore}),
open directories as the core holds them (L{OpenDirectory}: the avatar's
directory, the entries held over by the reply size cap, and the order of
its reads and close) and the NAME replies to READDIR (L{namesReply}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.sftp import wire
from conchshare.sftp.budget import HandleBudget
from conchshare.sftp.extensions import asBytes, noSuchHandle
from conchshare.sftp.interfaces import IEncodedDirectory, IShareDirectory

__all__ = ["READDIR_BATCH", "HandleRequests", "OpenDirectory", "namesReply"]

#: Entries asked of the avatar per READDIR, as OpenSSH's sftp-server sends.
READDIR_BATCH = 100


class _Serial:
    """
    Runs callables one after another (a directory's reads and close).
    """

    def __init__(self) -> None:
        self._tail: Deferred[None] = succeed(None)

    def run(self, call: Callable[[], object]) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()

        def step(_: object) -> Deferred[None]:
            d = maybeDeferred(call)
            d.addCallbacks(result.callback, result.errback)
            return d.addBoth(lambda _: None)

        self._tail.addCallback(step)
        return result


class OpenDirectory:
    """
    A directory handle: the avatar's object, entries encoded but held over
    by the reply size cap, and the order of its operations.
    """

    def __init__(self, obj: object) -> None:
        self.obj = obj
        self.heldOver: list[bytes] = []
        self.serial = _Serial()
        self._iterator: Iterator[object] | None = None
        self._batch: Callable[[int], object] | None = None
        #: L{readBatch} gives entries already encoded.
        self.encoded = False
        if IEncodedDirectory.providedBy(obj):
            self._batch = obj.readEncoded
            self.encoded = True
        elif IShareDirectory.providedBy(obj):
            self._batch = obj.readBatch
        else:
            self._iterator = iter(obj)  # type: ignore[call-overload]

    def readBatch(self, maximum: int) -> Deferred[Any]:
        """
        @return: a Deferred firing with a non-empty list of C{(filename,
            longname, attrs)} (encoded, if L{encoded}), or failing with
            L{EOFError}.
        """
        if self._batch is not None:
            return self.serial.run(lambda: self._batch(maximum) if self._batch else [])
        return self.serial.run(lambda: _iterateBatch(self._iterator, maximum))

    def close(self) -> Deferred[Any]:
        """
        @return: a Deferred firing when the avatar's directory is closed.
        """
        closer = getattr(self.obj, "close", None)
        return self.serial.run(closer if closer is not None else lambda: None)


def _iterateBatch(iterator: Iterator[object] | None, maximum: int) -> Deferred[list[Any]]:
    """
    Take up to C{maximum} entries from a stock Conch directory iterator,
    whose items may be Deferreds (stock Conch fails on those).
    """
    entries: list[Any] = []
    if iterator is None:
        return fail(EOFError())

    def take() -> Any:
        while len(entries) < maximum:
            try:
                item = next(iterator)
            except StopIteration:
                break
            if isinstance(item, Deferred):
                return item.addCallbacks(collected, ended)
            entries.append(item)
        if not entries:
            raise EOFError()
        return entries

    def collected(entry: object) -> Any:
        entries.append(entry)
        return take()

    def ended(reason: Failure) -> list[Any]:
        reason.trap(StopIteration)
        if not entries:
            raise EOFError()
        return entries

    return maybeDeferred(take)


def namesReply(requestId: int, directory: OpenDirectory, entries: list[Any]) -> bytes:
    """
    The NAME reply to a READDIR: the entries C{directory} held over, then
    C{entries}, up to what OpenSSH's client accepts; the rest is held over
    for the next READDIR.

    @raise EOFError: nothing to send.
    """
    if not entries and not directory.heldOver:
        # The contract says never empty; an empty batch still ends.
        raise EOFError()
    if directory.encoded:
        pending = directory.heldOver + entries
    else:
        pending = directory.heldOver + [
            wire.nameEntry(asBytes(filename), asBytes(longname), attrs)
            for filename, longname, attrs in entries
        ]
    # Keep the reply under what OpenSSH's client accepts; the rest is
    # sent on the next READDIR.
    room = wire.MAX_REPLY_LENGTH - 13
    if sum(map(len, pending)) <= room:
        directory.heldOver = []
        return wire.name(requestId, pending)
    count = 0
    for entry in pending:
        room -= len(entry)
        if room < 0 and count:
            break
        count += 1
    directory.heldOver = pending[count:]
    return wire.name(requestId, pending[:count])


class HandleRequests:
    """
    The handle table's requests: OPEN, OPENDIR and READDIR, the handles'
    registration, and closing every handle when the connection is lost.
    The part of L{conchshare.sftp.core.SFTPServerCore} (its base class)
    that works on its C{_files} and C{_dirs} (see the core's state rules);
    CLOSE and the requests on an open file are the core's own.
    """

    _log: Logger
    avatar: ISFTPServer
    _files: dict[bytes, ISFTPFile]
    _dirs: dict[bytes, OpenDirectory]
    _opening: int
    _nextHandle: int
    _maxOpenHandles: int
    _budget: HandleBudget
    _pendingCloses: int
    _inFlight: int
    _lostWaiters: list[Deferred[None]]

    @property
    def handlesHeld(self) -> int:
        """
        The handles this client holds in the budget: open, or being opened.
        """
        return len(self._files) + len(self._dirs) + self._opening

    def _checkIdle(self) -> None:
        raise NotImplementedError()

    def _newHandle(self) -> bytes:
        self._nextHandle += 1
        return b"%d" % self._nextHandle

    def _checkHandleRoom(self) -> None:
        if self.handlesHeld >= self._maxOpenHandles or not self._budget.mayOpen(self):
            raise SFTPError(wire.FX_FAILURE, "Too many open handles")

    def _registered(self, obj: object, requestId: int) -> bytes:
        self._opening -= 1
        handle = self._newHandle()
        # Looked up now: the tables are replaced when the connection is lost.
        if isinstance(obj, OpenDirectory):
            self._dirs[handle] = obj
        else:
            # What the avatar's openFile gave: an ISFTPFile, by its contract.
            self._files[handle] = cast(ISFTPFile, obj)
        return wire.reply(wire.FXP_HANDLE, requestId, wire.string(handle))

    def _openFailed(self, reason: Failure) -> Failure:
        self._opening -= 1
        return reason

    def _open(self, requestId: int, r: wire.Reader) -> Deferred[bytes]:
        filename, flags, attrs = r.string(), r.u32(), r.attrs()
        self._checkHandleRoom()
        self._opening += 1
        d = maybeDeferred(self.avatar.openFile, filename, flags, attrs)
        d.addCallbacks(self._registered, self._openFailed, callbackArgs=(requestId,))
        return d

    def _opendir(self, requestId: int, r: wire.Reader) -> Deferred[bytes]:
        path = r.string()
        self._checkHandleRoom()
        self._opening += 1
        d = maybeDeferred(self.avatar.openDirectory, path)
        d.addCallback(OpenDirectory)
        d.addCallbacks(self._registered, self._openFailed, callbackArgs=(requestId,))
        return d

    def _readdir(self, requestId: int, r: wire.Reader) -> Deferred[bytes]:
        handle = r.string()
        directory = self._dirs.get(handle)
        if directory is None:
            raise noSuchHandle()
        if directory.heldOver:
            return succeed(namesReply(requestId, directory, []))
        d = directory.readBatch(READDIR_BATCH)
        return d.addCallback(lambda entries: namesReply(requestId, directory, entries))

    # Closing everything when the connection is lost

    def _reap(self) -> None:
        files, self._files = self._files, {}
        dirs, self._dirs = self._dirs, {}
        closes: list[Deferred[Any]] = [maybeDeferred(f.close) for f in files.values()]
        closes.extend(directory.close() for directory in dirs.values())
        for d in closes:
            self._pendingCloses += 1
            d.addErrback(lambda f: self._log.failure("Closing an SFTP handle failed", f))
            d.addBoth(self._reaped)
        self._checkReaped()
        self._checkIdle()

    def _reaped(self, _: object) -> None:
        self._pendingCloses -= 1
        self._checkReaped()

    def _checkReaped(self) -> None:
        if self._inFlight == 0 and self._pendingCloses == 0 and self._opening == 0:
            waiters, self._lostWaiters = self._lostWaiters, []
            for waiter in waiters:
                waiter.callback(None)
