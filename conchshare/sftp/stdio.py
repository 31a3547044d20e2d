"""
C{conchshare sftp-server}: SFTP v3 on stdin/stdout, like OpenSSH's
C{sftp-server}, for C{sftp -D} and C{sshfs -o passive}.

Stdout carries only the protocol; logs go to stderr, and only at the level
asked with C{-l} (quiet by default).
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
from typing import TextIO

from conchshare.errors import UsageError
from conchshare.options import LEVELS, SFTP_SERVER, parseSFTPServerArguments

PROGRAM = SFTP_SERVER


def _fail(stderr: TextIO, message: str) -> int:
    stderr.write(f"{PROGRAM}: {message}\n")
    return 2


def startLogging(level: str | None, stderr: TextIO) -> None:
    """
    Send log events at C{level} (a C{twisted.logger} level name) or above
    to C{stderr}; none when C{level} is C{None}.  Standard output is left
    alone: it carries the protocol.
    """
    from twisted.logger import (
        FilteringLogObserver,
        ILogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observers: list[ILogObserver] = []
    if level is not None:
        observers.append(
            FilteringLogObserver(
                textFileLogObserver(stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))],
            )
        )
    globalLogBeginner.beginLoggingTo(
        observers, discardBuffer=level is None, redirectStandardIO=False
    )


def main(argv: list[str], *, stderr: TextIO | None = None) -> int:
    """
    Run C{conchshare sftp-server} until stdin closes.

    @param argv: the arguments after the command name.
    @param stderr: where errors and logs go (default: C{sys.stderr}).
    @return: the exit code: 0 after stdin closed, 2 for a bad command line
        or share.
    """
    if stderr is None:
        stderr = sys.stderr
    try:
        options = parseSFTPServerArguments(argv)
    except UsageError as e:
        return _fail(stderr, str(e))
    except SystemExit as e:
        # --help and --version print and exit inside argparse.
        return e.code if isinstance(e.code, int) else 0

    # Imported here: a bad command line must not pay for the filesystem code.
    from conchshare.fdlimit import raiseFileLimit
    from conchshare.sftp.avatar import ShareSFTPServer
    from conchshare.sftp.threaded import ThreadedServer
    from conchshare.shares import ShareError

    # As many SFTP handles as the system allows (before any is opened).
    raiseFileLimit()
    level = LEVELS[options.logLevel]
    # A pipe to one client: served by threads that answer the requests they
    # read (see conchshare.sftp.threaded), not by a reactor.
    threaded = ThreadedServer(logRequests=level == "debug")
    try:
        server = ShareSFTPServer.fromSpecs(
            options.allShares,
            readOnly=options.readOnly,
            umask=options.umask,
            engine=threaded.engine,
        )
    except ShareError as e:
        return _fail(stderr, str(e))

    startLogging(level, stderr)
    from twisted.logger import Logger

    log = Logger(namespace="conchshare.sftp-server")

    def moved(share: object, message: str) -> None:
        log.error("{message}", message=message)

    server.filesystem.shareMoved = moved
    keepFreedMemory()
    for fd in (0, 1):
        _widenPipe(fd)
    try:
        threaded.serve(server)
    except KeyboardInterrupt:
        pass
    return 0


# glibc's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks this large or larger are mmapped (packets are at most 257 KiB).
MMAP_THRESHOLD = 1024 * 1024
#: Free memory at the top of the heap kept for later allocations.
TRIM_THRESHOLD = 64 * 1024 * 1024


def keepFreedMemory() -> bool:
    """
    Make glibc's malloc reuse the memory of freed packets for the next ones
    instead of giving it back to the kernel.

    A bulk upload keeps up to C{maxInFlight} packets of 256 KiB alive at
    once, each allocated in the reading thread and freed once its WRITE is
    done; with glibc's defaults the top of the heap is trimmed and grown
    again over and over, every page of a new packet faulting in (about a
    third of the data, 80,000 page faults per GiB).  Kept, the heap stays
    at the peak of what is in flight (C{maxInFlight} packets, 16 MiB).

    @return: whether malloc was tuned (glibc only).
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _widenPipe(fd: int) -> None:
    # A 1 MiB pipe (Linux's default pipe-max-size, and what the server asks
    # of stdin per read) instead of 64 KiB lets a 256 KiB packet pass in
    # one go.  Not a pipe, or not Linux: leave it.
    from conchshare.sftp.threaded import READ_SIZE

    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is None:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, setSize, READ_SIZE)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
