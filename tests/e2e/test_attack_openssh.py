"""
Attacks through the real OpenSSH C{sftp -b} client against C{sftp -D
'python -m conchshare.sftp.stdio --share ...'} (issue 2, section 2): every
way out of the shares a client can express, and every mutation of a
read-only share.  Each test checks that nothing outside the writable share
was read or changed (a sentinel tree, compared byte for byte), that no
secret reached the client, that the client's working directory is virtual,
and that each refused command shows an error.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import CHECKOUT
from tests.support.sharetree import snapshot

ROOT = CHECKOUT
SFTP = shutil.which("sftp")
SECRET = b"TOP SECRET sentinel\n"


class AttackTests(TestCase):
    def setUp(self) -> None:
        if SFTP is None:
            raise SkipTest("OpenSSH's sftp client is not installed (CI installs openssh-client).")
        self.base = os.path.realpath(self.mktemp())
        self.outside = os.path.join(self.base, "outside")
        self.share = os.path.join(self.base, "a", "b", "share")
        self.ro = os.path.join(self.base, "a", "b", "ro")
        self.local = os.path.join(self.base, "local")
        self.batchDir = os.path.join(self.base, "batch")
        for d in (
            os.path.join(self.outside, "dir"),
            os.path.join(self.share, "d"),
            os.path.join(self.ro, "sub"),
            self.local,
            self.batchDir,
        ):
            os.makedirs(d)
        self.write(os.path.join(self.outside, "secret"), SECRET)
        self.write(os.path.join(self.outside, "dir", "x"), SECRET)
        self.write(os.path.join(self.share, "f"), b"in the share\n")
        self.write(os.path.join(self.ro, "r"), b"read only\n")
        self.write(os.path.join(self.ro, "sub", "t"), b"t\n")
        self.write(os.path.join(self.local, "l.txt"), b"local file\n")
        os.symlink(self.outside, os.path.join(self.share, "esc"))
        os.symlink(os.path.join(self.outside, "secret"), os.path.join(self.share, "escfile"))
        os.symlink("../../../outside", os.path.join(self.share, "relesc"))
        self.before = self.protected()
        self.localBefore = sorted(os.listdir(self.local))

    def write(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def protected(self) -> dict[str, tuple[object, ...]]:
        # Everything but the writable share and the client's own folder:
        # the sentinel tree, the folders above the shares, the read-only
        # share.
        return snapshot(self.base, skip=(self.share, self.local, self.batchDir))

    def sftp(self, batch: list[str], specs: list[str] | None = None) -> tuple[str, str]:
        """
        Run C{sftp -b} with C{batch}; every command may fail (C{-} prefix
        added).  Shares: C{s} (writable) and C{ro} (read-only) by default.

        @return: stdout and stderr.
        """
        if specs is None:
            specs = ["s=" + self.share, "ro=" + self.ro + ":ro"]
        args = [sys.executable, "-m", "conchshare.sftp.stdio"]
        for spec in specs:
            args += ["--share", spec]
        batchFile = os.path.join(self.batchDir, "batch")
        with open(batchFile, "w") as f:
            f.write("".join(("" if c.startswith("-") else "-") + c + "\n" for c in batch))
        assert SFTP is not None
        result = subprocess.run(
            [SFTP, "-q", "-b", batchFile, "-D", " ".join(shlex.quote(a) for a in args)],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=60,
            cwd=self.local,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        # Without the echo of the commands.
        stdout = "".join(
            line for line in result.stdout.splitlines(True) if not line.startswith("sftp> ")
        )
        return stdout, result.stderr

    def assertNothingLeaked(self, stdout: str, stderr: str, created: tuple[str, ...] = ()) -> None:
        """
        Nothing outside the share changed, no secret reached the client
        (neither printed nor fetched), no real path was printed.
        """
        self.assertEqual(self.protected(), self.before)
        self.assertNotIn(SECRET.decode().strip(), stdout + stderr)
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as f:
                self.assertNotIn(SECRET.strip(), f.read(), name)
        self.assertEqual(sorted(os.listdir(self.local)), sorted(self.localBefore + list(created)))
        self.assertNotIn(os.path.join(self.base, "a"), stdout + stderr)
        self.assertEqual(os.stat(os.path.join(self.outside, "secret")).st_nlink, 1)

    def assertShown(self, stderr: str, paths: list[str]) -> None:
        """
        Each refused path is named in an error message.
        """
        for path in paths:
            self.assertIn(path, stderr)

    def pwds(self, stdout: str) -> list[str]:
        return [
            line.split(": ", 1)[1]
            for line in stdout.splitlines()
            if line.startswith("Remote working directory: ")
        ]

    def test_dotDotAndAbsolutePaths(self) -> None:
        """
        cd .., absolute and relative paths with .. never leave the virtual
        tree: pwd stays virtual, / lists the shares only, and every get of
        a file outside fails with an error.
        """
        out, err = self.sftp(
            [
                "pwd",
                "cd ..",
                "pwd",
                "cd ../../..",
                "pwd",
                "ls -la",
                "ls /",
                "cd /s/d/../../..",
                "pwd",
                "get /etc/passwd p1",
                "get ../../outside/secret p2",
                "get /s/../../outside/secret p3",
                "get /s/../../../outside/secret p4",
                "get ../../../../../../etc/passwd p5",
                "get /../../../../etc/hostname p6",
                "ls /s/../../outside",
                "ls ../../outside",
            ]
        )
        self.assertEqual(self.pwds(out), ["/", "/", "/", "/"])
        listed = [line.split()[-1] for line in out.splitlines() if line.startswith("d")]
        self.assertEqual(sorted(set(listed)), ["ro", "s"])
        self.assertNotIn("passwd", out)
        self.assertNotIn("secret", out)
        self.assertShown(
            err,
            [
                "/etc/passwd",
                "outside/secret",
                "/s/../../outside/secret",
                "/s/../../../outside/secret",
                "etc/hostname",
            ],
        )
        self.assertNothingLeaked(out, err)

    def test_oneShareStartsInside(self) -> None:
        """
        With one share, sftp starts in it (virtual /s, not the real
        folder); cd .. reaches / and no further.
        """
        out, err = self.sftp(
            ["pwd", "ls", "cd ..", "pwd", "cd ..", "pwd", "get ../../outside/secret x"],
            specs=["s=" + self.share],
        )
        self.assertEqual(self.pwds(out), ["/s", "/", "/"])
        self.assertIn("outside/secret", err)
        self.assertNothingLeaked(out, err)

    def test_throughSymlinks(self) -> None:
        """
        Symlinks that lead out of the share (made locally, or by the client
        with ln -s to / and to an absolute path outside) are never
        followed: get, put, ls, cd, mkdir, rm, rmdir, chmod, chown, rename
        and hard links through them all fail, with an error shown.
        """
        secret = os.path.join(self.outside, "secret")
        out, err = self.sftp(
            [
                "ln -s / /s/root",
                "ln -s " + secret + " /s/abs",
                "ln -s ../../../outside/secret /s/rel",
                "get /s/esc/secret p1",
                "get /s/escfile p2",
                "get /s/relesc/secret p3",
                "get /s/root/etc/passwd p4",
                "get /s/root" + secret + " p5",
                "get /s/abs p6",
                "get /s/rel p7",
                "get /s/esc/../esc/secret p8",
                "ls /s/esc/dir",
                "ls /s/root/etc",
                "cd /s/esc",
                "cd /s/root",
                "pwd",
                "put l.txt /s/esc/new",
                "put l.txt /s/escfile",
                "put l.txt /s/abs",
                "put l.txt /s/root/tmp/conchshare-attack",
                "reput l.txt /s/escfile",
                "mkdir /s/esc/newdir",
                "rm /s/esc/secret",
                "rmdir /s/esc/dir",
                "chmod 777 /s/esc",
                "chmod 777 /s/escfile",
                "chmod 777 /s/esc/secret",
                "chown 1234 /s/esc",
                "chgrp 1234 /s/escfile",
                "rename /s/f /s/esc/moved",
                "rename /s/esc/secret /s/stolen",
                "ln /s/esc/secret /s/hard",
                "ln /s/escfile /s/hard2",
                "ln /s/f /s/esc/planted",
                "df /s/esc",
            ]
        )
        self.assertEqual(self.pwds(out), ["/"])
        self.assertNotIn("passwd", out)
        self.assertShown(
            err,
            [
                "/s/esc/new",
                "/s/escfile",
                "/s/abs",
                "/s/root/tmp/conchshare-attack",
                "/s/esc/newdir",
                "/s/esc/secret",
                "/s/esc/dir",
                "/s/esc/moved",
                "/s/hard",
                "/s/esc/planted",
            ],
        )
        self.assertGreaterEqual(err.count("Permission denied"), 15, err)
        self.assertNothingLeaked(out, err)
        # The links the client made exist, inside, as text never followed.
        self.assertEqual(os.readlink(os.path.join(self.share, "root")), "/")
        self.assertFalse(os.path.lexists(os.path.join(self.share, "stolen")))
        self.assertFalse(os.path.lexists(os.path.join(self.share, "hard")))
        # A hard link to the symlink itself (link(2) does not follow) is
        # allowed: it is another never-followed symlink, not the file.
        hard2 = os.path.join(self.share, "hard2")
        self.assertTrue(not os.path.lexists(hard2) or os.path.islink(hard2))
        with open(os.path.join(self.share, "f"), "rb") as f:
            self.assertEqual(f.read(), b"in the share\n")

    def test_renameAndLinkOutByDotDot(self) -> None:
        """
        rename and ln (hard link, posix-rename) to or from a path with ..
        that would leave the share fail; the file stays where it was.
        """
        out, err = self.sftp(
            [
                "rename /s/f ../outside/moved",
                "rename /s/f /s/../../outside/moved",
                "rename /s/f /s/../../../outside/moved",
                "rename /s/../../../outside/secret /s/stolen",
                "ln /s/../../../outside/secret /s/hard",
                "ln ../../../outside/secret /s/hard2",
                "ln /s/f /s/../../../outside/planted",
                "ln -s /s/f /s/../../../outside/planted2",
                "put l.txt /s/../../../outside/new",
                "mkdir /s/../../../outside/newdir",
                "rm /s/../../../outside/secret",
                "chmod 777 /s/../../../outside/secret",
                "cd /s/d",
                "rename ../f ../../../../../outside/moved",
                "pwd",
            ]
        )
        self.assertEqual(self.pwds(out), ["/s/d"])
        self.assertShown(
            err,
            [
                "outside/moved",
                "outside/secret",
                "/s/hard",
                "/s/hard2",
                "outside/planted",
                "outside/planted2",
                "outside/new",
                "outside/newdir",
            ],
        )
        self.assertTrue(os.path.isfile(os.path.join(self.share, "f")))
        for name in ("stolen", "hard", "hard2"):
            self.assertFalse(os.path.lexists(os.path.join(self.share, name)), name)
        self.assertNothingLeaked(out, err)

    def test_doubleSlashesAndSymlinksAtDepth(self) -> None:
        """
        C{//} anywhere in a path, and symlinks out of the share several
        directories down (relative, absolute, to C{/}, and chains through
        links that stay inside first), lead nowhere outside.
        """
        deep = os.path.join(self.share, "d", "e", "f")
        os.makedirs(deep)
        os.symlink("../../../../../../outside", os.path.join(deep, "up"))
        os.symlink(self.outside, os.path.join(deep, "abs"))
        os.symlink("/", os.path.join(deep, "root"))
        os.symlink("e/f", os.path.join(self.share, "d", "in"))
        os.symlink("../d/in/up", os.path.join(self.share, "d", "e", "chain"))
        out, err = self.sftp(
            [
                "get //etc//passwd p1",
                "get //s//..//..//outside//secret p2",
                "get /s//d//e//f//up//secret p3",
                "get /s/d/e/f/abs/secret p4",
                "get /s/d/e/f/root/etc/passwd p5",
                "get /s/d/in/up/secret p6",
                "get /s/d/e/chain/secret p7",
                "ls //s//d//e//f//up",
                "ls /s/d/in/root/etc",
                "put l.txt /s/d/e/f/up/planted",
                "put l.txt /s/d/e/chain/planted",
                "mkdir /s/d/in/abs/newdir",
                "ls //s//d//in",
            ]
        )
        self.assertNotIn("passwd", out)
        self.assertNotIn("secret", out)
        self.assertShown(
            err,
            [
                "//etc//passwd",
                "//s//..//..//outside//secret",
                "/s//d//e//f//up//secret",
                "/s/d/e/f/abs/secret",
                "/s/d/e/f/root/etc/passwd",
                "/s/d/in/up/secret",
                "/s/d/e/chain/secret",
                "/s/d/in/root/etc",
                "/s/d/e/f/up/planted",
                "/s/d/e/chain/planted",
                "/s/d/in/abs/newdir",
            ],
        )
        # The links inside are followed: the listing shows the deep folder.
        self.assertIn("abs", out)
        self.assertNothingLeaked(out, err)

    def test_swapRace(self) -> None:
        """
        While a thread keeps swapping a directory of the share for a
        symlink to the outside folder or to C{/}, 1,000 gets through it
        (and listings) never fetch anything but the share's own files.
        """
        sw = os.path.join(self.share, "sw")
        os.makedirs(os.path.join(sw, "etc"))
        self.write(os.path.join(sw, "secret"), b"inside\n")
        self.write(os.path.join(sw, "etc", "passwd"), b"inside\n")
        links = [os.path.join(self.share, "lo"), os.path.join(self.share, "lr")]
        os.symlink(self.outside, links[0])
        os.symlink("/", links[1])
        with open("/etc/passwd", "rb") as f:
            passwd = f.read()
        stop = threading.Event()
        swaps = [0]

        def swapper() -> None:
            saved = os.path.join(self.share, "saved")
            while not stop.is_set():
                link = links[swaps[0] % 2]
                os.rename(sw, saved)
                os.rename(link, sw)
                os.rename(sw, link)
                os.rename(saved, sw)
                swaps[0] += 1

        batch = []
        for i in range(500):
            batch += [f"get /s/sw/secret g{i}", f"get /s/sw/etc/passwd h{i}"]
            if i % 50 == 0:
                batch.append("ls -l /s/sw/etc")
        thread = threading.Thread(target=swapper)
        thread.start()
        try:
            out, err = self.sftp(batch)
        finally:
            stop.set()
            thread.join()
        self.assertGreater(swaps[0], 100)
        fetched = os.listdir(self.local)
        self.assertGreater(len(fetched), 1)
        for name in fetched:
            if name == "l.txt":
                continue
            with open(os.path.join(self.local, name), "rb") as f:
                data = f.read()
            self.assertNotEqual(data, passwd)
            self.assertEqual(data, b"inside\n", name)
        self.assertNotIn("shadow", out)
        self.assertNotIn("secret", out)
        created = tuple(name for name in fetched if name != "l.txt")
        self.assertNothingLeaked(out, err, created=created)

    def test_readOnlyShare(self) -> None:
        """
        Every mutation of a read-only share is refused with "Permission
        denied" shown, and nothing in it changes; reading still works.
        """
        out, err = self.sftp(
            [
                "put l.txt /ro/new",
                "put l.txt /ro/r",
                "put l.txt /ro/sub/new",
                "reput l.txt /ro/r",
                "chmod 777 /ro/r",
                "chmod 700 /ro/sub",
                "chown 1234 /ro/r",
                "chgrp 1234 /ro/r",
                "rm /ro/r",
                "mkdir /ro/x",
                "rmdir /ro/sub",
                "rename /ro/r /ro/r2",
                "rename /ro/r /s/taken",
                "rename /s/f /ro/given",
                "ln -s r /ro/l",
                "ln /ro/r /ro/hard",
                "ln /s/f /ro/hard2",
                "mkdir /newshare",
                "put l.txt /newfile",
                "get /ro/r read.txt",
            ]
        )
        self.assertGreaterEqual(err.count("Permission denied"), 15, err)
        self.assertShown(
            err,
            [
                "/ro/new",
                "/ro/r",
                "/ro/sub/new",
                "/ro/sub",
                "/ro/x",
                "/ro/l",
                "/ro/hard",
                "/ro/hard2",
                "/ro/given",
                "/newshare",
                "/newfile",
            ],
        )
        with open(os.path.join(self.local, "read.txt"), "rb") as f:
            self.assertEqual(f.read(), b"read only\n")
        self.assertTrue(os.path.isfile(os.path.join(self.share, "f")))
        self.assertFalse(os.path.lexists(os.path.join(self.share, "taken")))
        self.assertNothingLeaked(out, err, created=("read.txt",))

    def test_awkwardNames(self) -> None:
        """
        Very long names and paths (as long as sftp's batch lines allow)
        fail with an error, and a name with a
        newline round-trips; nothing outside changes.
        """
        os.makedirs(os.path.join(self.share, "nl\nname"))
        self.write(os.path.join(self.share, "nl\nname", "in"), b"newline dir\n")
        self.write(os.path.join(self.share, "tab\tand\rcr"), b"odd\n")
        long255 = "n" * 255
        out, err = self.sftp(
            [
                "put l.txt /s/" + "a" * 300,
                "put l.txt /s/" + long255,
                "mkdir /s/" + "b/" * 900 + "c",
                "get /s/" + "../" * 600 + "outside/secret p1",
                "get /s/nl?name/in got_nl",
                "get /s/tab?and?cr got_tab",
                "ls /s/nl?name",
            ]
        )
        # (sftp shortens the path it prints.)
        self.assertIn("/s/" + "a" * 200, err)
        self.assertFalse(os.path.lexists(os.path.join(self.share, "a" * 300)))
        with open(os.path.join(self.share, long255), "rb") as f:
            self.assertEqual(f.read(), b"local file\n")
        with open(os.path.join(self.local, "got_nl"), "rb") as f:
            self.assertEqual(f.read(), b"newline dir\n")
        with open(os.path.join(self.local, "got_tab"), "rb") as f:
            self.assertEqual(f.read(), b"odd\n")
        self.assertFalse(os.path.exists(os.path.join(self.share, "b")))
        self.assertNothingLeaked(out, err, created=("got_nl", "got_tab"))
