"""
conchshare run as a real process (L{Running}) against a throwaway sshd: its
command lines, the clients that reach its shares (OpenSSH's C{sftp}, a raw
SFTP client), and the base of the end-to-end tests that start it.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import CHECKOUT
from tests.support.sshd import ThrowawaySSHD, startForTest
from tests.support.wire import packet

#: twistd, run by this Python, with this checkout last on its path: twistd
#: finds plugins by scanning sys.path for twisted/plugins directories, where
#: a real install puts ours (and is found first) but an editable one does not.
TWISTD = [
    sys.executable,
    "-c",
    f"import sys; sys.path.append({CHECKOUT!r});"
    " from twisted.scripts.twistd import run; sys.exit(run())",
]


#: Seconds any single wait may take before the test fails.
WAIT = 30.0


def shortTempDir(testCase: TestCase) -> str:
    """
    A fresh private directory with a short path (Unix socket paths are
    limited to 107 bytes; trial's are long).
    """
    path = tempfile.mkdtemp(prefix="cs-", dir="/tmp")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


class Running:
    """
    A conchshare process whose stdout lines are read in the background.

    @ivar events: every JSON event read so far.
    @ivar lines: every stdout line read so far.
    """

    def __init__(
        self, testCase: TestCase, argv: Sequence[str], command: Sequence[str] | None = None
    ):
        base = list(command) if command is not None else [sys.executable, "-m", "conchshare"]
        self.process = subprocess.Popen(
            base + list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._readErr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        testCase.addCleanup(self.close)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _readErr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def line(self, timeout: float = WAIT) -> str | None:
        """
        The next stdout line, or L{None} at end of output.
        """
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output within {timeout} s; so far: {self.lines!r}; stderr: {self.stderr}"
            )
        if line is not None:
            self.lines.append(line)
        return line

    def event(self, name: str, timeout: float = WAIT) -> dict[str, Any]:
        """
        Read events until one named C{name}; return it.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.1, deadline - time.monotonic()))
            if line is None:
                time.sleep(0.2)
                raise AssertionError(
                    f"exited ({self.process.poll()}) before {name!r}; events: {self.events!r};"
                    f" stderr: {self.stderr}"
                )
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == name:
                return event

    def rest(self, timeout: float = WAIT) -> list[str]:
        """
        Read stdout to its end; return the lines read by this call.
        """
        lines = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.1, deadline - time.monotonic()))
            if line is None:
                return lines
            lines.append(line)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def close(self) -> None:
        """
        Kill the process (and its session) if it still runs, let the readers
        reach the end of its output, and close the pipes.
        """
        self.kill()
        for reader in self._readers:
            reader.join(WAIT)
            if reader.is_alive():
                raise AssertionError(f"the output of {self.process.args!r} is still open")
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def reap(process: subprocess.Popen[Any]) -> None:
    """
    Kill C{process} if it still runs, wait for it and close its pipes.
    """
    if process.poll() is None:
        process.kill()
    with process:  # closes stdin, stdout and stderr, then waits
        pass


def printedSftp(command: str, script: str) -> subprocess.CompletedProcess[str]:
    """
    Run the C{sftp} command line a C{session-key} event printed, in batch
    mode, with C{script} as its commands.
    """
    argv = shlex.split(command)
    return subprocess.run(
        argv[:-1] + ["-o", "BatchMode=yes", "-b", "-", argv[-1]],
        input=script,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def holdOpen(case: Any, path: str, seconds: int = 30) -> subprocess.Popen[str]:
    """
    A process that holds C{path} open for C{seconds} (reaped at the end of
    C{case}), returned once it has opened it.
    """
    holder = subprocess.Popen(
        ["sh", "-c", f'exec 3<"$1"; echo ready; exec sleep {seconds}', "sh", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    case.addCleanup(reap, holder)
    assert holder.stdout is not None
    case.assertEqual(holder.stdout.readline(), "ready\n")
    return holder


def sshArgs(sshd: ThrowawaySSHD) -> list[str]:
    """
    The options that let conchshare log in to C{sshd} with nothing else set
    up (no ~/.ssh/config, no agent).
    """
    return [
        "-i",
        sshd.clientKeyPath,
        "--known-hosts",
        sshd.knownHostsPath,
        "-F",
        "none",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
    ]


def rawSftpCommand(port: int) -> list[str]:
    """
    The C{sftp} batch command that reaches a raw TCP forward through socat.
    """
    return ["sftp", "-b", "-", "-D", f"socat STDIO TCP:127.0.0.1:{port}"]


def rawSftp(port: int, batch: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """
    Run an C{sftp} batch against a raw forward (through socat).
    """
    return subprocess.run(
        rawSftpCommand(port), input=batch, capture_output=True, text=True, timeout=timeout
    )


def startRawSftp(testCase: TestCase, port: int, batch: str, stdout: int) -> subprocess.Popen[str]:
    """
    Start an C{sftp} batch against a raw forward and leave it running (it
    is reaped at cleanup); C{batch} is written and stdin closed.
    """
    client = subprocess.Popen(
        rawSftpCommand(port),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    testCase.addCleanup(reap, client)
    assert client.stdin is not None
    client.stdin.write(batch)
    client.stdin.close()
    return client


def fingerprint(publicKeyPath: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", publicKeyPath],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1]


class RawSFTPClient:
    """
    An SFTP client speaking the protocol itself over a raw TCP forward, to
    send many requests at once and hold what they open.
    """

    def __init__(self, testCase: TestCase, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        testCase.addCleanup(self.sock.close)
        self.buffer = b""
        self.sock.sendall(packet(1, struct.pack(">I", 3)))
        self.replies(1)

    def replies(self, count: int) -> list[bytes]:
        """
        The next C{count} reply packets (type byte first).
        """
        result = []
        while len(result) < count:
            if len(self.buffer) >= 4:
                (length,) = struct.unpack(">I", self.buffer[:4])
                if len(self.buffer) >= 4 + length:
                    result.append(self.buffer[4 : 4 + length])
                    self.buffer = self.buffer[4 + length :]
                    continue
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the server closed the connection")
            self.buffer += data
        return result

    def openMany(self, path: bytes, count: int) -> list[bytes]:
        """
        Send C{count} OPENs (read) of C{path} at once; their replies.
        """
        body = struct.pack(">I", len(path)) + path + struct.pack(">II", 1, 0)
        self.sock.sendall(b"".join(packet(3, struct.pack(">I", i) + body) for i in range(count)))
        return self.replies(count)

    def limits(self) -> tuple[int, ...]:
        """
        limits@openssh.com: max packet, read, write lengths, open handles.
        """
        name = b"limits@openssh.com"
        body = struct.pack(">I", 7) + struct.pack(">I", len(name)) + name
        self.sock.sendall(packet(200, body))
        (reply,) = self.replies(1)
        return struct.unpack(">QQQQ", reply[5:37])


class _Base(TestCase):
    timeout = 90
    sshdConfig: list[str] = []

    def setUp(self) -> None:
        self.sshd = startForTest(self, self.sshdConfig, needs=("socat", "sftp"))
        self.tmp = shortTempDir(self)
        self.share = os.path.join(self.tmp, "docs")
        os.mkdir(self.share)
        with open(os.path.join(self.share, "hello.txt"), "w") as f:
            f.write("hello from the local side\n")
        self.control = os.path.join(self.tmp, "ctl.sock")

    def share_(self, *extra: str, json_: bool = True) -> Running:
        args = ["share", *sshArgs(self.sshd), "--control", self.control]
        if json_:
            args.append("--json")
        return Running(self, args + list(extra) + [self.sshd.destination(), self.share])

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conchshare", "ctl", "--control", self.control, *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
