"""
The audit trail of C{-v}: L{AuditingAvatar} logs each SFTP request that
names a path, with what the client sent escaped by L{auditText}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

__all__ = ["AuditingAvatar", "auditText"]

#: Avatar methods logged by L{AuditingAvatar}: those that name paths.
_AUDITED = frozenset(
    {
        "openFile",
        "removeFile",
        "renameFile",
        "makeDirectory",
        "removeDirectory",
        "openDirectory",
        "getAttrs",
        "setAttrs",
        "readLink",
        "makeLink",
        "realPath",
        "posixRename",
        "statVFS",
        "hardLink",
        "lsetStat",
        "expandPath",
        "copyData",
    }
)

_audit = Logger(namespace="conchshare.audit")

#: Characters a client could use to forge or hide audit lines: C1 controls
#: and the Unicode line and paragraph separators (str.splitlines() breaks
#: lines at them).
_AUDIT_ESCAPED_UNICODE = frozenset(chr(c) for c in range(0x80, 0xA0)) | {"\u2028", "\u2029"}


def auditText(value: bytes | str) -> str:
    """
    A client-supplied string as the audit log shows it: on one line and
    unambiguous.  C{\\}, bytes below 0x20, 0x7f, bytes that are not UTF-8,
    C1 controls and U+2028/U+2029 are written as C{\\xNN} (one per byte
    of their UTF-8 form); everything else is kept.
    """
    if isinstance(value, bytes):
        raw = value
    else:
        # Undecodable bytes come back as they were (surrogateescape); any
        # other lone surrogate as its (invalid) UTF-8 bytes.
        raw = b"".join(
            c.encode("utf-8", "surrogateescape" if "\udc80" <= c <= "\udcff" else "surrogatepass")
            for c in value
        )
    out = []
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\" or code < 0x20 or code == 0x7F or char in _AUDIT_ESCAPED_UNICODE:
            out.append("".join(f"\\x{b:02x}" for b in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


class AuditingAvatar:
    """
    Wraps a share avatar and logs each request that names a path (the
    audit trail of C{-v}), at info level in the C{conchshare.audit}
    namespace: session, operation, virtual paths, result.  File contents
    are never logged; what the client sent is escaped (L{auditText}).  It provides the interfaces the avatar provides.
    """

    def __init__(self, avatar: object, session: str) -> None:
        self._avatar = avatar
        self._session = session
        directlyProvides(self, providedBy(avatar))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._avatar, name)
        if name not in _AUDITED or not callable(attribute):
            return attribute

        def audited(*args: Any, **kwargs: Any) -> Any:
            paths = " ".join(auditText(a) for a in args if isinstance(a, bytes))
            d: Deferred[Any] = maybeDeferred(attribute, *args, **kwargs)

            def ok(result: object) -> object:
                _audit.info(
                    "{session}: {operation} {paths} -> ok",
                    session=self._session,
                    operation=name,
                    paths=paths,
                )
                return result

            def failed(reason: Failure) -> Failure:
                _audit.info(
                    "{session}: {operation} {paths} -> {error}",
                    session=self._session,
                    operation=name,
                    paths=paths,
                    # The message may quote the client's path.
                    error=f"{type(reason.value).__name__}: {auditText(reason.getErrorMessage())}",
                )
                return reason

            return d.addCallbacks(ok, failed)

        return audited
