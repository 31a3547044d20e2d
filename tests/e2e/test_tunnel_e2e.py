"""
End-to-end through the reverse tunnel against a real OpenSSH sshd, in both
endpoint modes, with real clients (sftp, sshfs) on the "remote" side.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import threads
from twisted.trial import unittest

from conchshare.tunnel.connection import Listener
from conchshare.tunnel.sessionkey import InstalledSessionKey
from tests.support import sshd as sshdmodule
from tests.support.tunnelhelpers import _SSH_OPTIONS, _Base, connect, makeFile, run
from tests.support.workload import mountSshfs, runSshfsWorkload, sha256File, sshfsAvailable

skip = sshdmodule.available()


class RawModeTests(_Base):
    async def test_sftpBatch(self) -> None:
        """
        sftp through socat to the raw forward: put, get, ls, rename, rm.
        """
        _, listener = await self.raw()
        src = os.path.join(self.mktemp())
        digest = makeFile(src, 3 * 1024 * 1024 + 17)
        back = os.path.abspath(self.mktemp())
        code, out, err = await self.rawSftp(
            listener,
            f"put {src} /s/a\nls -l /s\nrename /s/a /s/b\nget /s/b {back}\nrm /s/b\nls /\n",
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(back), digest)
        self.assertEqual(os.listdir(self.share), [])
        self.assertIn(b"s", out)

    async def test_sftpOverUnixSocket(self) -> None:
        """
        A raw forward on a Unix socket: sftp through socat to the socket.
        """
        conn = await connect(self, self.sshd)
        listener = await conn.requestForward(Listener("raw", self.sftpFactory, streamlocal=True))
        digest = makeFile(os.path.join(self.share, "f"), 1024 * 1024 + 3)
        back = os.path.abspath(self.mktemp())
        code, out, err = await run(
            self,
            ["sftp", "-D", f"socat STDIO UNIX-CONNECT:{listener.socketPath}", "-b", "-"],
            f"get /s/f {back}\n".encode(),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(back), digest)

    async def test_ipv6Listener(self) -> None:
        """
        A forward on ::1 keeps its address string and is reachable there.
        """
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback")
        conn = await connect(self, self.sshd)
        events: list[dict[str, object]] = []
        conn.addObserver(events.append)
        listener = await conn.requestForward(Listener("raw", self.sftpFactory, address="::1"))
        self.assertEqual(listener.describe(), f"[::1]:{listener.port}")
        code, out, err = await run(
            self,
            ["sftp", "-D", f"socat STDIO TCP6:[::1]:{listener.port}", "-b", "-"],
            b"ls /\n",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"s", out)
        opened = [e for e in events if e["event"] == "channel-opened"]
        self.assertEqual(opened[0]["listener"], f"[::1]:{listener.port}")
        self.assertTrue(str(opened[0]["origin"]).startswith("[::1]:"))

    async def test_concurrentClients(self) -> None:
        """
        Several sftp clients at once on one forward each get their file.
        """
        _, listener = await self.raw()
        digests = {}
        for i in range(4):
            digests[i] = makeFile(os.path.join(self.share, f"f{i}"), 2 * 1024 * 1024 + i)
        outs = [os.path.abspath(self.mktemp()) for _ in range(4)]
        from twisted.internet.defer import gatherResults

        results = await gatherResults(
            [self.rawSftp(listener, f"get /s/f{i} {outs[i]}\n") for i in range(4)]
        )
        for i, (code, _, err) in enumerate(results):
            self.assertEqual(code, 0, err)
            self.assertEqual(sha256File(outs[i]), digests[i])

    async def test_sshfsDirectport(self) -> None:
        """
        sshfs -o directport on the raw forward runs the SFTP issue's workload.
        """
        why = sshfsAvailable()
        if why:
            raise unittest.SkipTest(why)
        _, listener = await self.raw()
        mnt = os.path.abspath(self.mktemp())
        os.makedirs(mnt)
        mount = await threads.deferToThread(
            mountSshfs, ["-o", f"directport={listener.port}", "127.0.0.1:/s"], mnt
        )
        self.addCleanup(mount.unmount)
        await threads.deferToThread(runSshfsWorkload, mnt, self.share, fileCount=300)


class NestedModeTests(_Base):
    async def test_sftpWithSessionKey(self) -> None:
        """
        The installed session key and known_hosts line let sftp in; the
        files are 0600 in a 0700 directory; stop removes them.
        """
        conn, listener, installed = await self.nested()
        self.assertEqual(os.stat(installed.directory).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(installed.keyPath).st_mode & 0o777, 0o600)
        digest = makeFile(os.path.join(self.share, "big"), 5 * 1024 * 1024)
        back = os.path.abspath(self.mktemp())
        code, out, err = await self.nestedSftp(installed, f"get /s/big {back}\nls /s\n")
        self.assertEqual(code, 0, err)
        self.assertEqual(sha256File(back), digest)
        await conn.stop()
        self.assertFalse(os.path.exists(installed.directory))

    async def test_wrongKeyRefused(self) -> None:
        """
        Another key is refused by the nested server.
        """
        _, listener, installed = await self.nested()
        other = os.path.abspath(self.mktemp())
        sshdmodule.keygen(other)
        args = ["sftp", "-P", str(installed.port), *_SSH_OPTIONS, "-o", f"IdentityFile={other}"]
        args += ["-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={installed.knownHostsPath}"]
        code, out, err = await run(self, args + ["-b", "-", "x@127.0.0.1"], b"ls\n")
        self.assertNotEqual(code, 0)
        self.assertIn(b"Permission denied", err)

    async def test_onlySftp(self) -> None:
        """
        Exec, shell, port forwarding (both ways) and agent forwarding are
        refused by the nested server; the sftp subsystem still works.
        """
        _, listener, installed = await self.nested()
        base = ["ssh", "-p", str(installed.port), *_SSH_OPTIONS, "-o", "ExitOnForwardFailure=yes"]
        for option in installed._options():
            base += ["-o", option]
        target = ["x@127.0.0.1"]
        code, out, err = await run(self, base + target + ["echo", "hi"], b"", timeout=20)
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"hi", out)
        code, out, err = await run(self, base + ["-tt"] + target, b"echo hi\nexit\n", timeout=20)
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"hi", out)
        code, out, err = await run(self, base + ["-N", "-R", "0:127.0.0.1:1"] + target, timeout=20)
        self.assertNotEqual(code, 0)
        self.assertIn(b"remote port forwarding failed", err)
        code, out, err = await run(self, base + ["-W", "127.0.0.1:1"] + target, b"", timeout=20)
        self.assertNotEqual(code, 0)
        self.assertIn(b"open failed", err)
        code, out, err = await self.nestedSftp(installed, "ls /\n")
        self.assertEqual(code, 0, err)

    async def test_sshfs(self) -> None:
        """
        sshfs with the printed options mounts the share and runs the workload.
        """
        why = sshfsAvailable()
        if why:
            raise unittest.SkipTest(why)
        _, listener, installed = await self.nested()
        mnt = os.path.abspath(self.mktemp())
        os.makedirs(mnt)
        args = ["-p", str(installed.port), "-o", ",".join(installed._options() + ["BatchMode=yes"])]
        mount = await threads.deferToThread(
            mountSshfs, args + [f"{installed.user}@127.0.0.1:/s"], mnt
        )
        self.addCleanup(mount.unmount)
        await threads.deferToThread(runSshfsWorkload, mnt, self.share, fileCount=300)

    def test_commandLines(self) -> None:
        """
        The printed command lines carry port, key and known_hosts.
        """
        installed = InstalledSessionKey(
            "/tmp/d", "/tmp/d/id_ed25519", "/tmp/d/known_hosts", 4022, "me"
        )
        self.assertEqual(
            installed.sshfsCommand("/docs", "/mnt/x"),
            "sshfs -p 4022 -o IdentityFile=/tmp/d/id_ed25519,IdentitiesOnly=yes,"
            "UserKnownHostsFile=/tmp/d/known_hosts,Ciphers=aes128-gcm@openssh.com "
            "me@127.0.0.1:/docs /mnt/x",
        )
        self.assertEqual(
            installed.sftpCommand(),
            "sftp -P 4022 -o IdentityFile=/tmp/d/id_ed25519 -o IdentitiesOnly=yes "
            "-o UserKnownHostsFile=/tmp/d/known_hosts -o Ciphers=aes128-gcm@openssh.com "
            "me@127.0.0.1",
        )
