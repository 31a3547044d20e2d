"""
conchshare: share local folders with a remote host over an outbound SSH
connection, with no SSH daemon on the local machine.

The public API (the modules behind these names are free to move):

  - L{ShareService}: a C{twisted.application.service.Service} that connects,
    forwards, serves, reconnects, pauses and resumes;
  - L{ShareOptions}: its options;
  - L{ShareSet}, L{Share}, L{parseShare}, L{ShareError}: the shared folders;
  - the errors: L{ConchShareError} and its subclasses, each with an
    C{exitCode};
  - L{__version__}.

C{ShareService} and C{ShareOptions} are imported on first use, so that
C{conchshare sftp-server} starts without loading the SSH client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conchshare.depwarnings import ignoreConchDSANames
from conchshare.errors import (
    AuthenticationFailed,
    ConchShareError,
    ConnectionFailed,
    ForwardRefused,
    HostKeyChanged,
    HostKeyError,
    HostKeyUnknown,
    MountFailed,
    UsageError,
)
from conchshare.shares import Share, ShareError, ShareSet, parseShare

if TYPE_CHECKING:
    from conchshare.service import ShareOptions, ShareService

__version__ = "0.1.0"

# Before any Conch key is made: see conchshare.depwarnings.
ignoreConchDSANames()

__all__ = [
    "AuthenticationFailed",
    "ConchShareError",
    "ConnectionFailed",
    "ForwardRefused",
    "HostKeyChanged",
    "HostKeyError",
    "HostKeyUnknown",
    "MountFailed",
    "Share",
    "ShareError",
    "ShareOptions",
    "ShareService",
    "ShareSet",
    "UsageError",
    "__version__",
    "parseShare",
]

_LAZY = {"ShareService", "ShareOptions"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from conchshare import service

        return getattr(service, name)
    raise AttributeError(f"module 'conchshare' has no attribute {name!r}")
