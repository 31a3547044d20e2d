"""
Symlink targets between the client's virtual paths and the real ones: what
SYMLINK stores (L{storedTarget}) and what READLINK answers
(L{virtualTarget}).  Lexical only: no I/O.
"""

from __future__ import annotations

import os

from conchshare.shares import Share, ShareSet

__all__ = ["mapsLinks", "storedTarget", "virtualTarget"]


def storedTarget(shares: ShareSet, target: bytes) -> bytes:
    """
    The target SYMLINK stores for the C{target} a client gave: a relative
    target as given; an absolute target whose virtual path lies in a share
    as that share's real path followed by the rest of the target exactly
    as written (so the link works on this side too, and breaks if the
    folder moves); any other target as given (a link that leads out of its
    share is never followed).
    """
    if not target.startswith(b"/"):
        return target
    try:
        located = shares.locate(shares.normalize(target))
    except OSError:
        return target  # not a virtual path: stored as given
    if not isinstance(located, tuple):
        return target  # a virtual folder above the shares
    share, rest = located
    real = os.fsencode(share.path).rstrip(b"/")
    # The share's virtual components as written, "//" and "." between
    # them allowed; the rest follows them exactly as written.
    wanted = list(share.components)
    at = 0
    while wanted:
        slash = target.find(b"/", at + 1)
        component = target[at + 1 : len(target) if slash < 0 else slash]
        if component == wanted[0]:
            del wanted[0]
        elif component not in (b"", b"."):
            break
        if slash < 0:
            at = len(target)
            break
        at = slash
    if wanted:
        # Reached through ".." (or the like): the rest as normalised.
        return b"/".join((real, *rest)) if rest else real or b"/"
    return (real + target[at:]) or b"/"


def virtualTarget(shares: ShareSet, target: bytes) -> bytes:
    """
    What READLINK answers for a stored symlink target: an absolute
    target that begins with a share's real path (the longest) as that
    share's virtual path followed by the same rest; anything else as
    stored.
    """
    if not target.startswith(b"/"):
        return target
    best: tuple[int, Share] | None = None
    for share in shares.shares:
        real = os.fsencode(share.path).rstrip(b"/")
        if (target == real or target.startswith(real + b"/")) and (
            best is None or len(real) > best[0]
        ):
            best = (len(real), share)
    if best is None:
        return target
    return best[1].virtualPath + target[best[0] :]


def mapsLinks(shares: ShareSet) -> bool:
    """
    Whether L{virtualTarget} may change a target's length: a share's real
    path differs from its virtual path.
    """
    return any(os.fsencode(share.path).rstrip(b"/") != share.virtualPath for share in shares.shares)
