"""
Tests for L{conchshare.shares}: share specifications, the share set and the
lexical path normalisation.
"""

from __future__ import annotations

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from conchshare.shares import (
    Share,
    ShareError,
    ShareSet,
    VirtualDirectory,
    normalize,
    parseShare,
)


class ParseShareTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(self.base, "docs", "deep"))
        with open(os.path.join(self.base, "file"), "w") as f:
            f.write("x")

    def test_namedShare(self) -> None:
        share = parseShare(f"stuff={self.base}/docs")
        self.assertEqual(share, Share(b"stuff", os.path.join(self.base, "docs"), False))

    def test_readOnly(self) -> None:
        share = parseShare(f"stuff={self.base}/docs:ro")
        self.assertTrue(share.readOnly)
        self.assertEqual(share.path, os.path.join(self.base, "docs"))

    def test_bareAndRelative(self) -> None:
        """
        A bare path is shared under its folder name; relative paths start at
        C{cwd}; the path is made real.
        """
        share = parseShare("docs/deep/..", cwd=self.base)
        self.assertEqual(share.name, b"docs")
        self.assertEqual(share.path, os.path.join(self.base, "docs"))

    def test_bareReadOnly(self) -> None:
        share = parseShare(f"{self.base}/docs:ro")
        self.assertEqual((share.name, share.readOnly), (b"docs", True))

    def test_multiComponentName(self) -> None:
        share = parseShare(f"/home/alice/Documents/={self.base}/docs")
        self.assertEqual(share.name, b"home/alice/Documents")

    def test_nonUtf8Name(self) -> None:
        share = parseShare(os.fsdecode(b"caf\xe9") + f"={self.base}/docs")
        self.assertEqual(share.name, b"caf\xe9")

    def test_errors(self) -> None:
        """
        Each invalid specification is refused with one sentence.
        """
        for spec in [
            f"x={self.base}/missing",
            f"x={self.base}/file",
            f"={self.base}/docs",
            f"a/../b={self.base}/docs",
            f"a//b={self.base}/docs",
            "x=",
            "/",
        ]:
            with self.assertRaises(ShareError, msg=spec) as raised:
                parseShare(spec, cwd=self.base)
            message = str(raised.exception)
            self.assertTrue(message.endswith("."), message)
            self.assertNotIn("\n", message)


class ShareSetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        for name in ("a", "b"):
            os.makedirs(os.path.join(self.base, name))

    def test_emptySpecsShareCwd(self) -> None:
        shares = ShareSet.fromSpecs([], cwd=os.path.join(self.base, "a"))
        self.assertEqual([s.name for s in shares.shares], [b"a"])
        self.assertEqual(shares.home, b"/a")

    def test_homeWithSeveral(self) -> None:
        shares = ShareSet.fromSpecs(["a", "b"], cwd=self.base)
        self.assertEqual(shares.home, b"/")
        self.assertFalse(shares.readOnly)

    def test_readOnlyAll(self) -> None:
        shares = ShareSet.fromSpecs(["a", "b"], cwd=self.base, readOnly=True)
        self.assertTrue(all(s.readOnly for s in shares.shares))
        self.assertTrue(shares.readOnly)

    def test_duplicate(self) -> None:
        with self.assertRaises(ShareError):
            ShareSet.fromSpecs(["x=a", "x=b"], cwd=self.base)

    def test_overlap(self) -> None:
        with self.assertRaises(ShareError):
            ShareSet.fromSpecs(["x=a", "x/y=b"], cwd=self.base)

    def test_locate(self) -> None:
        shares = ShareSet.fromSpecs(["home/alice/docs=a", "home/bob=b"], cwd=self.base)
        self.assertEqual(shares.locate(()), VirtualDirectory((), (b"home",)))
        self.assertEqual(
            shares.locate((b"home",)), VirtualDirectory((b"home",), (b"alice", b"bob"))
        )
        share, rest = shares.locate((b"home", b"alice", b"docs", b"f"))  # type: ignore[misc]
        self.assertEqual((share.name, rest), (b"home/alice/docs", (b"f",)))
        with self.assertRaises(FileNotFoundError):
            shares.locate((b"home", b"carol"))
        with self.assertRaises(FileNotFoundError):
            shares.locate((b"etc",))


class NormalizeTests(SynchronousTestCase):
    def test_cases(self) -> None:
        cases = {
            b"/": (),
            b"": (b"h",),
            b".": (b"h",),
            b"x/./y//z/": (b"h", b"x", b"y", b"z"),
            b"/a/../../..": (),
            b"../../etc/passwd": (b"etc", b"passwd"),
            b"//a//b/.": (b"a", b"b"),
            b"/a/b/..": (b"a",),
        }
        for path, expected in cases.items():
            self.assertEqual(normalize(path, b"/h"), expected, path)

    def test_nul(self) -> None:
        with self.assertRaises(OSError) as raised:
            normalize(b"/a\0b")
        self.assertEqual(raised.exception.errno, errno.EINVAL)

    def test_long(self) -> None:
        for path in (b"/a" * 3000, b"/" + b"x" * 300):
            with self.assertRaises(OSError) as raised:
                normalize(path)
            self.assertEqual(raised.exception.errno, errno.ENAMETOOLONG)
