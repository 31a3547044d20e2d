"""
Pause, resume and stop across all channels with real clients (issue 3, 4):
transfers survive a pause longer than sshd's ClientAliveInterval x
ClientAliveCountMax, 100 pause/resume cycles, memory stays bounded while
paused, stop works while paused and while transfers run, a killed sshd is
reported without a hang.
"""

from __future__ import annotations

import os
import time

from twisted.internet import threads
from twisted.trial import unittest

from conchshare.sftp.avatar import ShareSFTPServer
from conchshare.sftp.protocol import SFTPServerProtocol
from conchshare.tunnel.channels import WINDOW_SIZE
from conchshare.tunnel.connection import Listener, ShareConnection
from conchshare.tunnel.nested import NestedSSHServer, loadOrCreateHostKey
from conchshare.tunnel.sessionkey import generateSessionKey, installSessionKey
from tests.support import sshd as sshdmodule
from tests.support.sshd import ThrowawaySSHD, portOpen
from tests.support.tunnelhelpers import connect, killSSHD, makeFile, run, sleep, waitFor
from tests.support.workload import mountSshfs, sha256File, sshfsAvailable

skip = sshdmodule.available()

SIZE = 64 * 1024 * 1024
# sshd drops a client that misses ClientAliveCountMax replies, one asked
# every ClientAliveInterval seconds: 2 s here; we hold pauses for 4 s.
KEEPALIVE = ["ClientAliveInterval 1", "ClientAliveCountMax 2"]
HOLD = 4.0


class PauseTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=KEEPALIVE)
        self.addCleanup(self.sshd.stop)
        self.share = os.path.abspath(self.mktemp())
        os.makedirs(self.share)
        self.avatar = ShareSFTPServer.fromSpecs([f"s={self.share}"])
        self.big = os.path.join(self.share, "big")
        self.digest = makeFile(self.big, SIZE)

    def sftpFactory(self) -> SFTPServerProtocol:
        return SFTPServerProtocol(self.avatar)

    async def raw(self) -> tuple[ShareConnection, Listener]:
        conn = await connect(self, self.sshd)
        listener = await conn.requestForward(Listener("raw", self.sftpFactory))
        return conn, listener

    def get(self, listener: Listener, target: str) -> object:
        return run(
            self,
            ["sftp", "-D", f"socat STDIO TCP:127.0.0.1:{listener.port}", "-b", "-"],
            f"get /s/big {target}\n".encode(),
            timeout=90,
        )

    def outBytes(self, conn: ShareConnection) -> int:
        return sum(c.bytesOut for c in conn.group)

    def assertBounded(self, conn: ShareConnection) -> None:
        for channel in conn.group:
            self.assertLessEqual(channel.keptBytes, WINDOW_SIZE)
            # What the SFTP server had in flight when the pause came.
            self.assertLess(channel.pendingOutput, 8 * 1024 * 1024)

    async def test_pauseDuringSftpGet(self) -> None:
        """
        A paused sftp download makes no progress for longer than sshd's
        keep-alive limit, keeps at most a window, then completes intact.
        """
        conn, listener = await self.raw()
        target = os.path.abspath(self.mktemp())
        done = self.get(listener, target)
        await waitFor(lambda: self.outBytes(conn) > 4 * 1024 * 1024)
        self.assertEqual(conn.pause(), 1)
        await sleep(0.5)
        size = os.path.getsize(target)
        await sleep(HOLD)
        self.assertEqual(os.path.getsize(target), size)
        self.assertBounded(conn)
        self.assertFalse(done.called)
        self.assertEqual(conn.resume(), 1)
        code, _, err = await done
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(target), self.digest)
        self.assertFalse(conn._lost)
        self.assertNotIn("Timeout, client not responding", self.sshd.log())

    async def test_pauseDuringSftpPut(self) -> None:
        """
        An upload paused for longer than the keep-alive limit completes
        intact; while paused the remote client sends at most a window.
        """
        conn, listener = await self.raw()
        target = os.path.join(self.share, "up")
        done = run(
            self,
            ["sftp", "-D", f"socat STDIO TCP:127.0.0.1:{listener.port}", "-b", "-"],
            f"put {self.big} /s/up\n".encode(),
            timeout=90,
        )
        await waitFor(lambda: sum(c.bytesIn for c in conn.group) > 4 * 1024 * 1024)
        conn.pause()
        await sleep(0.5)
        received = sum(c.bytesIn for c in conn.group)
        await sleep(HOLD)
        self.assertEqual(sum(c.bytesIn for c in conn.group), received)
        self.assertBounded(conn)
        conn.resume()
        code, _, err = await done
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(target), self.digest)

    async def test_hundredCycles(self) -> None:
        """
        100 pause/resume cycles during downloads (the file, eight times, in
        one session, so that the transfer outlasts the cycles): same bytes.
        """
        conn, listener = await self.raw()
        targets = [os.path.abspath(self.mktemp()) for _ in range(8)]
        done = run(
            self,
            ["sftp", "-D", f"socat STDIO TCP:127.0.0.1:{listener.port}", "-b", "-"],
            "".join(f"get /s/big {t}\n" for t in targets).encode(),
            timeout=90,
        )
        await waitFor(lambda: len(conn.group) == 1)
        cycles = 0
        while cycles < 100 and not done.called:
            # Counted only while the transfer's channel is there to pause.
            cycles += conn.pause()
            await sleep(0.02)
            conn.resume()
            await sleep(0.001)
        self.assertEqual(cycles, 100)
        code, _, err = await done
        self.assertEqual(code, 0, err)
        for target in targets:
            self.assertEqual(sha256File(target), self.digest)

    async def test_stopWhilePaused(self) -> None:
        """
        Stop while paused with a transfer running: returns promptly, the
        client gives up, the remote port is closed.
        """
        conn, listener = await self.raw()
        target = os.path.abspath(self.mktemp())
        done = self.get(listener, target)
        await waitFor(lambda: self.outBytes(conn) > 1024 * 1024)
        conn.pause()
        started = time.monotonic()
        await conn.stop(timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        code, _, _ = await done
        self.assertNotEqual(code, 0)
        self.assertFalse(portOpen(listener.port))

    async def test_stopDuringTransfers(self) -> None:
        """
        Stop while two transfers run (not paused): no hang, port closed.
        """
        conn, listener = await self.raw()
        first = self.get(listener, os.path.abspath(self.mktemp()))
        second = self.get(listener, os.path.abspath(self.mktemp()))
        await waitFor(lambda: len(conn.group) == 2 and self.outBytes(conn) > 1024 * 1024)
        await conn.stop(timeout=10)
        for d in (first, second):
            code, _, _ = await d
            self.assertNotEqual(code, 0)
        self.assertFalse(portOpen(listener.port))

    async def test_sshdKilled(self) -> None:
        """
        sshd killed mid-transfer: the connection reports its loss, the
        client ends, nothing hangs.
        """
        conn, listener = await self.raw()
        target = os.path.abspath(self.mktemp())
        done = self.get(listener, target)
        await waitFor(lambda: self.outBytes(conn) > 1024 * 1024)
        lost = conn.whenLost()
        killSSHD(self.sshd)
        await lost
        self.assertFalse(conn.stopping)
        self.assertEqual(len(conn.group), 0)
        code, _, _ = await done
        self.assertNotEqual(code, 0)
        # Stopping a lost connection is harmless.
        await conn.stop()

    async def test_pauseDuringNestedSshfsCopy(self) -> None:
        """
        ssh mode: sshfs reads a large file; paused longer than the
        keep-alive limit, resumed, the copy is intact.
        """
        why = sshfsAvailable()
        if why:
            raise unittest.SkipTest(why)
        conn = await connect(self, self.sshd)
        key = generateSessionKey()
        server = NestedSSHServer(loadOrCreateHostKey(None), [key.public()], self.sftpFactory)
        listener = await conn.requestForward(Listener("ssh", server.buildProtocol))
        installed = await installSessionKey(conn, key, server.hostKey, listener.port, "u")
        mnt = os.path.abspath(self.mktemp())
        os.makedirs(mnt)
        options = installed._options() + ["BatchMode=yes", "GlobalKnownHostsFile=/dev/null"]
        mount = await threads.deferToThread(
            mountSshfs, ["-p", str(listener.port), "-o", ",".join(options), "u@127.0.0.1:/s"], mnt
        )
        self.addCleanup(mount.unmount)
        target = os.path.abspath(self.mktemp())
        done = run(self, ["cp", os.path.join(mnt, "big"), target], timeout=90)
        await waitFor(lambda: os.path.exists(target) and os.path.getsize(target) > 4 << 20)
        conn.pause()
        await sleep(0.5)
        size = os.path.getsize(target)
        await sleep(HOLD)
        self.assertEqual(os.path.getsize(target), size)
        self.assertBounded(conn)
        conn.resume()
        code, _, err = await done
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(target), self.digest)
