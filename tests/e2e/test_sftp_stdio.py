"""
Tests for C{conchshare sftp-server} (L{conchshare.sftp.stdio}): the protocol
on a real process's stdin/stdout, driven by raw requests and by OpenSSH's
C{sftp}.  Its command line is tested in L{tests.unit.test_sftp_stdio}.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import CHECKOUT
from tests.support.wire import INIT, extended, name1, ok, packets, request, s, u32, u64

ROOT = CHECKOUT


def runServer(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "conchshare.sftp.stdio", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


class ProcessTests(TestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        with open(os.path.join(self.folder, "a.txt"), "wb") as f:
            f.write(b"hello")

    def test_versionThenExit(self) -> None:
        """
        INIT on stdin gives VERSION on stdout; closing stdin exits 0, and
        nothing is logged by default.
        """
        result = runServer(["--share", "docs=" + self.folder], INIT)
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        (version,) = packets(result.stdout)
        self.assertEqual(version[4:9], b"\x02" + u32(3))
        self.assertIn(s(b"posix-rename@openssh.com") + s(b"1"), version)

    def test_pipelinedRequestsAnsweredBeforeExit(self) -> None:
        """
        Requests sent just before stdin closes are all answered: positional
        shares work, REALPATH of "." is the one share, STAT sees the file.
        """
        result = runServer(
            ["docs=" + self.folder],
            INIT + request(16, 1, s(b".")) + request(17, 2, s(b"/docs/a.txt")),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        replies = sorted(packets(result.stdout)[1:], key=lambda p: p[5:9])
        self.assertEqual(len(replies), 2)
        self.assertEqual(replies[0], name1(1, b"/docs"))
        self.assertEqual(replies[1][4:13], b"\x69" + u32(2) + u32(15))
        self.assertEqual(replies[1][13:21], u64(5))

    def test_logLevel(self) -> None:
        """
        With -l DEBUG the requests are logged to stderr; stdout still
        carries only the protocol.
        """
        result = runServer(
            ["-l", "DEBUG", "--read-only", "--share", "docs=" + self.folder],
            INIT + request(13, 1, s(b"/docs/a.txt")),
        )
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"SFTP request type 13 id 1", result.stderr)
        (version, refused) = packets(result.stdout)
        self.assertEqual(refused[4:13], b"\x65" + u32(1) + u32(3))
        self.assertTrue(os.path.exists(os.path.join(self.folder, "a.txt")))

    def test_shareFolderSwapLogged(self) -> None:
        """
        OpenSSH's C{sftp} on C{sftp-server -l ERROR}: once the share's
        folder is renamed away and a symlink to C{/} put in its place,
        nothing below the share is found, and the loss is logged once, at
        error level.
        """
        if shutil.which("sftp") is None:
            raise SkipTest("OpenSSH's sftp is not installed")
        folder = os.path.join(self.folder, "docs")
        os.mkdir(folder)
        got = os.path.join(self.folder, "got")
        server = shlex.join(
            [sys.executable, "-m", "conchshare.sftp.stdio", "-l", "ERROR", "docs=" + folder]
        )
        batch = (
            "ls /docs\n"
            f"!mv {folder} {folder}-away && ln -s / {folder} && sleep 0.2\n"
            f"-get /docs/etc/passwd {got}\n"
            "-ls /docs/etc\n"
        )
        result = subprocess.run(
            ["sftp", "-b", "-", "-D", server],
            input=batch,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(os.path.exists(got))
        self.assertEqual(result.stderr.count("'docs' is no longer at"), 1, result.stderr)
        self.assertIn("[conchshare.sftp-server#error]", result.stderr)
        self.assertEqual(result.stderr.count("not found"), 2, result.stderr)

    def test_noSetIdBits(self) -> None:
        """
        OpenSSH's C{sftp} C{chmod 6755} on a file succeeds and applies
        0755: no set-id program is left; on a directory set-group-id stays.
        """
        if shutil.which("sftp") is None:
            raise SkipTest("OpenSSH's sftp is not installed")
        os.mkdir(os.path.join(self.folder, "d"))
        server = shlex.join([sys.executable, "-m", "conchshare.sftp.stdio", "docs=" + self.folder])
        result = subprocess.run(
            ["sftp", "-b", "-", "-D", server],
            input="chmod 6755 /docs/a.txt\nchmod 6775 /docs/d\n",
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        mode = os.stat(os.path.join(self.folder, "a.txt")).st_mode
        self.assertEqual(oct(mode & 0o7777), oct(0o755))
        mode = os.stat(os.path.join(self.folder, "d")).st_mode
        self.assertEqual(oct(mode & 0o7777), oct(0o2775))

    def test_fileLimitRaised(self) -> None:
        """
        sftp-server raises its soft descriptor limit to the hard one: the
        handle budget is 1024 - 64, half of it per client, as
        limits@openssh.com announces.
        """
        result = subprocess.run(
            [
                "/bin/sh",
                "-c",
                'ulimit -S -n 256 && ulimit -H -n 1024 && exec "$0" "$@"',
                sys.executable,
                "-m",
                "conchshare.sftp.stdio",
                "docs=" + self.folder,
            ],
            input=INIT + extended(1, b"limits@openssh.com"),
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        (version, limits) = packets(result.stdout)
        self.assertEqual(limits[-8:], u64(480))

    def test_bulkUpload(self) -> None:
        """
        Large WRITEs sent in a stream of odd-sized pieces (each packet's
        rest read straight into its own buffer) write exactly the data
        sent, and each is answered once.
        """
        env = dict(os.environ, PYTHONPATH=ROOT)
        server = subprocess.Popen(
            [sys.executable, "-m", "conchshare.sftp.stdio", "docs=" + self.folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        assert server.stdin is not None and server.stdout is not None
        self.addCleanup(server.stdout.close)
        self.addCleanup(server.stdin.close)
        self.addCleanup(server.kill)
        server.stdin.write(INIT + request(3, 1, s(b"/docs/up") + u32(2 | 8) + u32(0)))
        server.stdin.flush()
        replies = b""
        while len(packets(replies)) < 2 or len(replies) < sum(map(len, packets(replies))):
            replies += os.read(server.stdout.fileno(), 65536)
        opened = packets(replies)[1]
        self.assertEqual(opened[4], 102, opened)
        handle = opened[13:]
        data = os.urandom(3 * 1024 * 1024 + 12345)
        stream = bytearray()
        sizes = [262144, 100000, 262144, 16384, 1, 262144, 32768]
        offset, rid = 0, 2
        while offset < len(data):
            chunk = data[offset : offset + sizes[rid % len(sizes)]]
            stream += request(6, rid, s(handle) + u64(offset) + s(chunk))
            offset += len(chunk)
            rid += 1
        stream += request(4, rid, s(handle))
        # Odd pieces, so that packets straddle reads in every way.
        position = 0
        for piece in [5, 70000, 300001, 1, 999999] * 100:
            if position >= len(stream):
                break
            server.stdin.write(stream[position : position + piece])
            server.stdin.flush()
            position += piece
        server.stdin.close()
        out = server.stdout.read()
        server.wait(60)
        answers = packets(out)
        self.assertEqual(sorted(answers), sorted(ok(n) for n in range(2, rid + 1)))
        with open(os.path.join(self.folder, "up"), "rb") as f:
            self.assertEqual(f.read(), data)
