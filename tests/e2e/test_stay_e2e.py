"""
Staying up (issue 12), end to end against a throwaway sshd: the reason
given when keep-alives declare the peer dead, what a client is told when
the share's disk is full, and a mount that survives the old connection
coming back.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import struct
import subprocess
import time

from twisted.trial.unittest import SkipTest

from tests.support.command import WAIT, Running, _Base, holdOpen
from tests.support.mounting import (
    _MountBase,
    forceUnmount,
    readRemote,
)
from tests.support.sshd import ThrowawaySSHD
from tests.support.workload import inMountTable

#: Keep-alives every second, two unanswered ones end the connection.
FAST_KEEPALIVE = ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"]


def sessionPids(sshd: ThrowawaySSHD) -> list[int]:
    """
    The per-connection sshd children of C{sshd} (one per connection).
    """
    process = sshd.process
    assert process is not None
    out = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, timeout=WAIT
    ).stdout
    return [int(pid) for pid in out.split()]


def stopSessions(testCase: _Base | _MountBase) -> list[int]:
    """
    SIGSTOP every connection's sshd child (a peer that stops answering
    without closing anything); they are continued at cleanup at the latest.
    """
    pids = sessionPids(testCase.sshd)
    testCase.assertTrue(pids, "no sshd session process to stop")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    testCase.addCleanup(continueSessions, pids)
    return pids


def continueSessions(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class DeadPeerTests(_Base):
    def test_deadPeerReason(self) -> None:
        """
        When keep-alives go unanswered, C{reconnecting} says so (the peer
        is dead, N keep-alives unanswered), not how the socket was closed.
        """
        running = self.share_("--mode", "raw", *FAST_KEEPALIVE)
        running.event("forwarding")
        stopSessions(self)
        reconnecting = running.event("reconnecting")
        self.assertIn("keep-alives unanswered", reconnecting["reason"])
        self.assertIn("not responding", reconnecting["reason"])
        self.assertNotIn("abortConnection", reconnecting["reason"])
        running.event("forwarding")
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)


# -- a raw SFTP v3 client, to see the status message a client receives -----


def _packet(kind: int, requestId: int, body: bytes) -> bytes:
    payload = bytes((kind,)) + struct.pack(">L", requestId) + body
    return struct.pack(">L", len(payload)) + payload


def _string(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


def _receive(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = sock.recv(n - len(data))
            if not more:
                raise EOFError("the server closed the connection")
            data += more
        return data

    (length,) = struct.unpack(">L", exactly(4))
    return exactly(length)


def uploadStatuses(port: int, path: bytes, size: int) -> list[tuple[int, bytes]]:
    """
    Upload C{size} bytes to C{path} through a raw SFTP forward, 32 KiB per
    WRITE, 16 in flight, then close the handle.

    @return: the C{(code, message)} of every status that was not OK, in the
        order received (the CLOSE's last).
    """
    failures: list[tuple[int, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(struct.pack(">LBL", 5, 1, 3))  # INIT, version 3
        _receive(sock)
        sock.sendall(_packet(3, 1, _string(path) + struct.pack(">LL", 0x1A, 0)))
        reply = _receive(sock)
        if reply[0] != 102:  # HANDLE
            raise AssertionError(f"OPEN failed: {reply!r}")
        handle = reply[9 : 9 + struct.unpack(">L", reply[5:9])[0]]
        chunk = b"x" * 32768
        offsets = list(range(0, size, len(chunk)))
        inFlight = 0

        def collect() -> None:
            reply = _receive(sock)
            (code,) = struct.unpack(">L", reply[5:9])
            if code:
                length = struct.unpack(">L", reply[9:13])[0]
                failures.append((code, reply[13 : 13 + length]))

        for index, offset in enumerate(offsets):
            body = _string(handle) + struct.pack(">Q", offset) + _string(chunk)
            sock.sendall(_packet(6, 10 + index, body))
            inFlight += 1
            if inFlight == 16:
                collect()
                inFlight -= 1
        while inFlight:
            collect()
            inFlight -= 1
        sock.sendall(_packet(4, 2, _string(handle)))
        collect()
    return failures


class FullDiskTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        if os.geteuid() != 0:
            raise SkipTest("mounting a small tmpfs needs root")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.share],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        if result.returncode != 0:
            raise SkipTest(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.addCleanup(
            subprocess.run, ["umount", "-l", self.share], capture_output=True, timeout=WAIT
        )

    def test_fullDisk(self) -> None:
        """
        A full disk reaches the client as C{FX_FAILURE} (v3 has no code for
        it) with the system's message, "No space left on device".
        """
        running = self.share_("--mode", "raw")
        port = running.event("forwarding")["port"]
        failures = uploadStatuses(port, b"/docs/big", 4 * 1024 * 1024)
        self.assertTrue(failures, "the upload to a 1 MiB disk succeeded")
        for code, message in failures:
            self.assertEqual((code, message), (4, b"No space left on device"))
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)


class MountComesBackTests(_MountBase):
    def test_peerComesBack(self) -> None:
        """
        A file held open in the mount; the connection's sshd child stops
        answering (SIGSTOP): keep-alives notice, conchshare reconnects and
        remounts.  When the old child is continued (its sshfs ends at
        last), the new mount stays: no C{unmounted} event, the mount point
        still lists and reads, and nothing was mounted twice there.
        """
        at = os.path.join(self.tmp, "mnt")
        self.addCleanup(forceUnmount, at)
        running = Running(self, self.mountArgs(at)[:1] + FAST_KEEPALIVE + self.mountArgs(at)[1:])
        self.assertEqual(running.event("mounted")["remote_path"], at)
        holdOpen(self, os.path.join(at, "hello.txt"), 60)

        stopped = stopSessions(self)
        reconnecting = running.event("reconnecting")
        self.assertIn("keep-alives unanswered", reconnecting["reason"])
        self.assertEqual(running.event("mounted")["remote_path"], at)
        self.assertEqual(readRemote(os.path.join(at, "hello.txt")), "hello from the local side\n")

        continueSessions(stopped)
        deadline = time.monotonic() + 6
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = running._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self.fail(f"conchshare ended: {running.stderr}")
            event = json.loads(line)
            running.events.append(event)
            self.assertNotEqual(event["event"], "unmounted", event)
        self.assertTrue(inMountTable(at))
        self.assertEqual(readRemote(os.path.join(at, "hello.txt")), "hello from the local side\n")
        self.stopped(running, at)
        self.assertFalse(inMountTable(at))
