"""
The C{-v} audit trail (L{conchshare.service.AuditingAvatar}): what a client
sends is logged escaped, so it cannot forge or hide an audit line.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from conchshare.service import AuditingAvatar, auditText


class ShareAvatar:
    """
    The two avatar calls the tests make: C{getAttrs} answers, C{removeFile}
    fails with an error whose message quotes the path as it came.
    """

    def getAttrs(self, path: bytes, followLinks: bool) -> Deferred[dict[str, Any]]:
        return succeed({"size": 0})

    def removeFile(self, path: bytes) -> Deferred[None]:
        return fail(OSError(f"cannot remove {path.decode('utf-8', 'surrogateescape')}"))


class AuditTextTests(SynchronousTestCase):
    def test_plainKept(self) -> None:
        self.assertEqual(auditText(b"/docs/r\xc3\xa9sum\xc3\xa9 1.txt"), "/docs/résumé 1.txt")

    def test_escaped(self) -> None:
        """
        C{\\}, bytes below 0x20, 0x7f, bytes that are not UTF-8, C1
        controls and U+2028/U+2029 become C{\\xNN}.
        """
        self.assertEqual(
            auditText(b"a\\b\nc\rd\x00e\x1bf\x7fg\xffh\xc3i\xc2\x85j\xe2\x80\xa8k"),
            r"a\x5cb\x0ac\x0dd\x00e\x1bf\x7fg\xffh\xc3i\xc2\x85j\xe2\x80\xa8k",
        )

    def test_str(self) -> None:
        self.assertEqual(auditText("x\ny\udcff\ud800"), r"x\x0ay\xff\xed\xa0\x80")


class AuditingAvatarTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lines: list[str] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "conchshare.audit":
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.avatar = AuditingAvatar(ShareAvatar(), "session 1")

    def test_forgedLineEscaped(self) -> None:
        """
        A path with a newline and a fake audit entry stays on its line.
        """
        forged = b"/docs/x -> ok\nsession 2: removeFile /docs/secret"
        self.successResultOf(self.avatar.getAttrs(forged, True))
        self.assertEqual(
            self.lines,
            [r"session 1: getAttrs /docs/x -> ok\x0asession 2: removeFile /docs/secret -> ok"],
        )

    def test_errorMessageEscaped(self) -> None:
        """
        The error logged for a failed call quotes the path escaped too.
        """
        self.failureResultOf(self.avatar.removeFile(b"/docs/a\rb\xff"), OSError)
        self.assertEqual(
            self.lines,
            [r"session 1: removeFile /docs/a\x0db\xff -> OSError: cannot remove /docs/a\x0db\xff"],
        )
