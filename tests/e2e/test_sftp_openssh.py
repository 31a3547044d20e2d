"""
Interoperability with OpenSSH's C{sftp} client: C{sftp -b BATCH -D
'conchshare sftp-server --share docs=PATH'}, checking what lands on disk.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import CHECKOUT

ROOT = CHECKOUT
SFTP = shutil.which("sftp")
BIG = 20 * 1024 * 1024


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class OpenSSHClientTests(TestCase):
    def setUp(self) -> None:
        if SFTP is None:
            raise SkipTest("OpenSSH's sftp client is not installed (CI installs openssh-client).")
        base = os.path.abspath(self.mktemp())
        self.share = os.path.join(base, "share")
        self.local = os.path.join(base, "local")
        os.makedirs(self.share)
        os.makedirs(self.local)

    def sftp(
        self, batch: list[str], options: Sequence[str] = (), spec: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """
        Run sftp with C{batch} against the stdio server sharing
        C{self.share} as C{docs}; local paths are relative to C{self.local}.
        """
        spec = spec if spec is not None else "docs=" + self.share
        server = " ".join(
            shlex.quote(a) for a in [sys.executable, "-m", "conchshare.sftp.stdio", "--share", spec]
        )
        batchFile = os.path.join(self.local, "..", "batch")
        with open(batchFile, "w") as f:
            f.write("\n".join(batch) + "\n")
        return subprocess.run(
            [SFTP, "-q", *options, "-b", batchFile, "-D", server],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.local,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )

    def ok(self, batch: list[str], options: Sequence[str] = ()) -> str:
        result = self.sftp(batch, options)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def makeBig(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(os.urandom(BIG))
        return digest(path)

    def test_putGetLargeFile(self) -> None:
        """
        put and get of 20 MiB keep every byte.
        """
        expected = self.makeBig(os.path.join(self.local, "big.bin"))
        self.ok(["put big.bin /docs/up.bin", "get /docs/up.bin back.bin"])
        self.assertEqual(digest(os.path.join(self.share, "up.bin")), expected)
        self.assertEqual(digest(os.path.join(self.local, "back.bin")), expected)

    def test_regetReput(self) -> None:
        """
        reget and reput resume a partial transfer.
        """
        source = os.path.join(self.share, "big.bin")
        expected = self.makeBig(source)
        with open(source, "rb") as f:
            head = f.read(7 * 1024 * 1024)
        with open(os.path.join(self.local, "partial.bin"), "wb") as f:
            f.write(head)
        shutil.copy(source, os.path.join(self.local, "whole.bin"))
        with open(os.path.join(self.share, "partial.bin"), "wb") as f:
            f.write(head[: 5 * 1024 * 1024])
        self.ok(["reget /docs/big.bin partial.bin", "reput whole.bin /docs/partial.bin"])
        self.assertEqual(digest(os.path.join(self.local, "partial.bin")), expected)
        self.assertEqual(digest(os.path.join(self.share, "partial.bin")), expected)

    def test_largestBuffers(self) -> None:
        """
        get with -B 262144 (READs capped at max-read-length) and put with
        -B 261120 (the largest WRITE OpenSSH's client can send), 128
        requests in flight.
        """
        expected = self.makeBig(os.path.join(self.share, "big.bin"))
        self.ok(["get /docs/big.bin got.bin"], ["-B", "262144", "-R", "128"])
        self.assertEqual(digest(os.path.join(self.local, "got.bin")), expected)
        self.ok(["put got.bin /docs/put.bin"], ["-B", "261120", "-R", "128"])
        self.assertEqual(digest(os.path.join(self.share, "put.bin")), expected)

    def test_namespace(self) -> None:
        """
        rename, ln, ln -s, mkdir, rmdir, chmod, put -p, df and ls -l.
        """
        with open(os.path.join(self.local, "f.txt"), "wb") as f:
            f.write(b"content")
        os.utime(os.path.join(self.local, "f.txt"), (1_000_000_000, 1_100_000_000))
        out = self.ok(
            [
                "put -p f.txt /docs/f.txt",
                "mkdir /docs/d",
                "mkdir /docs/gone",
                "rmdir /docs/gone",
                "rename /docs/f.txt /docs/d/g.txt",
                "ln /docs/d/g.txt /docs/hard.txt",
                "ln -s d/g.txt /docs/soft.txt",
                "chmod 600 /docs/hard.txt",
                "df /docs",
                "ls -l /docs/d",
            ]
        )
        moved = os.path.join(self.share, "d", "g.txt")
        self.assertEqual(os.stat(moved).st_mtime, 1_100_000_000)
        self.assertFalse(os.path.exists(os.path.join(self.share, "gone")))
        self.assertEqual(
            os.stat(os.path.join(self.share, "hard.txt")).st_ino, os.stat(moved).st_ino
        )
        self.assertEqual(os.readlink(os.path.join(self.share, "soft.txt")), "d/g.txt")
        self.assertEqual(stat.S_IMODE(os.stat(moved).st_mode), 0o600)
        self.assertIn("%Capacity", out)
        self.assertRegex(out, r"-rw------- .* 7 .*g\.txt")

    def test_refusedOperationsShown(self) -> None:
        """
        On a read-only share sftp shows an error for each refused operation
        and nothing changes.
        """
        with open(os.path.join(self.share, "keep.txt"), "wb") as f:
            f.write(b"keep")
        with open(os.path.join(self.local, "new.txt"), "wb") as f:
            f.write(b"new")
        result = self.sftp(
            [
                "-put new.txt /docs/new.txt",
                "-mkdir /docs/d",
                "-rm /docs/keep.txt",
                "-rename /docs/keep.txt /docs/moved.txt",
                "-chmod 600 /docs/keep.txt",
                "get /docs/keep.txt kept.txt",
            ],
            spec="docs=" + self.share + ":ro",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.count("Permission denied"), 5, result.stderr)
        self.assertEqual(os.listdir(self.share), ["keep.txt"])
        with open(os.path.join(self.local, "kept.txt"), "rb") as f:
            self.assertEqual(f.read(), b"keep")
