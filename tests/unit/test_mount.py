"""
Tests for L{conchshare.mount} that need no sshd and no FUSE: the remote
shell's path, and what a mount records.  Mounting through a throwaway sshd
is tested in L{tests.e2e.test_mount}.
"""

from __future__ import annotations

from twisted.trial import unittest

from conchshare.mount import remoteShellPath
from conchshare.mountscripts import readRecords as _words


class RemoteShellPathTests(unittest.SynchronousTestCase):
    """
    L{remoteShellPath} quotes everything but a leading C{~}.
    """

    def test_quoting(self) -> None:
        """
        Paths are single-quoted words; C{~} and C{~/} name the home
        directory through C{$HOME}.
        """
        self.assertEqual(remoteShellPath("/a b/it's"), "'/a b/it'\"'\"'s'")
        self.assertEqual(remoteShellPath("~"), '"$HOME"')
        self.assertEqual(remoteShellPath("~/"), '"$HOME"')
        self.assertEqual(remoteShellPath("~/m n"), "\"$HOME\"/'m n'")
        self.assertEqual(remoteShellPath("~bob/x"), "'~bob/x'")
        self.assertEqual(remoteShellPath("$(reboot)"), "'$(reboot)'")


class RecordTests(unittest.SynchronousTestCase):
    """
    The records the remote scripts print survive a chatty login shell.
    """

    def test_chattyShell(self) -> None:
        """
        Text printed before the records (by a login script, say) is
        ignored, even when it looks like C{key=value}; values keep newlines
        and C{=}.
        """
        out = (
            b"Welcome!\nPATH=/x\n"
            b"\0fusermount=fusermount3\0"
            b"\0mkdir=mkdir: cannot create\nline two = yes\0"
            b"\0path=/a b/c\0"
        )
        self.assertEqual(
            _words(out),
            {
                "fusermount": "fusermount3",
                "mkdir": "mkdir: cannot create\nline two = yes",
                "path": "/a b/c",
            },
        )
