"""
Error translation: a failure of the tunnel (Twisted's connection errors, a
bad share) as the L{ConchShareError} a person reads and a command exits
with.
"""

from __future__ import annotations

from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError, TimeoutError
from twisted.python.failure import Failure

from conchshare.errors import ConchShareError, ConnectionFailed, UsageError
from conchshare.shares import ShareError

__all__ = ["asConchShareError"]


def asConchShareError(failure: Failure | BaseException) -> ConchShareError:
    """
    The person-readable error for a failure of the tunnel.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if exc is None:
        return ConnectionFailed("The connection failed.")
    if isinstance(exc, ConchShareError):
        return exc
    if isinstance(exc, ShareError):
        return UsageError(str(exc))
    if isinstance(exc, DNSLookupError):
        return ConnectionFailed(f"Could not resolve the host name: {_reasonText(exc)}")
    if isinstance(exc, TimeoutError):
        return ConnectionFailed("The connection timed out.")
    if isinstance(exc, ConnectError):
        return ConnectionFailed(f"Could not connect: {_reasonText(exc)}")
    if isinstance(exc, ConnectionDone):
        return ConnectionFailed("The server closed the connection.")
    return ConnectionFailed(f"The connection failed: {_reasonText(exc)}")


def _reasonText(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.rstrip(".")
    return text + "."
