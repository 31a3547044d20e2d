"""
The one place where an exception becomes an SFTP v3 status.

Version 3 knows only codes 0..8; everything richer (C{EEXIST},
C{ENOTEMPTY}, C{ENOSPC}...) is C{FX_FAILURE} with the system's message, so
a v3 client shows a useful sentence instead of an unknown code.
"""

from __future__ import annotations

import errno
import os

from twisted.conch.ssh.filetransfer import SFTPError

from conchshare.sftp import wire

# The mapping of OpenSSH's errno_to_portable(), except ELOOP and EROFS: here
# a symlink that is refused (O_NOFOLLOW) or a read-only share is a refusal.
_ERRNO_STATUS: dict[int, int] = {
    errno.ENOENT: wire.FX_NO_SUCH_FILE,
    errno.ENOTDIR: wire.FX_NO_SUCH_FILE,
    errno.EBADF: wire.FX_NO_SUCH_FILE,
    errno.EPERM: wire.FX_PERMISSION_DENIED,
    errno.EACCES: wire.FX_PERMISSION_DENIED,
    errno.EFAULT: wire.FX_PERMISSION_DENIED,
    errno.EROFS: wire.FX_PERMISSION_DENIED,
    errno.ELOOP: wire.FX_PERMISSION_DENIED,
    errno.ENAMETOOLONG: wire.FX_BAD_MESSAGE,
    errno.EINVAL: wire.FX_BAD_MESSAGE,
    errno.ENOSYS: wire.FX_OP_UNSUPPORTED,
    errno.EOPNOTSUPP: wire.FX_OP_UNSUPPORTED,
}

_DEFAULT_MESSAGES: dict[int, bytes] = {
    wire.FX_OK: b"Success",
    wire.FX_EOF: b"End of file",
    wire.FX_NO_SUCH_FILE: b"No such file",
    wire.FX_PERMISSION_DENIED: b"Permission denied",
    wire.FX_FAILURE: b"Failure",
    wire.FX_BAD_MESSAGE: b"Bad message",
    wire.FX_NO_CONNECTION: b"No connection",
    wire.FX_CONNECTION_LOST: b"Connection lost",
    wire.FX_OP_UNSUPPORTED: b"Operation unsupported",
}


def statusForException(exc: BaseException) -> tuple[int, bytes]:
    """
    Map an exception from the avatar or the parser to a v3 status.

    @param exc: an L{SFTPError}, L{OSError}, L{EOFError},
        L{NotImplementedError}, L{wire.BadMessage}, or anything else (a bug:
        C{FX_FAILURE} with a generic message, nothing internal leaked).
    @return: C{(code, message)}, C{code} in 1..8.
    """
    if isinstance(exc, SFTPError):
        code = exc.code if isinstance(exc.code, int) else wire.FX_FAILURE
        # A v6 code (such as Conch's FX_FILE_ALREADY_EXISTS, 11) is unknown
        # to v3 clients.
        if not wire.FX_EOF <= code <= wire.FX_MAX_V3:
            code = wire.FX_FAILURE
        return code, _text(exc.message) or _DEFAULT_MESSAGES[code]
    if isinstance(exc, EOFError):
        return wire.FX_EOF, _DEFAULT_MESSAGES[wire.FX_EOF]
    if isinstance(exc, wire.BadMessage):
        return wire.FX_BAD_MESSAGE, _text(str(exc)) or _DEFAULT_MESSAGES[wire.FX_BAD_MESSAGE]
    if isinstance(exc, NotImplementedError):
        return wire.FX_OP_UNSUPPORTED, _DEFAULT_MESSAGES[wire.FX_OP_UNSUPPORTED]
    if isinstance(exc, OverflowError):
        # An offset or size of 2**63 or more: the peer's number does not fit
        # an off_t (Python raises before the system call).
        return wire.FX_FAILURE, b"Value too large"
    if isinstance(exc, OSError):
        if exc.errno is None:
            return wire.FX_FAILURE, _text(exc.strerror or "") or _DEFAULT_MESSAGES[wire.FX_FAILURE]
        code = _ERRNO_STATUS.get(exc.errno, wire.FX_FAILURE)
        # The message only, never the filename: that would be a real path.
        return code, _text(exc.strerror) or _text(os.strerror(exc.errno))
    return wire.FX_FAILURE, _DEFAULT_MESSAGES[wire.FX_FAILURE]


def _text(message: object) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode("utf-8", "surrogateescape")
    return b""
