"""
The machinery of the differential test (L{tests.test_e2e_differential}):
SFTP servers driven as long-lived subprocesses on pipes, request sequences
over a small tree, and the replies normalised for comparison.

A sequence is a list of batches; each batch is a list of operations sent
together in one write (pipelined).  Operations name paths symbolically, so
one sequence runs the same on every server:

  - a path is C{b"name"} (relative: resolved from the starting directory,
    the served folder) or C{b"/name"} (absolute), below the sequence's own
    fresh folder;
  - a symlink target is C{("rel", b"name")} (stored as given),
    C{("abs", b"name")} (the absolute path of C{name}) or C{("out",)}
    (L{OUTSIDE}: a file outside the served folder);
  - a handle is the index of a file (C{OPEN}) or directory (C{OPENDIR})
    slot, counted over earlier batches; an operation on a slot that does
    not exist yet or was closed is not sent (OpenSSH reuses handle
    strings, which would alias a closed handle with a new one).
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from tests.support.processes import endProcess
from tests.support.wire import s, u32, u64

# Packet types and status codes (draft-ietf-secsh-filexfer-02).
INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT = 11, 12, 13, 14, 15, 16, 17
RENAME, READLINK, SYMLINK = 18, 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED = 101, 102, 103, 104, 105, 200
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE = 5
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20

#: The name of the one symlink that leaves the served folder.
OUT_LINK = b"x"

#: Seconds to wait for a reply before the server counts as hung.
REPLY_TIMEOUT = 20.0

Op = tuple[Any, ...]
Batch = list[Op]


def attrsBytes(attrs: dict[str, int]) -> bytes:
    """
    ATTRS with the fields of C{attrs} (size, permissions, atime and mtime).
    """
    flags, body = 0, b""
    if "size" in attrs:
        flags |= 1
        body += u64(attrs["size"])
    if "permissions" in attrs:
        flags |= 4
        body += u32(attrs["permissions"])
    if "atime" in attrs:
        flags |= 8
        body += u32(attrs["atime"]) + u32(attrs["mtime"])
    return u32(flags) + body


class ServerGone(Exception):
    """
    A server closed its output, hung, or answered something unparsable.
    """


class PipeServer:
    """
    One SFTP server subprocess on pipes, initialised, reused across
    sequences.

    @ivar name: what the reports call it.
    @ivar base: the served folder (bytes, absolute), as this server's
        clients see it (virtual paths equal real ones).
    """

    def __init__(self, name: str, argv: Sequence[str], base: bytes, umask: int) -> None:
        self.name = name
        self.base = base
        self.argv = list(argv)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *sys.path])
        self.stderrPath = os.fsdecode(base) + ".stderr"
        self._stderr = open(self.stderrPath, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=os.fsdecode(base),
            env=env,
            umask=umask,
        )
        self._buffer = b""
        self._write(struct.pack(">IBI", 5, INIT, 3))
        kind, _ = self._readPacket()
        if kind != VERSION:
            raise ServerGone(f"{name}: no VERSION")

    def _write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except OSError as e:
            raise ServerGone(f"{self.name}: writing failed: {e}")

    def _readPacket(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack_from(">I", self._buffer)
                if len(self._buffer) >= 4 + length:
                    body = self._buffer[4 : 4 + length]
                    self._buffer = self._buffer[4 + length :]
                    if not body:
                        raise ServerGone(f"{self.name}: empty packet")
                    return body[0], body[1:]
            assert self.process.stdout is not None
            fd = self.process.stdout.fileno()
            ready, _, _ = select.select([fd], [], [], REPLY_TIMEOUT)
            if not ready:
                raise ServerGone(f"{self.name}: no reply within {REPLY_TIMEOUT} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise ServerGone(f"{self.name}: output closed (exit {self.process.poll()})")
            self._buffer += chunk

    def exchange(self, packets: list[bytes]) -> dict[int, tuple[int, bytes]]:
        """
        Send C{packets} in one write and read a reply to each.

        @return: the replies by request id: (type, body after the id).
        """
        self._write(b"".join(packets))
        replies: dict[int, tuple[int, bytes]] = {}
        while len(replies) < len(packets):
            kind, body = self._readPacket()
            if len(body) < 4:
                raise ServerGone(f"{self.name}: reply without an id")
            (rid,) = struct.unpack_from(">I", body)
            if rid in replies:
                raise ServerGone(f"{self.name}: two replies to request {rid}")
            replies[rid] = (kind, body[4:])
        return replies

    def close(self) -> None:
        """
        Close its stdin and wait for it to exit (see L{endProcess}).
        """
        endProcess(self.process)
        self._stderr.close()


class Run:
    """
    One sequence on one server: the request encoding, with this server's
    handles and paths.
    """

    def __init__(self, server: PipeServer, folder: bytes, outside: bytes) -> None:
        self.server = server
        self.folder = folder
        self.outside = outside
        self.files: list[bytes | None] = []
        self.dirs: list[bytes | None] = []
        self.nextId = 1
        #: The slot each OPEN and OPENDIR filled, by request id.
        self.opened: dict[int, tuple[list[bytes | None], int]] = {}
        #: Every handle opened, to close at the end.
        self.handles: list[bytes] = []
        #: The path each directory slot was opened with.
        self.dirPaths: list[bytes] = []

    def path(self, symbolic: bytes) -> bytes:
        if symbolic.startswith(b"/"):
            return self.server.base + b"/" + self.folder + symbolic
        return self.folder + b"/" + symbolic

    def target(self, target: tuple[Any, ...]) -> bytes:
        kind = target[0]
        if kind == "rel":
            return bytes(target[1])
        if kind == "abs":
            return self.server.base + b"/" + self.folder + b"/" + bytes(target[1])
        return self.outside

    def _slot(self, table: list[bytes | None], index: int) -> bytes | None:
        # None: not sent.  A slot whose open failed gets a handle no
        # server ever gives.
        if index >= len(table):
            return None
        handle = table[index]
        return b"not-a-handle" if handle == b"" else handle

    def encode(self, op: Op, closed: set[tuple[str, int]]) -> bytes | None:
        """
        The packet of C{op} (with the next request id), or L{None} when it
        is not sent.
        """
        kind = op[0]
        rid = self.nextId
        body: bytes
        if kind == "open":
            _, path, flags, perms = op
            attrs = {} if perms is None else {"permissions": perms}
            packet, body = OPEN, s(self.path(path)) + u32(flags) + attrsBytes(attrs)
        elif kind == "opendir":
            packet, body = OPENDIR, s(self.path(op[1]))
        elif kind in ("close", "read", "write", "fstat", "fsetstat", "readdir"):
            if kind == "close":
                label, index = op[1], op[2]
            else:
                label, index = ("d" if kind == "readdir" else "f"), op[1]
            table = self.dirs if label == "d" else self.files
            if (label, index) in closed:
                return None
            handle = self._slot(table, index)
            if handle is None:
                return None
            if kind == "close":
                closed.add((label, index))
                packet, body = CLOSE, s(handle)
            elif kind == "read":
                packet, body = READ, s(handle) + u64(op[2]) + u32(op[3])
            elif kind == "write":
                packet, body = WRITE, s(handle) + u64(op[2]) + s(op[3])
            elif kind == "fstat":
                packet, body = FSTAT, s(handle)
            elif kind == "fsetstat":
                packet, body = FSETSTAT, s(handle) + attrsBytes(op[2])
            else:
                packet, body = READDIR, s(handle)
        elif kind in ("stat", "lstat", "remove", "rmdir", "realpath", "readlink"):
            packet = {
                "stat": STAT,
                "lstat": LSTAT,
                "remove": REMOVE,
                "rmdir": RMDIR,
                "realpath": REALPATH,
                "readlink": READLINK,
            }[kind]
            body = s(self.path(op[1]))
        elif kind == "setstat":
            packet, body = SETSTAT, s(self.path(op[1])) + attrsBytes(op[2])
        elif kind == "mkdir":
            attrs = {} if op[2] is None else {"permissions": op[2]}
            packet, body = MKDIR, s(self.path(op[1])) + attrsBytes(attrs)
        elif kind == "rename":
            packet, body = RENAME, s(self.path(op[1])) + s(self.path(op[2]))
        elif kind in ("posix-rename", "hardlink"):
            name = (
                b"posix-rename@openssh.com" if kind == "posix-rename" else b"hardlink@openssh.com"
            )
            packet, body = EXTENDED, s(name) + s(self.path(op[1])) + s(self.path(op[2]))
        elif kind == "symlink":
            # OpenSSH's order: target, then the link's path.
            packet, body = SYMLINK, s(self.target(op[1])) + s(self.path(op[2]))
        else:
            raise ValueError(f"unknown operation {op!r}")
        self.nextId += 1
        return struct.pack(">IBI", len(body) + 5, packet, rid) + body

    def start(self) -> None:
        """
        Make the sequence's fresh folder.
        """
        body = s(self.folder) + u32(0)
        replies = self.server.exchange([struct.pack(">IBI", len(body) + 5, MKDIR, 0) + body])
        if replies[0] != (STATUS, u32(FX_OK) + replies[0][1][4:]):
            raise ServerGone(f"{self.server.name}: MKDIR {self.folder!r} failed")

    def finish(self) -> None:
        """
        Close every handle the sequence opened (servers limit how many are
        open at once); the replies are not compared.
        """
        packets = []
        for handle in self.handles:
            packets.append(struct.pack(">IBI", len(handle) + 9, CLOSE, self.nextId) + s(handle))
            self.nextId += 1
        if packets:
            self.server.exchange(packets)

    def unusable(self, rid: int) -> None:
        """
        Make the slot request C{rid} opened unusable (it opened on some
        servers only, for a listed difference: later requests on it would
        differ for that reason alone).
        """
        table, index = self.opened[rid]
        table[index] = b""

    def runBatch(
        self, batch: Batch, closed: set[tuple[str, int]]
    ) -> list[tuple[Op, int, tuple[int, bytes]]]:
        """
        Send the batch in one write.

        @return: C{(op, request id, (reply type, reply body))} for each
            operation sent, in order.
        """
        sent: list[tuple[Op, int]] = []
        packets = []
        for op in batch:
            packet = self.encode(op, closed)
            if packet is not None:
                packets.append(packet)
                sent.append((op, self.nextId - 1))
        replies = self.server.exchange(packets) if packets else {}
        result = []
        for op, rid in sent:
            if rid not in replies:
                raise ServerGone(f"{self.server.name}: no reply to request {rid}")
            reply = replies[rid]
            result.append((op, rid, reply))
            if op[0] in ("open", "opendir"):
                table = self.files if op[0] == "open" else self.dirs
                # What is opened through the link leaving DIR is not used:
                # OpenSSH opens it, we refuse (a listed difference).
                if reply[0] == HANDLE:
                    self.handles.append(reply[1][4:])
                usable = reply[0] == HANDLE and op[1] != OUT_LINK
                table.append(reply[1][4:] if usable else b"")
                self.opened[rid] = (table, len(table) - 1)
                if op[0] == "opendir":
                    self.dirPaths.append(op[1])
        # Slots are counted the same on every server: one per OPEN sent.
        return result


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u32(self) -> int:
        (v,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(v)

    def u64(self) -> int:
        (v,) = struct.unpack_from(">Q", self.data, self.at)
        self.at += 8
        return int(v)

    def string(self) -> bytes:
        n = self.u32()
        v = self.data[self.at : self.at + n]
        self.at += n
        return v

    def attrs(self) -> dict[str, int]:
        flags = self.u32()
        out: dict[str, int] = {}
        if flags & 1:
            out["size"] = self.u64()
        if flags & 2:
            out["uid"], out["gid"] = self.u32(), self.u32()
        if flags & 4:
            out["permissions"] = self.u32()
        if flags & 8:
            out["atime"], out["mtime"] = self.u32(), self.u32()
        if flags & 0x80000000:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return out


class _Every:
    """
    Every time (for L{normalise}: keep them all).
    """

    def __contains__(self, value: object) -> bool:
        return True


#: Keep every time in L{normalise}.
EVERY_TIME: Any = _Every()


def normalise(
    op: Op, reply: tuple[int, bytes], base: bytes, folder: bytes, setTimes: set[int]
) -> tuple[Any, ...]:
    """
    A reply with what may differ between servers taken out: handle strings,
    status messages, long names, atimes and the mtimes not in C{setTimes}
    (L{EVERY_TIME}: every time kept), C{.} and C{..}
    among READDIR entries (which compare as a set), and the served folder
    and sequence folder in names.
    """
    kind, body = reply
    r = _Reader(body)
    prefix = base + b"/" + folder

    def name(path: bytes) -> bytes:
        if path == prefix or path.startswith(prefix + b"/"):
            return b"<SEQ>" + path[len(prefix) :]
        if path == base or path.startswith(base + b"/"):
            return b"<DIR>" + path[len(base) :]
        return path

    def attrs(a: dict[str, int]) -> tuple[tuple[str, int], ...]:
        # An atime may change by a READ (relatime) that overlaps a request
        # that only looks: compared only where the caller keeps every time.
        if "atime" in a and not isinstance(setTimes, _Every):
            a["atime"] = -1
        if "mtime" in a and a["mtime"] not in setTimes:
            a["mtime"] = -1
        return tuple(sorted(a.items()))

    if kind == STATUS:
        return ("status", r.u32())
    if kind == HANDLE:
        return ("handle",)
    if kind == DATA:
        return ("data", r.string())
    if kind == ATTRS:
        return ("attrs", attrs(r.attrs()))
    if kind == NAME:
        count = r.u32()
        entries = []
        for _ in range(count):
            filename = r.string()
            r.string()  # the long name
            entries.append((filename, attrs(r.attrs())))
        if op[0] == "readdir":
            listed = frozenset(e for e in entries if e[0] not in (b".", b".."))
            return ("names", listed) if listed else ("status", FX_EOF)
        return ("name", tuple((name(f), a) for f, a in entries))
    return ("other", kind, body)
