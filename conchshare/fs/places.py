"""
What the resolver (L{conchshare.fs.resolver}) resolves a client's path to:
a confined real location (L{Place}), held with the descriptors it needs
for a C{with} statement (L{Placed}), or, for REALPATH, where resolution
stopped (L{Unresolved}).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from conchshare.shares import Share, VirtualDirectory

__all__ = ["Place", "Placed", "Unresolved"]


@dataclass
class Place:
    """
    A confined real location: the entry C{name} of the directory open as
    C{parent}.  Valid only inside the L{Resolver.place} context.

    @ivar share: the share it is in.
    @ivar parent: a descriptor of the containing directory.
    @ivar name: the entry's name (C{b"."} for the share's root).
    @ivar components: the resolved components from the share's root,
        C{name} included (empty for the root).
    @ivar seen: the entry's own status (a symlink not followed), if the
        walk read it on the way; L{None} if not.
    """

    share: Share
    parent: int
    name: bytes
    components: tuple[bytes, ...]
    seen: os.stat_result | None = None

    @property
    def isRoot(self) -> bool:
        return not self.components

    @property
    def virtualPath(self) -> bytes:
        return b"/".join((self.share.virtualPath,) + self.components)


class Unresolved(Exception):
    """
    Raised by the walk in lenient mode: what could be resolved, and the
    rest, lexically.
    """

    def __init__(self, components: tuple[bytes, ...], rest: list[bytes]) -> None:
        self.components = components
        self.rest = rest


class Placed:
    """
    What L{Resolver.place} found, and the descriptors to close when the
    C{with} statement ends (a plain class: cheaper than a generator-based
    context manager, on every request's path).
    """

    __slots__ = ("found", "fds")

    def __init__(self, found: Place | VirtualDirectory, fds: list[int]) -> None:
        self.found = found
        self.fds = fds

    def __enter__(self) -> Place | VirtualDirectory:
        return self.found

    def __exit__(self, *exc_info: object) -> None:
        for fd in self.fds:
            os.close(fd)
