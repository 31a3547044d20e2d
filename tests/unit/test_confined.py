"""
Tests for L{conchshare.fs}: confinement (paths, symlinks at every depth,
races), read-only shares, the virtual tree, names as bytes, umask, and the
POSIX semantics of each operation.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import re
import resource
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare import fs as confined
from conchshare.fs import MAX_READ, ConfinedFilesystem, resolver, syscalls
from conchshare.sftp import entries as sftpEntries
from conchshare.sftp import wire
from conchshare.sftp.entries import Listing, groupName, longname, openFlags, userName
from conchshare.sftp.wire import FXF_APPEND, FXF_CREAT, FXF_EXCL, FXF_READ, FXF_TRUNC, FXF_WRITE
from conchshare.shares import ShareSet
from tests.support import CHECKOUT
from tests.support.sharetree import SECRET, makeTree, read, write


class ConfinedTestCase(SynchronousTestCase):
    umask = 0o022

    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        makeTree(self.base)
        self.shares = ShareSet.fromSpecs(
            ["one", "two", "ro:ro", "home/alice/docs=alice"], cwd=self.base
        )
        self.fs = ConfinedFilesystem(self.shares, umask=self.umask)

    def path(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    def assertErrno(
        self, code: int, function: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        with self.assertRaises(OSError) as raised:
            function(*args, **kwargs)
        self.assertEqual(raised.exception.errno, code, f"{function.__name__}{args!r}")

    def readAll(self, path: bytes) -> bytes:
        f = self.fs.openFile(path, openFlags(FXF_READ), {})
        try:
            return f.read(0, 1 << 20)
        finally:
            f.close()


class PathTests(ConfinedTestCase):
    def test_absoluteAndDotted(self) -> None:
        for path in [b"/one/f", b"//one//f", b"/one/./f", b"/one/sub/../f", b"/two/../one/f"]:
            self.assertEqual(self.readAll(path), b"inside", path)

    def test_dotDotNeverAboveRoot(self) -> None:
        """
        C{..} stops at C{/}: C{/../..} is the virtual root, and a name after
        it is looked up among the shares, never in a real parent folder.
        """
        self.assertEqual(self.fs.realPath(b"/../../.."), b"/")
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/one/../../outside/secret")
        self.assertErrno(errno.ENOENT, self.fs.stat, b"../outside")
        self.assertEqual(self.readAll(b"/../../one/f"), b"inside")

    def test_relativeToHome(self) -> None:
        """
        With one share, relative paths start inside it.
        """
        fs = ConfinedFilesystem(ShareSet.fromSpecs(["one"], cwd=self.base))
        self.assertEqual(fs.realPath(b"."), b"/one")
        self.assertEqual(fs.realPath(b""), b"/one")
        f = fs.openFile(b"sub/g", openFlags(FXF_READ), {})
        self.assertEqual(f.read(0, 10), b"deep")
        f.close()
        self.assertEqual(fs.realPath(b"../../.."), b"/")

    def test_trailingDot(self) -> None:
        self.assertTrue(stat.S_ISDIR(int(self.fs.stat(b"/one/sub/.")["permissions"])))  # type: ignore[call-overload]
        self.assertEqual(self.fs.realPath(b"/one/sub/."), b"/one/sub")

    def test_nul(self) -> None:
        self.assertErrno(errno.EINVAL, self.fs.stat, b"/one/f\0/etc/passwd")
        self.assertErrno(errno.EINVAL, self.fs.openFile, b"/one/f\0x", openFlags(FXF_READ), {})

    def test_veryLong(self) -> None:
        self.assertErrno(errno.ENAMETOOLONG, self.fs.stat, b"/one/" + b"a/" * 3000)
        self.assertErrno(errno.ENAMETOOLONG, self.fs.stat, b"/one/" + b"a" * 256)
        self.assertErrno(errno.ENAMETOOLONG, self.fs.makeDirectory, b"/one/" + b"a" * 300, {})


class SymlinkEscapeTests(ConfinedTestCase):
    """
    Symlinks out of a share are listed but never followed, at any depth.
    """

    escapes = [
        b"/one/esc_abs/secret",
        b"/one/esc_rel/secret",
        b"/one/esc_root/etc/passwd",
        b"/one/sub/deeper/esc/secret",
        b"/one/sub/esc_file",
        b"/one/in_rel/deeper/esc/secret",
        b"/one/to_sibling/t",
        b"/one/rel_sibling/t",
    ]

    def test_neverRead(self) -> None:
        for path in self.escapes:
            self.assertErrno(errno.EACCES, self.fs.openFile, path, openFlags(FXF_READ), {})
            self.assertErrno(errno.EACCES, self.fs.stat, path)
            if path != b"/one/sub/esc_file":  # there the link is final
                self.assertErrno(errno.EACCES, self.fs.stat, path, follow=False)

    def test_neverWritten(self) -> None:
        for path in [b"/one/esc_abs/new", b"/one/sub/deeper/esc/new", b"/one/esc_root/tmp/x"]:
            self.assertErrno(
                errno.EACCES, self.fs.openFile, path, openFlags(FXF_WRITE | FXF_CREAT), {}
            )
            self.assertErrno(errno.EACCES, self.fs.makeDirectory, path, {})
            self.assertErrno(errno.EACCES, self.fs.makeLink, path, b"x")
        self.assertErrno(
            errno.EACCES, self.fs.openFile, b"/one/sub/esc_file", openFlags(FXF_WRITE), {}
        )
        self.assertErrno(
            errno.EACCES, self.fs.setAttrs, b"/one/sub/esc_file", {"permissions": 0o777}
        )
        self.assertErrno(errno.EACCES, self.fs.setAttrs, b"/one/esc_abs/secret", {"size": 0})
        self.assertErrno(errno.EACCES, self.fs.removeFile, b"/one/esc_abs/secret")
        self.assertErrno(errno.EACCES, self.fs.removeDirectory, b"/one/esc_abs/dir")
        self.assertEqual(sorted(os.listdir(self.path("outside"))), ["dir", "secret"])
        self.assertEqual(read(self.path("outside", "secret")), SECRET)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("outside", "secret")).st_mode), 0o644)

    def test_neverListed(self) -> None:
        for path in [b"/one/esc_abs", b"/one/esc_root", b"/one/sub/deeper/esc", b"/one/to_sibling"]:
            self.assertErrno(errno.EACCES, self.fs.openDirectory, path)

    def test_listedAsSymlinks(self) -> None:
        d = Listing(self.fs.openDirectory(b"/one"))
        entries = {name: attrs for name, _, attrs in d.read(1000)}
        d.close()
        for name in (b"esc_abs", b"esc_root", b"to_sibling"):
            self.assertTrue(stat.S_ISLNK(int(entries[name]["permissions"])), name)  # type: ignore[call-overload]
        lstat = self.fs.stat(b"/one/esc_abs", follow=False)
        self.assertTrue(stat.S_ISLNK(int(lstat["permissions"])))  # type: ignore[call-overload]
        self.assertErrno(errno.EACCES, self.fs.stat, b"/one/esc_abs")

    def test_insideLinksWork(self) -> None:
        for path in [
            b"/one/in_rel/g",
            b"/one/in_abs/g",
            b"/one/in_dotdot/g",
            b"/one/chain/g",
            b"/one/sub/deeper/up",
            b"/one/chain/deeper/up",
        ]:
            self.assertEqual(self.readAll(path), b"deep", path)
        self.assertTrue(stat.S_ISDIR(int(self.fs.stat(b"/one/in_abs")["permissions"])))  # type: ignore[call-overload]

    def test_loop(self) -> None:
        self.assertErrno(errno.ELOOP, self.fs.stat, b"/one/loop")
        self.assertErrno(errno.ELOOP, self.fs.openFile, b"/one/loop/x", openFlags(FXF_READ), {})

    def test_danglingCreatesInside(self) -> None:
        """
        Opening a dangling symlink inside the share with CREAT creates its
        target, as open(2) does.
        """
        f = self.fs.openFile(b"/one/dangling", openFlags(FXF_WRITE | FXF_CREAT), {})
        f.write(0, b"made")
        f.close()
        self.assertEqual(read(self.path("one", "nothing-here")), b"made")

    def test_hardlinkOutside(self) -> None:
        """
        A hard link to an escaping symlink links the symlink itself; the
        outside file is never reachable through it.
        """
        self.assertErrno(errno.EACCES, self.fs.hardLink, b"/one/esc_abs/secret", b"/one/stolen")
        self.fs.hardLink(b"/one/sub/esc_file", b"/one/hl")
        self.assertTrue(os.path.islink(self.path("one", "hl")))
        self.assertErrno(errno.EACCES, self.fs.openFile, b"/one/hl", openFlags(FXF_READ), {})
        self.assertEqual(os.stat(self.path("outside", "secret")).st_nlink, 1)

    def test_renameInOut(self) -> None:
        self.assertErrno(
            errno.EACCES, self.fs.rename, b"/one/esc_abs/secret", b"/one/s", overwrite=False
        )
        self.assertErrno(errno.EACCES, self.fs.rename, b"/one/f", b"/one/esc_abs/f", overwrite=True)
        self.assertErrno(
            errno.EACCES, self.fs.rename, b"/one/f", b"/one/esc_rel/f", overwrite=False
        )
        self.assertErrno(errno.EACCES, self.fs.rename, b"/one/f", b"/../f", overwrite=False)
        self.assertErrno(errno.ENOENT, self.fs.rename, b"/../one/../f", b"/one/g", overwrite=False)
        self.assertErrno(errno.EACCES, self.fs.rename, b"/one/f", b"/f2", overwrite=False)
        self.assertEqual(sorted(os.listdir(self.path("outside"))), ["dir", "secret"])
        self.assertEqual(read(self.path("one", "f")), b"inside")
        # Renaming the escaping link itself is fine: it moves the link.
        self.fs.rename(b"/one/esc_abs", b"/one/moved", overwrite=False)
        self.assertTrue(os.path.islink(self.path("one", "moved")))

    def test_realPathNeverLeaks(self) -> None:
        base = os.fsencode(self.base)
        paths = self.escapes + [
            b"/one/esc_abs",
            b"/one/in_abs",
            b"/one/in_abs/g",
            b"/one/dangling",
            b"/one/missing/x/../y",
            b"/one/loop",
            b".",
            b"/",
            b"/home/alice",
        ]
        results = {p: self.fs.realPath(p) for p in paths}
        for path, result in results.items():
            self.assertTrue(result.startswith(b"/"), path)
            self.assertNotIn(base, result, path)
            self.assertNotIn(b"outside", result.replace(b"/one/", b""), path)
        self.assertEqual(results[b"/one/in_abs/g"], b"/one/sub/g")
        self.assertEqual(results[b"/one/esc_abs"], b"/one/esc_abs")
        self.assertEqual(results[b"/one/esc_root/etc/passwd"], b"/one/esc_root/etc/passwd")
        self.assertEqual(results[b"/one/esc_rel/secret"], b"/one/esc_rel/secret")
        self.assertEqual(results[b"/one/sub/deeper/esc/secret"], b"/one/sub/deeper/esc/secret")
        self.assertEqual(results[b"/one/missing/x/../y"], b"/one/missing/y")

    def test_readLink(self) -> None:
        self.assertEqual(self.fs.readLink(b"/one/in_rel"), b"sub")
        self.assertEqual(self.fs.readLink(b"/one/in_abs"), b"/one/sub")
        self.assertEqual(self.fs.readLink(b"/one/to_sibling"), b"/two")
        # Not in any share: as stored (never followed).
        self.assertEqual(self.fs.readLink(b"/one/esc_root"), b"/")
        self.assertEqual(self.fs.readLink(b"/one/esc_rel"), b"../outside")
        self.assertErrno(errno.EINVAL, self.fs.readLink, b"/one/f")
        self.assertErrno(errno.EINVAL, self.fs.readLink, b"/home")

    def test_makeLink(self) -> None:
        """
        An absolute target in a share is stored as the share's real path
        and the rest exactly as written; relative targets and targets in no
        share are stored as given.
        """
        one = self.path("one")
        self.fs.makeLink(b"/one/sub/deeper/abs", b"/one/f")
        self.assertEqual(os.readlink(self.path("one", "sub", "deeper", "abs")), one + "/f")
        self.assertEqual(self.readAll(b"/one/sub/deeper/abs"), b"inside")
        self.fs.makeLink(b"/one/top", b"/one")
        self.assertEqual(os.readlink(self.path("one", "top")), one)
        self.fs.makeLink(b"/one/odd", b"//one/./sub//g/")
        self.assertEqual(os.readlink(self.path("one", "odd")), one + "/./sub//g/")
        self.assertEqual(self.fs.readLink(b"/one/odd"), b"/one/./sub//g/")
        self.assertEqual(self.readAll(b"/one/odd"), b"deep")
        self.fs.makeLink(b"/one/back", b"/two/../one/f")
        self.assertEqual(os.readlink(self.path("one", "back")), one + "/f")
        self.fs.makeLink(b"/one/rel", b"sub/g")
        self.assertEqual(os.readlink(self.path("one", "rel")), "sub/g")
        self.fs.makeLink(b"/one/up", b"../two/t")
        self.assertEqual(os.readlink(self.path("one", "up")), "../two/t")
        self.fs.makeLink(b"/one/nowhere", b"/nowhere/x")
        self.assertEqual(os.readlink(self.path("one", "nowhere")), "/nowhere/x")
        self.fs.makeLink(b"/one/deep", b"/home/alice/docs/x")
        self.assertEqual(os.readlink(self.path("one", "deep")), self.path("alice") + "/x")
        self.assertErrno(errno.EEXIST, self.fs.makeLink, b"/one/f", b"x")

    def test_readLinkGivesBackWhatWasWritten(self) -> None:
        """
        READLINK answers exactly the target SYMLINK was given, and LSTAT and
        READDIR report the link's size as that target's length (what a
        client library's symlink test checks).
        """
        for target in [b"/one/f", b"/one/./sub//g/", b"/one", b"sub/g", b"/nowhere/x", b"/two"]:
            self.fs.makeLink(b"/one/l", target)
            self.assertEqual(self.fs.readLink(b"/one/l"), target)
            self.assertEqual(self.fs.stat(b"/one/l", follow=False)["size"], len(target))
            d = Listing(self.fs.openDirectory(b"/one"))
            entries = {name: (line, attrs) for name, line, attrs in d.read(1000)}
            d.close()
            line, attrs = entries[b"l"]
            self.assertEqual(attrs["size"], len(target), target)
            self.assertIn(b" %d " % len(target), line)
            self.fs.removeFile(b"/one/l")

    def test_linkIntoAnotherShare(self) -> None:
        """
        A link into another share keeps that share's real path, reads back
        as written, and is not followed (each share is confined on its own).
        """
        self.fs.makeLink(b"/one/other", b"/two/t")
        self.assertEqual(os.readlink(self.path("one", "other")), self.path("two") + "/t")
        self.assertEqual(self.fs.readLink(b"/one/other"), b"/two/t")
        self.assertErrno(errno.EACCES, self.fs.stat, b"/one/other")


class RaceTests(ConfinedTestCase):
    def test_swapDirectoryForSymlink(self) -> None:
        """
        While another thread keeps swapping a directory of the share for a
        symlink to an outside folder or to C{/}, nothing outside is ever
        read, listed or stat'ed through it.
        """
        sw = self.path("one", "sw")
        os.makedirs(os.path.join(sw, "etc"))
        write(os.path.join(sw, "secret"), b"inside")
        write(os.path.join(sw, "etc", "passwd"), b"inside")
        os.symlink(self.path("outside"), self.path("one", "link_out"))
        os.symlink("/", self.path("one", "link_root"))
        passwd = read("/etc/passwd")
        stop = threading.Event()
        swaps = [0]

        def swapper() -> None:
            links = [self.path("one", "link_out"), self.path("one", "link_root")]
            saved = self.path("one", "sw_saved")
            while not stop.is_set():
                link = links[swaps[0] % 2]
                os.rename(sw, saved)
                os.rename(link, sw)
                os.rename(sw, link)
                os.rename(saved, sw)
                swaps[0] += 1

        thread = threading.Thread(target=swapper)
        thread.start()
        seen = {"inside": 0, "failed": 0}
        outsideNames = set(os.listdir(self.path("outside"))) - {"secret"}
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                for path in (b"/one/sw/secret", b"/one/sw/etc/passwd"):
                    try:
                        data = self.readAll(path)
                    except OSError:
                        seen["failed"] += 1
                        continue
                    self.assertNotIn(SECRET, data)
                    self.assertNotEqual(data, passwd)
                    self.assertEqual(data, b"inside")
                    seen["inside"] += 1
                for path in (b"/one/sw", b"/one/sw/etc"):
                    try:
                        d = Listing(self.fs.openDirectory(path))
                        names = {os.fsdecode(n) for n, _, _ in d.read(1000)}
                        d.close()
                    except (OSError, EOFError):
                        continue
                    self.assertFalse(names & outsideNames, names)
                    self.assertNotIn("shadow", names)
                try:
                    attrs = self.fs.stat(b"/one/sw/secret")
                except OSError:
                    continue
                self.assertEqual(attrs["size"], len(b"inside"))
                realPath = self.fs.realPath(b"/one/sw/secret")
                self.assertNotIn(os.fsencode(self.base), realPath)
        finally:
            stop.set()
            thread.join()
        self.assertGreater(swaps[0], 10)
        self.assertGreater(seen["inside"], 0)
        self.assertEqual(read(self.path("outside", "secret")), SECRET)


class ReadOnlyTests(ConfinedTestCase):
    """
    A read-only share refuses every mutating operation with EACCES.
    """

    def test_everyMutationDenied(self) -> None:
        fs = self.fs
        denied: list[tuple[Callable[..., object], tuple[object, ...]]] = [
            (fs.openFile, (b"/ro/r", openFlags(FXF_WRITE), {})),
            (fs.openFile, (b"/ro/r", openFlags(FXF_READ | FXF_WRITE), {})),
            (fs.openFile, (b"/ro/r", openFlags(FXF_APPEND), {})),
            (fs.openFile, (b"/ro/r", openFlags(FXF_READ | FXF_TRUNC), {})),
            (fs.openFile, (b"/ro/new", openFlags(FXF_READ | FXF_CREAT), {})),
            (fs.openFile, (b"/ro/new", openFlags(FXF_WRITE | FXF_CREAT | FXF_EXCL), {})),
            (fs.setAttrs, (b"/ro/r", {"permissions": 0o600})),
            (fs.setAttrs, (b"/ro/r", {"size": 0})),
            (fs.setAttrs, (b"/ro/l", {"atime": 0, "mtime": 0})),
            (fs.setAttrs, (b"/ro", {"permissions": 0o700})),
            (fs.removeFile, (b"/ro/r",)),
            (fs.removeFile, (b"/ro/l",)),
            (fs.makeDirectory, (b"/ro/newdir", {})),
            (fs.removeDirectory, (b"/ro/d",)),
            (fs.makeLink, (b"/ro/newlink", b"r")),
            (fs.hardLink, (b"/ro/r", b"/ro/hl")),
            (fs.hardLink, (b"/ro/r", b"/one/hl")),
            (fs.hardLink, (b"/one/f", b"/ro/hl")),
        ]
        for function, args in denied:
            self.assertErrno(errno.EACCES, function, *args)
        for overwrite in (False, True):
            self.assertErrno(errno.EACCES, fs.rename, b"/ro/r", b"/ro/r2", overwrite=overwrite)
            self.assertErrno(errno.EACCES, fs.rename, b"/ro/r", b"/one/r2", overwrite=overwrite)
            self.assertErrno(errno.EACCES, fs.rename, b"/one/f", b"/ro/f", overwrite=overwrite)
        with self.assertRaises(PermissionError):
            fs.setAttrs(b"/ro/l", {"uid": 0, "gid": 0}, follow=False)
        self.assertEqual(sorted(os.listdir(self.path("ro"))), ["d", "l", "r"])
        self.assertEqual(read(self.path("ro", "r")), b"read-only")
        self.assertEqual(stat.S_IMODE(os.stat(self.path("ro", "r")).st_mode), 0o644)

    def test_copyDataWithinOneFileRefused(self) -> None:
        """
        copy-data within one file is refused "to the end" (length 0) and
        between overlapping ranges, through one handle or two: copying to
        the end past the read offset would otherwise never end.
        """
        before = read(self.path("one", "f"))
        self.assertGreater(len(before), 2)
        rw = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE), {})
        other = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE), {})
        try:
            self.assertErrno(errno.EBUSY, self.fs.copyData, rw, 0, 0, rw, 1)
            self.assertErrno(errno.EBUSY, self.fs.copyData, rw, 0, 0, other, 1)
            self.assertErrno(errno.EBUSY, self.fs.copyData, rw, 0, 2, other, 1)
        finally:
            rw.close()
            other.close()
        self.assertEqual(read(self.path("one", "f")), before)

    def test_openFileDenied(self) -> None:
        """
        FSETSTAT and copy-data into a file of a read-only share are refused.
        """
        source = self.fs.openFile(b"/one/f", openFlags(FXF_READ), {})
        f = self.fs.openFile(b"/ro/r", openFlags(FXF_READ), {})
        try:
            self.assertErrno(errno.EACCES, f.setAttrs, {"size": 0})
            self.assertErrno(errno.EACCES, f.setAttrs, {"permissions": 0o777})
            self.assertErrno(errno.EACCES, self.fs.copyData, source, 0, 0, f, 0)
            self.assertEqual(f.read(0, 100), b"read-only")
            self.assertEqual(f.statVFS()["flag"] & 1, 1)
        finally:
            f.close()
            source.close()

    def test_readingWorks(self) -> None:
        self.assertEqual(self.readAll(b"/ro/l"), b"read-only")
        d = Listing(self.fs.openDirectory(b"/ro"))
        self.assertEqual(sorted(n for n, _, _ in d.read(100)), [b"d", b"l", b"r"])
        d.close()
        self.assertEqual(self.fs.statVFS(b"/ro")["flag"] & 1, 1)
        self.assertEqual(self.fs.statVFS(b"/one")["flag"] & 1, 0)
        self.assertEqual(self.fs.statVFS(b"/ro/r")["flag"] & 1, 1)
        self.assertEqual(self.fs.statVFS(b"/home")["flag"] & 1, 1)
        self.assertGreater(self.fs.statVFS(b"/one/f")["namemax"], 0)
        self.assertErrno(errno.EACCES, self.fs.statVFS, b"/one/esc_abs")


class VirtualTreeTests(ConfinedTestCase):
    def list(self, path: bytes) -> list[bytes]:
        d = Listing(self.fs.openDirectory(path))
        try:
            return [n for n, _, _ in d.read(100)]
        finally:
            d.close()

    def test_listing(self) -> None:
        self.assertEqual(self.list(b"/"), [b"home", b"one", b"ro", b"two"])
        self.assertEqual(self.list(b"/home"), [b"alice"])
        self.assertEqual(self.list(b"/home/alice/"), [b"docs"])
        self.assertEqual(self.list(b"/home/alice/docs"), [b"a"])
        self.assertEqual(self.readAll(b"/home/alice/docs/a"), b"alice")
        self.assertEqual(self.fs.realPath(b"/home/../home/alice/docs/."), b"/home/alice/docs")
        self.assertEqual(self.fs.realPath(b"."), b"/")

    def test_missingShareFolderListed(self) -> None:
        """
        A share whose folder is renamed away is still listed, and once its
        path is checked again its content is no longer reachable.
        """
        self.fs.stat(b"/two/t")
        os.rename(self.path("two"), self.path("two-gone"))
        self.patch(resolver, "ROOT_RECHECK", 0.0)
        self.assertEqual(self.list(b"/"), [b"home", b"one", b"ro", b"two"])
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/two/t")
        self.assertIsNone(self.fs.statCached(b"/two/t"))

    def test_rootCheckedByTheClock(self) -> None:
        """
        A share's path is checked again once L{resolver.ROOT_RECHECK}
        seconds of the filesystem's clock have passed, not before: until
        then the folder opened first is served (renamed or not), after it
        nothing.
        """
        now = [100.0]
        fs = ConfinedFilesystem(self.shares, clock=lambda: now[0])
        self.assertEqual(fs.stat(b"/two/t")["size"], len(b"two"))
        os.rename(self.path("two"), self.path("two-gone"))
        now[0] += resolver.ROOT_RECHECK / 2
        self.assertEqual(fs.stat(b"/two/t")["size"], len(b"two"))
        now[0] += resolver.ROOT_RECHECK
        self.assertErrno(errno.ENOENT, fs.stat, b"/two/t")
        os.rename(self.path("two-gone"), self.path("two"))
        self.assertEqual(fs.stat(b"/two/t")["size"], len(b"two"))

    def test_shareFoldersClosedWhenCollected(self) -> None:
        """
        The descriptors of the share folders are closed once the file
        system is collected.
        """

        def opened() -> int:
            return len(os.listdir("/proc/self/fd"))

        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("No /proc/self/fd here")
        gc.collect()
        before = opened()
        fs = ConfinedFilesystem(self.shares)
        fs.stat(b"/one/f")
        self.assertGreater(opened(), before)
        del fs
        gc.collect()
        self.assertEqual(opened(), before)

    def test_replacedShareFolderNotServed(self) -> None:
        """
        A share's path that comes to lead to another folder (deleted and
        made again) serves nothing: C{ENOENT} below the share, which stays
        listed; the share is served again once its own folder is back.
        """
        self.assertEqual(self.fs.stat(b"/two/t")["size"], len(b"two"))
        os.rename(self.path("two"), self.path("two-old"))
        os.mkdir(self.path("two"))
        write(self.path("two", "t"), b"replaced")
        self.patch(resolver, "ROOT_RECHECK", 0.0)
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/two/t")
        self.assertErrno(errno.ENOENT, self.fs.openFile, b"/two/t", openFlags(FXF_READ), {})
        self.assertErrno(
            errno.ENOENT, self.fs.openFile, b"/two/n", openFlags(FXF_WRITE | FXF_CREAT), {}
        )
        self.assertEqual(self.list(b"/"), [b"home", b"one", b"ro", b"two"])
        self.assertEqual(self.fs.statVFS(b"/")["flag"] & 1, 1)
        os.rename(self.path("two"), self.path("two-new"))
        os.rename(self.path("two-old"), self.path("two"))
        self.assertEqual(self.readAll(b"/two/t"), b"two")

    def test_shareFolderBehindSymlinkNotServed(self) -> None:
        """
        A share's path is checked without following symlinks: a symlink
        put in its folder's place is not followed, even to that very folder.
        """
        self.fs.stat(b"/two/t")
        os.rename(self.path("two"), self.path("two-old"))
        os.symlink("two-old", self.path("two"))
        self.patch(resolver, "ROOT_RECHECK", 0.0)
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/two/t")
        os.unlink(self.path("two"))
        os.rename(self.path("two-old"), self.path("two"))
        self.assertEqual(self.readAll(b"/two/t"), b"two")

    def test_nestedShareSwappedForSymlink(self) -> None:
        """
        With one share inside another (C{top} and C{top/share} as C{sub}),
        a client of C{top} that renames the inner folder away and puts a
        symlink to C{/} in its place reaches nothing through C{sub} (the
        issue's attack), also read-only; C{shareMoved} is told once per
        loss.
        """
        os.makedirs(self.path("top", "share"))
        write(self.path("top", "share", "s"), b"sub")
        shares = ShareSet.fromSpecs(["top", "sub=top/share", "subro=top/share:ro"], cwd=self.base)
        fs = ConfinedFilesystem(shares)
        moved: list[tuple[bytes, str]] = []
        fs.shareMoved = lambda share, message: moved.append((share.name, message))
        self.patch(resolver, "ROOT_RECHECK", 0.0)
        self.assertEqual(fs.stat(b"/sub/s")["size"], 3)
        fs.rename(b"/top/share", b"/top/away", overwrite=False)
        fs.makeLink(b"/top/share", b"/")
        for name in (b"sub", b"subro"):
            for path in (b"/etc/passwd", b"/" + os.fsencode(self.base)[1:] + b"/outside/secret"):
                self.assertErrno(errno.ENOENT, fs.stat, b"/" + name + path)
                self.assertErrno(
                    errno.ENOENT, fs.openFile, b"/" + name + path, openFlags(FXF_READ), {}
                )
            self.assertErrno(errno.ENOENT, fs.openDirectory, b"/" + name)
            # (Read-only may be refused first.)
            codes = (errno.ENOENT, errno.EACCES) if name == b"subro" else (errno.ENOENT,)
            with self.assertRaises(OSError) as raised:
                fs.makeDirectory(b"/" + name + b"/made", {})
            self.assertIn(raised.exception.errno, codes)
            with self.assertRaises(OSError) as raised:
                fs.openFile(b"/" + name + b"/made", openFlags(FXF_WRITE | FXF_CREAT), {})
            self.assertIn(raised.exception.errno, codes)
        self.assertErrno(errno.EACCES, fs.stat, b"/top/share/etc/passwd")
        self.assertFalse(os.path.exists(self.path("made")))
        self.assertEqual([name for name, _ in moved], [b"sub"])
        self.assertIn("'sub' is no longer at", moved[0][1])
        self.assertIn("restart", moved[0][1])
        # Back: served again, and a second loss is told again.
        fs.removeFile(b"/top/share")
        fs.rename(b"/top/away", b"/top/share", overwrite=False)
        self.assertEqual(fs.stat(b"/sub/s")["size"], 3)
        fs.rename(b"/top/share", b"/top/away", overwrite=False)
        self.assertErrno(errno.ENOENT, fs.stat, b"/sub/s")
        self.assertEqual([name for name, _ in moved], [b"sub", b"sub"])

    def test_virtualDirectoriesReadOnly(self) -> None:
        attrs = self.fs.stat(b"/home")
        self.assertEqual(attrs["permissions"], stat.S_IFDIR | 0o555)
        for path in (b"/home/x", b"/y", b"/home/alice/z"):
            self.assertErrno(errno.EACCES, self.fs.makeDirectory, path, {})
            self.assertErrno(
                errno.EACCES, self.fs.openFile, path, openFlags(FXF_WRITE | FXF_CREAT), {}
            )
            self.assertErrno(errno.EACCES, self.fs.makeLink, path, b"/")
        for path in (b"/home", b"/home/alice", b"/"):
            self.assertErrno(errno.EACCES, self.fs.removeDirectory, path)
            self.assertErrno(errno.EACCES, self.fs.setAttrs, path, {"permissions": 0o777})
            self.assertErrno(errno.EACCES, self.fs.rename, path, b"/one/x", overwrite=False)
        self.assertErrno(errno.EISDIR, self.fs.openFile, b"/home", openFlags(FXF_READ), {})
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/home/bob")

    def test_shareRootsCannotBeRemoved(self) -> None:
        self.assertErrno(errno.EACCES, self.fs.removeDirectory, b"/two")
        self.assertErrno(errno.EACCES, self.fs.rename, b"/two", b"/one/two", overwrite=False)
        self.assertTrue(os.path.isdir(self.path("two")))


class OperationTests(ConfinedTestCase):
    def test_nonUtf8Names(self) -> None:
        name = b"caf\xe9-\xff\xfe"
        f = self.fs.openFile(b"/one/" + name, openFlags(FXF_WRITE | FXF_CREAT), {})
        f.write(0, b"latin1")
        f.close()
        d = Listing(self.fs.openDirectory(b"/one"))
        entries = d.read(100)
        d.close()
        self.assertIn(name, [n for n, _, _ in entries])
        self.assertTrue(any(longname.endswith(b" " + name) for _, longname, _ in entries))
        self.assertEqual(self.readAll(b"/one/" + name), b"latin1")
        self.fs.rename(b"/one/" + name, b"/one/" + name + b"2", overwrite=False)
        self.assertEqual(read(os.path.join(os.fsencode(self.base), b"one", name + b"2")), b"latin1")  # type: ignore[arg-type]
        self.fs.makeDirectory(b"/one/\xe9", {})
        self.assertEqual(self.fs.realPath(b"/one/\xe9/."), b"/one/\xe9")

    def test_renameNoOverwrite(self) -> None:
        write(self.path("one", "other"), b"other")
        self.assertErrno(errno.EEXIST, self.fs.rename, b"/one/f", b"/one/other", overwrite=False)
        self.assertEqual(read(self.path("one", "f")), b"inside")
        self.assertEqual(read(self.path("one", "other")), b"other")
        os.mkdir(self.path("one", "emptydir"))
        self.assertErrno(
            errno.EEXIST, self.fs.rename, b"/one/sub/deeper", b"/one/emptydir", overwrite=False
        )
        self.fs.rename(b"/one/f", b"/one/other", overwrite=True)
        self.assertEqual(read(self.path("one", "other")), b"inside")
        self.assertFalse(os.path.exists(self.path("one", "f")))
        self.fs.rename(b"/one/other", b"/two/moved", overwrite=False)
        self.assertEqual(read(self.path("two", "moved")), b"inside")

    def test_rmdirNotRecursive(self) -> None:
        self.assertErrno(errno.ENOTEMPTY, self.fs.removeDirectory, b"/one/sub")
        self.assertErrno(errno.ENOTDIR, self.fs.removeDirectory, b"/one/f")
        os.unlink(self.path("one", "sub", "deeper", "esc"))
        os.unlink(self.path("one", "sub", "deeper", "up"))
        self.fs.removeDirectory(b"/one/sub/deeper")
        self.assertFalse(os.path.exists(self.path("one", "sub", "deeper")))

    def test_removeSymlinkNotTarget(self) -> None:
        self.fs.removeFile(b"/one/in_rel")
        self.assertFalse(os.path.lexists(self.path("one", "in_rel")))
        self.assertTrue(os.path.isdir(self.path("one", "sub")))

    def test_openFlags(self) -> None:
        self.assertErrno(
            errno.EEXIST,
            self.fs.openFile,
            b"/one/f",
            openFlags(FXF_WRITE | FXF_CREAT | FXF_EXCL),
            {},
        )
        self.assertErrno(errno.ENOENT, self.fs.openFile, b"/one/nope", openFlags(FXF_READ), {})
        f = self.fs.openFile(b"/one/f", openFlags(FXF_WRITE | FXF_APPEND), {})
        f.write(0, b"+more")
        f.close()
        self.assertEqual(read(self.path("one", "f")), b"inside+more")
        f = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE | FXF_TRUNC), {})
        f.write(3, b"xyz")
        self.assertEqual(f.read(0, 100), b"\0\0\0xyz")
        self.assertRaises(EOFError, f.read, 6, 10)
        f.close()

    def test_closedFile(self) -> None:
        """
        A closed file refuses every call, even if its descriptor number has
        been reused by another open file.
        """
        f = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE), {})
        f.close()
        other = self.fs.openFile(b"/one/sub/g", openFlags(FXF_READ | FXF_WRITE), {})
        try:
            self.assertErrno(errno.EBADF, f.read, 0, 10)
            self.assertErrno(errno.EBADF, f.write, 0, b"x")
            self.assertErrno(errno.EBADF, f.stat)
            self.assertErrno(errno.EBADF, f.setAttrs, {"size": 0})
            self.assertErrno(errno.EBADF, f.fsync)
            f.close()
        finally:
            other.close()
        self.assertEqual(read(self.path("one", "sub", "g")), b"deep")

    def test_readCapped(self) -> None:
        write(self.path("one", "big"), b"x" * (MAX_READ + 10))
        f = self.fs.openFile(b"/one/big", openFlags(FXF_READ), {})
        self.assertEqual(len(f.read(0, 2**32 - 1)), MAX_READ)
        self.assertEqual(f.read(MAX_READ, 100), b"x" * 10)
        f.close()

    def test_setAttrs(self) -> None:
        self.fs.setAttrs(b"/one/f", {"size": 2, "permissions": 0o600, "atime": 1000, "mtime": 2000})
        st = os.stat(self.path("one", "f"))
        self.assertEqual((st.st_size, stat.S_IMODE(st.st_mode)), (2, 0o600))
        self.assertEqual((int(st.st_atime), int(st.st_mtime)), (1000, 2000))
        self.fs.setAttrs(b"/one/in_rel", {"permissions": 0o700})
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "sub")).st_mode), 0o700)
        self.fs.setAttrs(b"/one/in_rel", {"atime": 5, "mtime": 6}, follow=False)
        self.assertEqual(int(os.lstat(self.path("one", "in_rel")).st_mtime), 6)
        self.fs.setAttrs(b"/one/f", {"uid": os.getuid(), "gid": os.getgid()})
        f = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE), {})
        f.setAttrs({"size": 10, "mtime": 3000, "atime": 3000})
        self.assertEqual(f.stat()["size"], 10)
        self.assertEqual(f.stat()["mtime"], 3000)
        f.close()

    def test_copyData(self) -> None:
        source = self.fs.openFile(b"/one/sub/g", openFlags(FXF_READ), {})
        destination = self.fs.openFile(b"/two/copy", openFlags(FXF_WRITE | FXF_CREAT), {})
        self.fs.copyData(source, 1, 0, destination, 0)
        self.fs.copyData(source, 0, 2, destination, 3)
        source.close()
        destination.close()
        self.assertEqual(read(self.path("two", "copy")), b"eepde")

    def test_longname(self) -> None:
        d = Listing(self.fs.openDirectory(b"/one/sub"))
        entries = {n: ln for n, ln, _ in d.read(100)}
        d.close()
        pattern = rb"-rw-r--r--    1 \S+ +\S+ +4 [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d g"
        self.assertTrue(re.fullmatch(pattern, entries[b"g"]), entries[b"g"])
        self.assertTrue(entries[b"deeper"].startswith(b"drwxr-xr-x "))
        old = longname(
            b"x", {"permissions": 0o104755, "size": 12345, "uid": 0, "gid": 0, "mtime": 0}
        )
        self.assertTrue(
            re.fullmatch(rb"-rwsr-xr-x    1 \S+ +\S+ +12345 [A-Z][a-z]{2} [ 0-9]\d  19\d\d x", old),
            old,
        )

    def test_readEncodedExactBytes(self) -> None:
        """
        An entry as a NAME reply carries it: filename, an C{ls -l} long name
        and every attribute of an lstat.
        """
        directory = self.path("two", "exact")
        os.mkdir(directory)
        write(os.path.join(directory, "e"), b"12345")
        os.chmod(os.path.join(directory, "e"), 0o640)
        # Noon UTC: the same day in every time zone in use.
        os.utime(os.path.join(directory, "e"), (978436801, 978436800))
        d = Listing(confined.ConfinedDirectory(os.open(directory, os.O_RDONLY)), now=1e9)
        [entry] = d.readEncoded(100)
        self.assertRaises(EOFError, d.readEncoded, 100)
        d.close()
        user = userName(os.getuid()) or b"%d" % os.getuid()
        group = groupName(os.getgid()) or b"%d" % os.getgid()
        line = b"-rw-r-----    1 %-8s %-8s        5 Jan  2  2001 e" % (user, group)
        attrs = struct.pack(">IQIIII", 15, 5, os.getuid(), os.getgid(), 0o100640, 978436801)
        attrs += struct.pack(">I", 978436800)
        expected = struct.pack(">I", 1) + b"e" + struct.pack(">I", len(line)) + line + attrs
        self.assertEqual(entry, expected)

    def test_readEncodedIsRead(self) -> None:
        """
        L{ConfinedDirectory.readEncoded} gives the entries L{read} gives,
        encoded; whichever reads ahead (L{prefetch}), in batches.
        """
        for i in range(30):
            write(self.path("two", f"m{i:02d}"), b"x" * i)
            os.utime(self.path("two", f"m{i:02d}"), (i * 10**8, i * 10**8))
        os.symlink("nowhere", self.path("two", "link"))
        os.mkdir(self.path("two", "dir"))
        now = 2 * 10**9

        def listing(encoded: bool, prefetch: int) -> list[bytes]:
            d = Listing(confined.ConfinedDirectory(os.open(self.path("two"), os.O_RDONLY)), now=now)
            if prefetch:
                d.prefetch(prefetch)
            entries: list[bytes] = []
            try:
                while True:
                    if encoded:
                        entries += d.readEncoded(7)
                    else:
                        entries += [wire.nameEntry(*e) for e in d.read(7)]
            except EOFError:
                pass
            d.close()
            return sorted(entries)

        expected = listing(False, 0)
        self.assertEqual(len(expected), len(os.listdir(self.path("two"))))
        for encoded in (False, True):
            for prefetch in (0, 3, 100):
                self.assertEqual(listing(encoded, prefetch), expected, (encoded, prefetch))

    def test_wholeSeconds(self) -> None:
        """
        Times are the whole seconds, as statx gives them, even a nanosecond
        before the next second (where a double rounds up).
        """
        path = self.path("two", "late")
        write(path, b"")
        second = 1700000000
        os.utime(path, ns=(second * 10**9 + 999_999_999,) * 2)
        if os.stat(path).st_mtime_ns % 10**9 != 999_999_999:
            raise SkipTest("no nanosecond timestamps here")
        attrs = confined.attrsFromStat(os.stat(path))
        self.assertEqual((attrs["atime"], attrs["mtime"]), (second, second))
        d = Listing(self.fs.openDirectory(b"/two"))
        entries = {n: a for n, _, a in d.read(100)}
        d.close()
        self.assertEqual((entries[b"late"]["atime"], entries[b"late"]["mtime"]), (second, second))

    def test_readMatchesHelpers(self) -> None:
        """
        Each entry is what L{confined.attrsFromStat} and L{longname} make
        of its lstat, times beyond 32 bits clamped in both; the same when
        the fast packing gives up.
        """
        times = [(0, 0), (1000, 2**31), (5, 2**33), (-7, 10**9), (10**9, 10**9 + 1)]
        for i, (atime, mtime) in enumerate(times):
            write(self.path("two", f"t{i}"), b"x" * i)
            try:
                os.utime(self.path("two", f"t{i}"), (atime, mtime))
            except (OSError, OverflowError):
                os.unlink(self.path("two", f"t{i}"))
        os.symlink("t0", self.path("two", "link"))
        now = 10**9 + 100
        expected = {}
        for name in os.listdir(self.path("two")):
            st = os.lstat(self.path("two", name))
            attrs = confined.attrsFromStat(st)
            line = longname(name.encode(), attrs, st.st_nlink, now=now)
            expected[name.encode()] = (name.encode(), line, attrs)

        def listing() -> dict[bytes, tuple[bytes, bytes, dict[str, object]]]:
            d = Listing(confined.ConfinedDirectory(os.open(self.path("two"), os.O_RDONLY)), now=now)
            entries = {e[0]: e for e in d.read(1000)}
            d.close()
            return entries

        self.assertEqual(listing(), expected)

        def refuse(*args: object) -> bytes:
            raise struct.error("refused")

        self.patch(sftpEntries, "_entryPacker", lambda n, m: refuse)
        self.patch(sftpEntries, "_entryPackers", {})
        self.assertEqual(listing(), expected)

    def test_readEncodedVirtual(self) -> None:
        """
        A virtual directory's entries are encoded with the attributes given
        and their long names.
        """
        attrs: dict[str, object] = {"permissions": 0o40755, "size": 0}
        virtual = [(b"a", attrs), (b"b", {})]
        d = Listing(confined.ConfinedDirectory(None, list(virtual)), now=1e9)
        la, lb = longname(b"a", attrs, now=1e9), longname(b"b", {}, now=1e9)
        d.prefetch(1)
        self.assertEqual(d.readEncoded(5), [wire.nameEntry(b"a", la, attrs)])
        self.assertEqual(d.read(5), [(b"b", lb, {})])
        self.assertRaises(EOFError, d.readEncoded, 5)

    def test_directoryBatches(self) -> None:
        for i in range(250):
            write(self.path("two", f"n{i:03d}"), b"")
        d = Listing(self.fs.openDirectory(b"/two"))
        sizes = []
        while True:
            try:
                sizes.append(len(d.read(100)))
            except EOFError:
                break
        d.close()
        self.assertEqual(sizes, [100, 100, 51])


class UmaskTests(ConfinedTestCase):
    def check(self, umask: int, fileMode: int, dirMode: int) -> None:
        fs = ConfinedFilesystem(self.shares, umask=umask)
        fs.openFile(b"/one/u", openFlags(FXF_WRITE | FXF_CREAT), {}).close()
        fs.openFile(b"/one/p", openFlags(FXF_WRITE | FXF_CREAT), {"permissions": 0o640}).close()
        fs.makeDirectory(b"/one/ud", {})
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "u")).st_mode), fileMode)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "p")).st_mode), 0o640 & ~umask)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "ud")).st_mode), dirMode)

    def test_noSetIdOnCreate(self) -> None:
        self.fs.openFile(
            b"/one/s", openFlags(FXF_WRITE | FXF_CREAT), {"permissions": 0o4777}
        ).close()
        self.assertEqual(stat.S_IMODE(os.stat(self.path("one", "s")).st_mode), 0o755)

    def test_restrictive(self) -> None:
        self.check(0o077, 0o600, 0o700)

    def test_permissive(self) -> None:
        """
        A umask looser than the process's still gives the modes asked for.
        """
        self.check(0o002, 0o664, 0o775)


class WalkTests(ConfinedTestCase):
    """
    The walk closes descriptors as it goes and stops (ELOOP) past 40
    symlinks or L{confined.MAX_WALKED} components.
    """

    def lowFileLimit(self, spare: int = 64) -> None:
        """
        Lower this process's soft C{RLIMIT_NOFILE} to what is open now plus
        C{spare}, for the rest of the test: a walk that keeps more
        descriptors open fails with C{EMFILE}.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))

    def test_dotDotClosedAtOnce(self) -> None:
        """
        A symlink whose target goes 800 times into a directory and back
        resolves with a few descriptors.
        """
        os.mkdir(self.path("one", "a"))
        os.symlink("a/../" * 800 + "f", self.path("one", "updown"))
        self.lowFileLimit()
        self.assertEqual(self.fs.stat(b"/one/updown")["size"], len(b"inside"))
        self.assertEqual(self.readAll(b"/one/sub/../updown"), b"inside")
        self.assertEqual(self.fs.realPath(b"/one/updown"), b"/one/f")

    def test_symlinkChain(self) -> None:
        """
        The issue's chain: 40 symlinks, each C{a/../} 818 times then the
        next; one STAT fails (ELOOP, too many components) with few
        descriptors open, and none left open after it.
        """
        os.mkdir(self.path("one", "a"))
        for i in range(40):
            target = "a/../" * 818 + (f"l{i + 1}" if i < 39 else "f")
            os.symlink(target, self.path("one", f"l{i}"))
        before = sorted(os.listdir("/proc/self/fd"))
        self.lowFileLimit()
        self.assertErrno(errno.ELOOP, self.fs.stat, b"/one/l0")
        self.assertErrno(errno.ELOOP, self.fs.openFile, b"/one/l0", openFlags(FXF_READ), {})
        self.assertTrue(self.fs.realPath(b"/one/l0").startswith(b"/one/"))
        self.assertEqual(sorted(os.listdir("/proc/self/fd")), before)

    def test_fortySymlinks(self) -> None:
        """
        40 symlinks on the way are followed, 41 are too many (ELOOP).
        """
        for i in range(41):
            os.symlink(f"s{i + 1}" if i < 40 else "f", self.path("one", f"s{i}"))
        self.assertEqual(self.fs.stat(b"/one/s1")["size"], len(b"inside"))
        self.assertErrno(errno.ELOOP, self.fs.stat, b"/one/s0")

    def test_manyComponents(self) -> None:
        """
        More than L{confined.MAX_WALKED} components in all (a path and the
        targets of its symlinks): ELOOP.
        """
        os.mkdir(self.path("one", "a"))
        os.symlink("a/../" * 600, self.path("one", "w"))
        self.assertEqual(self.fs.stat(b"/one/w/w/w/f")["size"], len(b"inside"))
        self.assertErrno(errno.ELOOP, self.fs.stat, b"/one/w/w/w/w/f")


class SetIdTests(ConfinedTestCase):
    """
    A client never leaves a set-id program: SETSTAT, FSETSTAT, lsetstat,
    MKDIR and OPEN apply the rest of the mode but never set-user-id, nor
    set-group-id on anything but a directory.
    """

    def mode(self, *parts: str) -> int:
        return stat.S_IMODE(os.lstat(self.path(*parts)).st_mode)

    def test_setStat(self) -> None:
        self.fs.setAttrs(b"/one/f", {"permissions": 0o6755})
        self.assertEqual(self.mode("one", "f"), 0o755)
        self.fs.setAttrs(b"/one/f", {"permissions": 0o4700}, follow=False)
        self.assertEqual(self.mode("one", "f"), 0o700)
        # Through a symlink inside the share (the walk, not one openat2).
        self.fs.setAttrs(b"/one/in_rel/g", {"permissions": 0o7751})
        self.assertEqual(self.mode("one", "sub", "g"), 0o1751)

    def test_setStatDirectory(self) -> None:
        """
        On a directory set-group-id stays (new entries take its group).
        """
        self.fs.setAttrs(b"/one/sub", {"permissions": 0o6775})
        self.assertEqual(self.mode("one", "sub"), 0o2775)

    def test_fsetStat(self) -> None:
        f = self.fs.openFile(b"/one/f", openFlags(FXF_READ | FXF_WRITE), {})
        try:
            f.setAttrs({"permissions": 0o6711})
        finally:
            f.close()
        self.assertEqual(self.mode("one", "f"), 0o711)

    def test_makeDirectory(self) -> None:
        """
        Also when the mode is applied after the mkdir (a umask looser than
        the process's).
        """
        for name, fs in (("d", self.fs), ("e", ConfinedFilesystem(self.shares, umask=0))):
            fs.makeDirectory(b"/one/" + name.encode(), {"permissions": 0o4775})
            self.assertEqual(self.mode("one", name) & stat.S_ISUID, 0)
            self.assertEqual(self.mode("one", name) & 0o777, 0o755 if fs is self.fs else 0o775)

    def test_open(self) -> None:
        self.fs.openFile(
            b"/one/n", openFlags(FXF_WRITE | FXF_CREAT), {"permissions": 0o6755}
        ).close()
        self.assertEqual(self.mode("one", "n"), 0o755)


class _ComponentWalk:
    """
    Mixin: the walk goes component by component (no C{openat2}), as on a
    kernel without it, so that path is tested on every kernel too.
    """

    shares: ShareSet
    umask: int

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        # As CONCHSHARE_PORTABLE_FS=1 does: none of the Linux-only calls.
        self.fs = ConfinedFilesystem(self.shares, umask=self.umask, calls=syscalls.PORTABLE)


class WalkTestsWithoutOpenat2(_ComponentWalk, WalkTests):
    pass


class SetIdTestsWithoutOpenat2(_ComponentWalk, SetIdTests):
    pass


class PathTestsWithoutOpenat2(_ComponentWalk, PathTests):
    pass


class SymlinkEscapeTestsWithoutOpenat2(_ComponentWalk, SymlinkEscapeTests):
    pass


class RaceTestsWithoutOpenat2(_ComponentWalk, RaceTests):
    pass


class OperationTestsWithoutOpenat2(_ComponentWalk, OperationTests):
    pass


class FastWalkTests(ConfinedTestCase):
    """
    The one-call walk (C{openat2}, Linux >= 5.6) takes plain paths only; a
    symlink anywhere on the way, or at the end when followed, sends the
    path to the component walk.
    """

    def setUp(self) -> None:
        if syscalls.systemCalls().openat2 is None:
            raise SkipTest("openat2 is not usable here")
        super().setUp()
        os.makedirs(self.path("one", "a", "b"))
        write(self.path("one", "a", "b", "f"), b"plain")
        os.symlink("a", self.path("one", "to_a"))
        os.symlink("f", self.path("one", "a", "b", "to_f"))

    def fastWalk(self, path: bytes, follow: bool) -> confined.Place | None:
        found = self.fs.resolver.lookup(path)
        assert isinstance(found, tuple)
        share, components = found
        fds: list[int] = []
        root = os.open(share.path, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(root)
        try:
            place = self.fs.resolver._fastWalk(share, root, components, follow, fds)
            if place is not None:
                self.assertEqual(place.parent, fds[-1])
            return place
        finally:
            for fd in fds:
                os.close(fd)

    def test_plainPaths(self) -> None:
        place = self.fastWalk(b"/one/a/b/f", True)
        assert place is not None
        self.assertEqual((place.name, place.components), (b"f", (b"a", b"b", b"f")))
        place = self.fastWalk(b"/one/a/b/new", True)
        assert place is not None
        self.assertEqual(place.name, b"new")
        # Not followed: the link itself.
        self.assertIsNotNone(self.fastWalk(b"/one/a/b/to_f", False))

    def test_symlinksLeftToTheWalk(self) -> None:
        self.assertIsNone(self.fastWalk(b"/one/to_a/b/f", True))
        self.assertIsNone(self.fastWalk(b"/one/a/b/to_f", True))
        self.assertIsNone(self.fastWalk(b"/one/esc_abs/secret", False))
        self.assertIsNone(self.fastWalk(b"/one/missing/f", False))
        # And the walk still follows the links that stay inside.
        self.assertEqual(self.readAll(b"/one/to_a/b/to_f"), b"plain")
        self.assertErrno(errno.EACCES, self.fs.stat, b"/one/esc_abs/secret")


class CachedStatTests(ConfinedTestCase):
    """
    L{ConfinedFilesystem.statCached} and C{fstatCached}: STAT, LSTAT and
    FSTAT answered from the kernel's memory in the reactor thread, or left
    to L{ConfinedFilesystem.stat} (L{None}); never a different answer, and
    never anything outside the shares.
    """

    def setUp(self) -> None:
        super().setUp()
        if self.fs._memory is None:
            raise SkipTest("openat2 RESOLVE_CACHED or statx is not available here")
        if not self.fs._localMounts:
            raise SkipTest("The test folder is not on a filesystem statCached answers for")

    def warm(self, path: bytes, follow: bool = False) -> None:
        # A worker's stat puts the dentries in the kernel's cache.
        try:
            self.fs.stat(path, follow=follow)
        except OSError:
            pass

    def test_sameAnswers(self) -> None:
        """
        Where it answers, it gives what L{stat} gives: files, directories,
        share roots, the virtual tree, and a symlink itself (LSTAT).
        """
        cases = [b"/one/f", b"/one/sub", b"/one/sub/g", b"/one", b"/", b"/home", b"/one/in_rel"]
        for path in cases:
            for follow in (False, True):
                self.warm(path, follow)
                got = self.fs.statCached(path, follow=follow)
                if path == b"/one/in_rel":
                    # A final symlink is followed by a worker; LSTAT of one
                    # too, where the share's real path is not its virtual
                    # path (the size is the length READLINK answers).
                    self.assertIsNone(got, "a final symlink is left to a worker")
                    continue
                self.assertEqual(got, self.fs.stat(path, follow=follow), (path, follow))

    def test_missing(self) -> None:
        """
        A name the kernel knows is missing gets FileNotFoundError, as from
        L{stat}.
        """
        self.warm(b"/one/nothing")
        self.assertErrno(errno.ENOENT, self.fs.statCached, b"/one/nothing", follow=False)
        self.assertErrno(errno.ENOENT, self.fs.statCached, b"/nothing", follow=False)

    def test_symlinksLeftToWorkers(self) -> None:
        """
        A symlink on the way is never followed here, in the share or out of
        it: those paths go to L{stat}, which applies the confinement rules.
        """
        for path in [b"/one/in_rel/g", b"/one/esc_root/etc/passwd", b"/one/esc_rel/secret"]:
            self.warm(path, True)
            self.assertIsNone(self.fs.statCached(path, follow=True), path)
            self.assertIsNone(self.fs.statCached(path, follow=False), path)

    def test_notCachedLeftToWorkers(self) -> None:
        """
        A path the kernel would have to look up on disk (here: never looked
        up since the directory was made) is not answered here.
        """
        os.mkdir(self.path("one", "fresh"))
        # Neither found nor known missing: the kernel would ask the disk.
        got = self.fs.statCached(b"/one/fresh/never-looked-up", follow=False)
        self.assertIsNone(got)
        self.assertErrno(errno.ENOENT, self.fs.stat, b"/one/fresh/never-looked-up")

    def test_otherMountLeftToWorkers(self) -> None:
        """
        A share whose mount was not noted as local (a network filesystem)
        is never answered here.
        """
        self.fs._localMounts.clear()
        self.warm(b"/one/f")
        self.assertIsNone(self.fs.statCached(b"/one/f", follow=False))

    def test_fstat(self) -> None:
        """
        FSTAT of an open file, from memory, equals L{ConfinedFile.stat}.
        """
        f = self.fs.openFile(b"/one/f", openFlags(FXF_READ), {})
        try:
            self.assertEqual(self.fs.fstatCached(f), f.stat())
        finally:
            f.close()
        self.assertIsNone(self.fs.fstatCached(f))

    def test_openDirectory(self) -> None:
        """
        OPENDIR from memory lists what L{ConfinedFilesystem.openDirectory}
        lists; virtual directories, symlinks and other mounts are left to
        it (L{None}), and a name known missing is FileNotFoundError.
        """

        def listing(found: confined.ConfinedDirectory) -> list[object]:
            directory = Listing(found)
            entries: list[object] = []
            try:
                while True:
                    entries.extend(directory.read())
            except EOFError:
                pass
            finally:
                directory.close()
            return sorted(entries)  # type: ignore[type-var]

        for path in [b"/one", b"/one/sub", b"/one/sub/deeper"]:
            self.warm(path)
            got = self.fs.openDirectoryCached(path)
            assert got is not None, path
            self.assertEqual(listing(got), listing(self.fs.openDirectory(path)), path)
        for path in [b"/", b"/home", b"/one/in_rel", b"/one/esc_root", b"/one/esc_rel"]:
            self.warm(path, True)
            self.assertIsNone(self.fs.openDirectoryCached(path), path)
        self.warm(b"/one/nothing")
        self.assertErrno(errno.ENOENT, self.fs.openDirectoryCached, b"/one/nothing")
        self.fs._localMounts.clear()
        self.assertIsNone(self.fs.openDirectoryCached(b"/one/sub"))


# The modules of the file system layer.
_LAYER = [
    "conchshare.fs",
    "conchshare.fs.attrs",
    "conchshare.fs.directory",
    "conchshare.fs.file",
    "conchshare.fs.filesystem",
    "conchshare.fs.links",
    "conchshare.fs.resolver",
    "conchshare.fs.ring",
    "conchshare.fs.ringcalls",
    "conchshare.fs.syscalls",
]

# What a fresh interpreter reports about the layer: the modules it loaded,
# what systemCalls gives, whether io_uring is usable, and whether a share
# is served.
_FRESH = """
import json, os, sys
for name in sys.argv[2:]:
    __import__(name)
loaded = sorted(sys.modules)
from conchshare.fs import ConfinedFilesystem, ring, syscalls
from conchshare.shares import ShareSet
calls = syscalls.systemCalls()
fs = ConfinedFilesystem(ShareSet.fromSpecs([sys.argv[1]]))
f = fs.openFile(b"/" + os.path.basename(sys.argv[1]).encode() + b"/f", os.O_RDONLY, {})
print(json.dumps({
    "loaded": loaded,
    "portable": calls is syscalls.PORTABLE and fs._calls is calls,
    "ring": ring.usable(),
    "read": f.read(0, 10).decode(),
}))
"""


class LayerTests(SynchronousTestCase):
    """
    The file system layer is a layer of its own: importing it loads nothing
    above it, and it runs with the Linux-only calls switched off.
    """

    def fresh(self, **environ: str) -> dict[str, Any]:
        share = os.path.realpath(self.mktemp())
        os.makedirs(share)
        write(os.path.join(share, "f"), b"content")
        root = CHECKOUT
        done = subprocess.run(
            [sys.executable, "-c", _FRESH, share, *_LAYER],
            env={**os.environ, "PYTHONPATH": root, **environ},
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def test_importsNothingAbove(self) -> None:
        """
        Importing every module of L{conchshare.fs} in a fresh interpreter
        loads no Twisted and nothing of the SFTP or tunnel layers (nor of
        the service above them).
        """
        loaded = self.fresh(CONCHSHARE_PORTABLE_FS="0")["loaded"]
        above = [
            name
            for name in loaded
            if name.split(".")[0] in ("twisted", "zope")
            or name.startswith(("conchshare.sftp", "conchshare.tunnel"))
            or name in ("conchshare.service", "conchshare.mount")
        ]
        self.assertEqual(above, [])
        self.assertIn("conchshare.fs.filesystem", loaded)

    def test_portableSwitch(self) -> None:
        """
        With C{CONCHSHARE_PORTABLE_FS=1} the layer uses none of the
        Linux-only calls (nor io_uring), and still serves; without it, the
        calls this system offers.
        """
        portable = self.fresh(CONCHSHARE_PORTABLE_FS="1")
        self.assertEqual(
            (portable["portable"], portable["ring"], portable["read"]), (True, False, "content")
        )
        native = self.fresh(CONCHSHARE_PORTABLE_FS="0")
        self.assertEqual((native["portable"], native["read"]), (False, "content"))
        self.assertIs(syscalls.systemCalls(portable=True), syscalls.PORTABLE)
