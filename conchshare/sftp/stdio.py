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
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

PROGRAM = "conchshare sftp-server"

# OpenSSH's sftp-server -l levels; QUIET logs nothing.
LEVELS: dict[str, LogLevel | None] = {
    "QUIET": None,
    "FATAL": LogLevel.critical,
    "ERROR": LogLevel.error,
    "INFO": LogLevel.info,
    "VERBOSE": LogLevel.info,
    "DEBUG": LogLevel.debug,
    "DEBUG1": LogLevel.debug,
    "DEBUG2": LogLevel.debug,
    "DEBUG3": LogLevel.debug,
}


class SFTPServerOptions(usage.Options):
    """
    The command line of C{conchshare sftp-server}.
    """

    synopsis = (
        f"Usage: {PROGRAM} [--share SHARE]... [SHARE...] [--read-only] [--umask UMASK] [-l LEVEL]"
    )
    longdesc = (
        "Speak SFTP version 3 on standard input and output, serving the shares "
        "(NAME=PATH, NAME=PATH:ro, or PATH; the current directory when none is given)."
    )
    optFlags = [["read-only", "R", "Make every share read-only."]]
    optParameters = [
        ["umask", "u", "022", "Removed from the permissions of created files (octal)."],
        ["log-level", "l", "QUIET", "Log to stderr at this level: " + ", ".join(LEVELS) + "."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["shares"] = []

    def opt_share(self, spec: str) -> None:
        """
        Share a folder: NAME=PATH, NAME=PATH:ro or PATH (repeatable).
        """
        self["shares"].append(spec)

    opt_s = opt_share

    def parseArgs(self, *shares: str) -> None:
        self["shares"].extend(shares)

    def postOptions(self) -> None:
        try:
            umask = int(self["umask"], 8)
        except ValueError:
            raise usage.UsageError(f"The umask {self['umask']!r} is not an octal number.")
        if not 0 <= umask <= 0o777:
            raise usage.UsageError(f"The umask {self['umask']!r} is out of range (000 to 777).")
        self["umask"] = umask
        level = self["log-level"].upper()
        if level not in LEVELS:
            raise usage.UsageError(
                f"Unknown log level {self['log-level']!r}; use one of {', '.join(LEVELS)}."
            )
        self["log-level"] = level


def _fail(stderr: TextIO, message: str) -> int:
    stderr.write(f"{PROGRAM}: {message}\n")
    return 2


def startLogging(level: LogLevel | None, stderr: TextIO) -> None:
    """
    Send log events at C{level} or above to C{stderr}; none when C{level} is
    C{None}.  Standard output is left alone: it carries the protocol.
    """
    observers: list[ILogObserver] = []
    if level is not None:
        observers.append(
            FilteringLogObserver(
                textFileLogObserver(stderr),
                [LogLevelFilterPredicate(defaultLogLevel=level)],
            )
        )
    globalLogBeginner.beginLoggingTo(
        observers, discardBuffer=level is None, redirectStandardIO=False
    )


def main(argv: list[str], *, reactor: Any = None, stderr: TextIO | None = None) -> int:
    """
    Run C{conchshare sftp-server} until stdin closes.

    @param argv: the arguments after the command name.
    @param reactor: the reactor to run (default: the global one).
    @param stderr: where errors and logs go (default: C{sys.stderr}).
    @return: the exit code: 0 after stdin closed, 2 for a bad command line
        or share.
    """
    if stderr is None:
        stderr = sys.stderr
    options = SFTPServerOptions()
    try:
        options.parseOptions(argv)  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        sentence = str(e).rstrip(".") + "."
        return _fail(stderr, f"{sentence[0].upper()}{sentence[1:]} See '{PROGRAM} --help'.")
    except SystemExit as e:
        # --help and --version print and exit inside usage.Options.
        return e.code if isinstance(e.code, int) else 0

    # Imported here: a bad command line must not pay for the filesystem code.
    from conchshare.sftp.avatar import ShareSFTPServer
    from conchshare.shares import ShareError

    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    try:
        server = ShareSFTPServer.fromSpecs(
            options["shares"],
            readOnly=options["read-only"],
            umask=options["umask"],
            reactor=reactor,
        )
    except ShareError as e:
        return _fail(stderr, str(e))

    level = LEVELS[options["log-level"]]
    startLogging(level, stderr)
    keepFreedMemory()
    serve(server, reactor, logRequests=level == LogLevel.debug)
    reactor.run()
    return 0


def serve(server: object, reactor: Any, *, logRequests: bool = False) -> None:
    """
    Serve C{server} on stdin/stdout; stop C{reactor} once the client is gone
    and every handle is closed.

    @param logRequests: log every request (at debug level).
    """
    from twisted.internet.stdio import StandardIO

    from conchshare.sftp.protocol import SFTPServerProtocol

    protocol = SFTPServerProtocol(server, logRequests=logRequests)
    for fd in (0, 1):
        _widenPipe(fd)
    standardIO = StandardIO(protocol, reactor=reactor)  # type: ignore[no-untyped-call]
    _readLarger(standardIO, protocol)
    if _writeEagerly(standardIO) and protocol.core is not None:
        # Any buffer will do: file data read into a bytearray is not copied.
        protocol.core.writesBuffers = True
    protocol.whenClosed().addCallback(lambda _: reactor.stop())


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
    once, each allocated in the reactor thread and freed once its WRITE is
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


_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16

#: Bytes asked of stdin per read: a whole large WRITE at once.
READ_SIZE = 1024 * 1024


def _widenPipe(fd: int) -> None:
    # A 1 MiB pipe (Linux's default pipe-max-size) instead of 64 KiB lets a
    # 256 KiB packet pass in one go.  Not a pipe, or not Linux: leave it.
    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is None:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, setSize, READ_SIZE)
    except OSError:
        pass


def _readLarger(standardIO: object, protocol: object = None) -> None:
    """
    Make StandardIO read up to L{READ_SIZE} bytes at a time instead of
    Twisted's 8 KiB (C{fdesc.readFromFD}): one reactor turn per 8 KiB made
    stdin the bottleneck of bulk uploads.

    The rest of a packet begun in an earlier read is read straight into the
    packet's own buffer (L{SFTPServerCore.receiveBuffer}), and what follows
    into the read buffer, in one C{readv}: that part of a large WRITE is
    not copied in user space.  (Reading only a little past it, so that
    every packet but its start is read in place, took one read and one
    reactor turn per packet, and more CPU than the copies it saved.)

    @param protocol: the L{SFTPServerProtocol} fed, whose core may take the
        rest of a packet directly.
    """
    reader: Any = getattr(standardIO, "_reader", None)
    if reader is None or not isinstance(getattr(reader, "fd", None), int):
        return
    from twisted.internet import main as connectionStatus

    # One buffer, read into again and again: no allocation (and page
    # faults) per read.  The protocol copies what it keeps.
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)

    def doRead() -> object:
        core: Any = getattr(protocol, "core", None)
        room = core.receiveBuffer() if core is not None else None
        direct = 0
        try:
            if room is None:
                count = os.readv(reader.fd, (buffer,))
            else:
                with room:
                    direct = len(room)
                    count = os.readv(reader.fd, (room, buffer))
                direct = min(direct, count)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return connectionStatus.CONNECTION_LOST
        if not count:
            return connectionStatus.CONNECTION_DONE
        if direct:
            core.receivedInto(direct)
        if count > direct:
            with view[: count - direct] as output:
                reader.dataReceived(output)
        return None

    reader.doRead = doRead


def _writeEagerly(standardIO: object) -> bool:
    """
    Make StandardIO write a reply at once when nothing is queued, instead of
    waiting a reactor turn for stdout to poll writable: each small reply
    cost an extra poll and two epoll registrations, on the critical path of
    every metadata round trip (sshfs).  Whatever does not fit goes through
    Twisted's buffered write, which keeps order and backpressure.  Both take
    any buffer (C{bytearray} too).

    @return: whether StandardIO was patched.
    """
    writer: Any = getattr(standardIO, "_writer", None)
    if writer is None or not isinstance(getattr(writer, "fd", None), int):
        return False
    bufferedWrite = writer.write

    def write(data: bytes) -> None:
        if (
            not data
            or len(writer.dataBuffer) > writer.offset
            or writer._tempDataLen
            or not writer.connected
            or writer.disconnecting
        ):
            bufferedWrite(bytes(data))
            return
        try:
            written = os.write(writer.fd, data)
        except OSError:
            # EAGAIN, or an error the buffered path reports properly.
            written = 0
        if written < len(data):
            bufferedWrite(bytes(data[written:]))

    def writeSequence(pieces: list[bytes]) -> None:
        # Several replies (or a DATA header and its data): one writev, no
        # joining copy.
        if len(pieces) > _IOV_MAX:
            for piece in pieces:
                write(piece)
            return
        if (
            len(writer.dataBuffer) > writer.offset
            or writer._tempDataLen
            or not writer.connected
            or writer.disconnecting
        ):
            for piece in pieces:
                bufferedWrite(bytes(piece))
            return
        try:
            written = os.writev(writer.fd, pieces)
        except OSError:
            written = 0
        for piece in pieces:
            if written >= len(piece):
                written -= len(piece)
                continue
            bufferedWrite(bytes(piece[written:] if written else piece))
            written = 0

    writer.write = write
    writer.writeSequence = writeSequence
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
