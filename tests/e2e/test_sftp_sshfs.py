"""
sshfs, the real client, mounted on C{conchshare sftp-server} through pipes
(C{sshfs -o passive}): the sshfs workload of the SFTP issue (section 4), and
the confinement and read-only batteries seen through sshfs.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys

from twisted.trial import unittest

from tests.support.workload import (
    SshfsMount,
    describeTree,
    makeTree,
    mountSshfsPassive,
    runSshfsWorkload,
    sshfsAvailable,
)


def serverCommand(*arguments: str) -> list[str]:
    """
    The stdio SFTP server, as C{conchshare sftp-server ARGUMENTS}.
    """
    return [sys.executable, "-m", "conchshare", "sftp-server", *arguments]


class SshfsTestCase(unittest.TestCase):
    """
    Lays out C{server/share} (the shared folder), C{server/outside} (next to
    it, never reachable) and C{client/mnt} (the mount point), and mounts.
    """

    def setUp(self) -> None:
        why = sshfsAvailable()
        if why is not None:
            raise unittest.SkipTest(why)
        base = os.path.abspath(self.mktemp())
        self.share = os.path.join(base, "server", "share")
        self.outside = os.path.join(base, "server", "outside")
        self.mountPoint = os.path.join(base, "client", "mnt")
        for path in (self.share, self.outside, self.mountPoint):
            os.makedirs(path)
        with open(os.path.join(self.outside, "secret"), "wb") as f:
            f.write(b"outside the share\n")

    def mount(
        self, *serverArguments: str, remotePath: str = "/share", options: tuple[str, ...] = ()
    ) -> SshfsMount:
        """
        Mount C{remotePath} of C{conchshare sftp-server SERVERARGUMENTS} on
        the mount point; unmounted in cleanup.
        """
        mount = mountSshfsPassive(
            serverCommand(*serverArguments), remotePath, self.mountPoint, sshfsOptions=options
        )
        self.addCleanup(mount.unmount)
        return mount

    def assertDenied(self, action: object, what: str) -> None:
        """
        Call C{action}; it must fail with EACCES (Permission denied).
        """
        assert callable(action)
        try:
            action()
        except OSError as e:
            self.assertEqual(
                e.errno, errno.EACCES, f"{what}: expected Permission denied, got {e!r}"
            )
        else:
            self.fail(f"{what}: succeeded, expected Permission denied")


class WorkloadTests(SshfsTestCase):
    def test_workload(self) -> None:
        """
        Untar 2,000 files, C{cp -a}, rename over a file, hard and symbolic
        links, truncate, append, C{df}, C{find}, C{rm -rf}: every byte
        matches the local folder.
        """
        self.mount("--share", f"share={self.share}")
        runSshfsWorkload(self.mountPoint, self.share, fileCount=2000)
        self.assertEqual(os.listdir(self.share), [])

    def test_multiComponentShareName(self) -> None:
        """
        A share named by a path of several components is mounted by that
        absolute path, as X2Go's mount script does.
        """
        with open(os.path.join(self.share, "hello"), "wb") as f:
            f.write(b"hello\n")
        self.mount(
            "--share", f"home/alice/Documents={self.share}", remotePath="/home/alice/Documents"
        )
        with open(os.path.join(self.mountPoint, "hello"), "rb") as f:
            self.assertEqual(f.read(), b"hello\n")


class ConfinementTests(SshfsTestCase):
    def setUp(self) -> None:
        super().setUp()
        os.symlink("/", os.path.join(self.share, "root"))
        os.symlink("/etc/passwd", os.path.join(self.share, "passwd"))
        os.symlink("../outside", os.path.join(self.share, "up"))
        os.symlink("../outside/secret", os.path.join(self.share, "secret"))
        with open(os.path.join(self.share, "inside"), "wb") as f:
            f.write(b"inside\n")
        os.symlink("inside", os.path.join(self.share, "good"))

    def test_outsideSymlinksShownAsSymlinks(self) -> None:
        """
        Symlinks leading out of the share are listed as symlinks.
        """
        self.mount("--share", f"share={self.share}")
        for name in ["root", "passwd", "up", "secret", "good"]:
            path = os.path.join(self.mountPoint, name)
            self.assertTrue(stat.S_ISLNK(os.lstat(path).st_mode), f"{name} is not a symlink")
        # sshfs 3.7.3 itself refuses (EPERM) to return targets that are
        # absolute or climb above the mount, whatever the server answers,
        # so only the link inside the share can be read back here.
        self.assertEqual(os.readlink(os.path.join(self.mountPoint, "good")), "inside")
        self.assertEqual(
            sorted(os.listdir(self.mountPoint)),
            ["good", "inside", "passwd", "root", "secret", "up"],
        )

    def test_outsideSymlinksNotFollowed(self) -> None:
        """
        With sshfs's C{follow_symlinks} (the server resolves links), a link
        leading out of the share cannot be read, listed, written or
        traversed: Permission denied.  A link inside the share works.
        """
        self.mount("--share", f"share={self.share}", options=("-o", "follow_symlinks"))
        mnt = self.mountPoint
        with open(os.path.join(mnt, "good"), "rb") as f:
            self.assertEqual(f.read(), b"inside\n")

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        def write(path: str) -> None:
            with open(path, "wb") as f:
                f.write(b"escaped\n")

        self.assertDenied(lambda: read(os.path.join(mnt, "passwd")), "reading link to /etc/passwd")
        self.assertDenied(lambda: read(os.path.join(mnt, "secret")), "reading ../outside/secret")
        self.assertDenied(lambda: os.listdir(os.path.join(mnt, "root")), "listing link to /")
        self.assertDenied(lambda: os.listdir(os.path.join(mnt, "up")), "listing ../outside")
        self.assertDenied(
            lambda: read(os.path.join(mnt, "root", "etc", "passwd")), "reading root/etc/passwd"
        )
        self.assertDenied(
            lambda: read(os.path.join(mnt, "up", "secret")), "reading up/secret through a link"
        )
        self.assertDenied(lambda: write(os.path.join(mnt, "up", "new")), "creating up/new")
        self.assertDenied(lambda: write(os.path.join(mnt, "secret")), "writing ../outside/secret")
        self.assertEqual(os.listdir(self.outside), ["secret"])
        with open(os.path.join(self.outside, "secret"), "rb") as f:
            self.assertEqual(f.read(), b"outside the share\n")

        # What a person sees.
        cat = subprocess.run(
            ["cat", os.path.join(mnt, "passwd")], capture_output=True, text=True, timeout=30
        )
        self.assertNotEqual(cat.returncode, 0)
        self.assertIn("Permission denied", cat.stderr)
        self.assertEqual(cat.stdout, "")

    def test_dotDotStaysInVirtualRoot(self) -> None:
        """
        Mounting C{/share/../../..} gives the virtual root, which lists only
        the shares; C{/etc} is not there to mount.
        """
        self.mount("--share", f"share={self.share}", remotePath="/share/../../..")
        self.assertEqual(os.listdir(self.mountPoint), ["share"])
        with open(os.path.join(self.mountPoint, "share", "inside"), "rb") as f:
            self.assertEqual(f.read(), b"inside\n")

    def test_outsidePathNotMountable(self) -> None:
        """
        A real path outside the shares cannot be mounted.
        """
        self.assertRaises(
            AssertionError,
            mountSshfsPassive,
            serverCommand("--share", f"share={self.share}"),
            self.outside,
            self.mountPoint,
            timeout=10,
        )


class ReadOnlyTests(SshfsTestCase):
    def setUp(self) -> None:
        super().setUp()
        makeTree(os.path.join(self.share, "tree"), 20, perDirectory=10)
        with open(os.path.join(self.share, "file"), "wb") as f:
            f.write(b"read only\n")
        os.mkdir(os.path.join(self.share, "dir"))

    def checkReadOnly(self) -> None:
        before = describeTree(self.share, mtimes=True)
        mnt = self.mountPoint
        path = os.path.join(mnt, "file")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"read only\n")
        self.assertEqual(
            describeTree(os.path.join(mnt, "tree"), mtimes=True),
            describeTree(os.path.join(self.share, "tree"), mtimes=True),
        )

        def openFor(target: str, mode: str) -> None:
            with open(target, mode) as f:
                f.write("x")

        self.assertDenied(lambda: openFor(os.path.join(mnt, "new"), "w"), "creating a file")
        self.assertDenied(lambda: openFor(path, "w"), "overwriting a file")
        self.assertDenied(lambda: openFor(path, "a"), "appending to a file")
        self.assertDenied(lambda: os.open(path, os.O_RDWR), "opening read-write")
        self.assertDenied(lambda: os.truncate(path, 0), "truncating")
        self.assertDenied(lambda: os.chmod(path, 0o777), "chmod")
        self.assertDenied(lambda: os.utime(path, (0, 0)), "setting times")
        self.assertDenied(lambda: os.remove(path), "removing a file")
        self.assertDenied(lambda: os.rename(path, os.path.join(mnt, "moved")), "renaming")
        self.assertDenied(
            lambda: os.rename(path, os.path.join(mnt, "dir", "file")), "renaming into a folder"
        )
        self.assertDenied(lambda: os.mkdir(os.path.join(mnt, "newdir")), "mkdir")
        self.assertDenied(lambda: os.rmdir(os.path.join(mnt, "dir")), "rmdir")
        self.assertDenied(lambda: os.symlink("file", os.path.join(mnt, "sym")), "symlink")
        self.assertDenied(lambda: os.link(path, os.path.join(mnt, "hard")), "hard link")
        shell = subprocess.run(
            ["sh", "-c", f"echo x > {path}"], capture_output=True, text=True, timeout=30
        )
        self.assertNotEqual(shell.returncode, 0)
        self.assertIn("Permission denied", shell.stderr)
        self.assertEqual(describeTree(self.share, mtimes=True), before)

    def test_readOnlyOption(self) -> None:
        """
        C{--read-only}: every write through sshfs fails with Permission
        denied and nothing changes in the local folder.
        """
        self.mount("--read-only", "--share", f"share={self.share}")
        self.checkReadOnly()

    def test_readOnlyShare(self) -> None:
        """
        C{NAME=PATH:ro}: the same.
        """
        self.mount(f"share={self.share}:ro")
        self.checkReadOnly()
