"""
Shares: named local folders and the virtual tree a client sees.

A share maps a virtual name (C{b"docs"}, or several components such as
C{b"home/alice/Documents"}) to a real folder.  The virtual root C{/} lists
the first component of every share; the directories above a multi-component
name are virtual, listable and read-only.

This module is pure Python (no Twisted) and does no filesystem work beyond
checking the folders at parse time; L{conchshare.fs} walks the real
folders.

Rules:
  - Client paths are bytes and are normalised lexically here (L{normalize}):
    relative paths start at L{ShareSet.home}, C{.} and empty components are
    dropped, C{..} never climbs above C{/}.  A NUL byte or an over-long path
    is refused with L{OSError}, so the SFTP layer maps it to a status.
  - A share's C{path} is the real (symlink-free) absolute folder.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_PATH",
    "Share",
    "ShareError",
    "ShareSet",
    "VirtualDirectory",
    "normalize",
    "parseShare",
    "splitPath",
]

#: Longest client path accepted, in bytes (Linux's PATH_MAX).
MAX_PATH = 4096

#: Longest single component accepted (Linux's NAME_MAX).
MAX_NAME = 255


class ShareError(ValueError):
    """
    A share specification or set of shares is invalid.  The message is one
    sentence a person can act on.
    """


@dataclass(frozen=True)
class Share:
    """
    One shared folder.

    @ivar name: the virtual name, components separated by C{/}, without a
        leading or trailing slash.
    @ivar path: the absolute real path of the folder.
    @ivar readOnly: whether every mutating request is refused.
    """

    name: bytes
    path: str
    readOnly: bool = False

    @property
    def components(self) -> tuple[bytes, ...]:
        """
        The components of L{name}.
        """
        return tuple(self.name.split(b"/"))

    @property
    def virtualPath(self) -> bytes:
        """
        The absolute virtual path of the share, e.g. C{b"/docs"}.
        """
        return b"/" + self.name


@dataclass(frozen=True)
class VirtualDirectory:
    """
    A directory of the virtual tree above the shares (C{/} or a prefix of a
    multi-component share name).

    @ivar components: its virtual path, as components (empty for C{/}).
    @ivar children: the names listed in it, sorted.
    """

    components: tuple[bytes, ...]
    children: tuple[bytes, ...]

    @property
    def virtualPath(self) -> bytes:
        return b"/" + b"/".join(self.components)


def _checkName(name: bytes, spec: str) -> bytes:
    name = name.strip(b"/")
    if not name:
        raise ShareError(f"The share {spec!r} has an empty name.")
    for component in name.split(b"/"):
        if component in (b"", b".", b".."):
            raise ShareError(
                f"The share name in {spec!r} may not contain empty, '.' or '..' components."
            )
        if b"\0" in component:
            raise ShareError(f"The share name in {spec!r} contains a NUL character.")
        if len(component) > MAX_NAME:
            raise ShareError(f"The share name in {spec!r} has a component that is too long.")
    return name


def parseShare(spec: str, *, cwd: str | None = None) -> Share:
    """
    Parse a share specification.

    Accepted forms: C{NAME=PATH}, C{NAME=PATH:ro} (read-only), C{NAME=PATH:rw}
    and a bare C{PATH} (shared under the folder's own name, with C{:ro} or
    C{:rw} allowed too).  C{~} in C{PATH} means the home directory; a relative
    C{PATH} is relative to C{cwd} (default: the current directory).

    @param spec: the specification, as typed by the user.
    @param cwd: the directory relative paths start from.
    @return: the share, with its real folder path.
    @raise ShareError: the name is invalid, or the path is missing or not a
        folder.
    """
    readOnly = False
    rest = spec
    for suffix, flag in ((":ro", True), (":rw", False)):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            readOnly = flag
            break
    name: bytes | None
    base = cwd if cwd is not None else os.getcwd()
    # A folder whose own path holds "=" is still a bare path.
    if "=" in rest and not os.path.isdir(os.path.join(base, os.path.expanduser(rest))):
        rawName, rawPath = rest.split("=", 1)
        name = _checkName(os.fsencode(rawName), spec)
    else:
        name, rawPath = None, rest
    if not rawPath:
        raise ShareError(f"The share {spec!r} has no folder path.")
    path = os.path.expanduser(rawPath)
    path = os.path.join(base, path)
    if not os.path.exists(path):
        raise ShareError(f"The folder {rawPath!r} of the share {spec!r} does not exist.")
    if not os.path.isdir(path):
        raise ShareError(f"The path {rawPath!r} of the share {spec!r} is not a folder.")
    path = os.path.realpath(path)
    if name is None:
        base = os.path.basename(path)
        if not base:
            raise ShareError(
                f"The folder {rawPath!r} has no name of its own: give it one (NAME=PATH)."
            )
        name = _checkName(os.fsencode(base), spec)
    return Share(name=name, path=path, readOnly=readOnly)


def splitPath(path: bytes) -> list[bytes]:
    """
    Split a path into its components, dropping empty and C{.} components
    (C{..} is kept).
    """
    return [c for c in path.split(b"/") if c not in (b"", b".")]


def normalize(path: bytes, home: bytes = b"/") -> tuple[bytes, ...]:
    """
    Normalise a client path lexically.

    @param path: the path as the client sent it.
    @param home: the absolute virtual directory a relative path starts from.
    @return: the components of the absolute virtual path.
    @raise OSError: C{EINVAL} for a NUL byte, C{ENAMETOOLONG} for a path over
        L{MAX_PATH} bytes or a component over L{MAX_NAME}.
    """
    if b"\0" in path:
        raise OSError(errno.EINVAL, "The path contains a NUL byte")
    if len(path) > MAX_PATH:
        raise OSError(errno.ENAMETOOLONG, "The path is too long")
    if not path.startswith(b"/"):
        path = home + b"/" + path
    parts = path.split(b"/")
    del parts[0]
    # The common case, a clean absolute path: no rewriting needed.
    if b"" not in parts and b"." not in parts and b".." not in parts:
        if max(map(len, parts)) > MAX_NAME:
            raise OSError(errno.ENAMETOOLONG, "A path component is too long")
        return tuple(parts)
    result: list[bytes] = []
    for component in splitPath(path):
        if component == b"..":
            if result:
                result.pop()
        else:
            if len(component) > MAX_NAME:
                raise OSError(errno.ENAMETOOLONG, "A path component is too long")
            result.append(component)
    return tuple(result)


class ShareSet:
    """
    The shares of one server, and the virtual tree over them.

    @ivar shares: the shares, in the order given.
    @ivar home: the virtual starting directory: C{b"/NAME"} when there is
        exactly one share, C{b"/"} otherwise.
    """

    def __init__(self, shares: Sequence[Share]) -> None:
        """
        @raise ShareError: there is no share, or two names are equal or one
            is a prefix (by components) of another.
        """
        if not shares:
            raise ShareError("At least one share is needed.")
        self.shares: tuple[Share, ...] = tuple(shares)
        for i, a in enumerate(self.shares):
            for b in self.shares[i + 1 :]:
                ac, bc = a.components, b.components
                n = min(len(ac), len(bc))
                if ac[:n] == bc[:n]:
                    if len(ac) == len(bc):
                        raise ShareError(
                            f"Two shares are named {os.fsdecode(a.name)!r}: give them different names."
                        )
                    raise ShareError(
                        f"The share names {os.fsdecode(a.name)!r} and {os.fsdecode(b.name)!r} "
                        "overlap: one may not be inside the other."
                    )
        self._byComponents = {s.components: s for s in self.shares}
        self.home: bytes = self.shares[0].virtualPath if len(self.shares) == 1 else b"/"
        self.readOnly: bool = all(s.readOnly for s in self.shares)

    @classmethod
    def fromSpecs(
        cls, specs: Sequence[str], *, readOnly: bool = False, cwd: str | None = None
    ) -> ShareSet:
        """
        Build a share set from specifications (see L{parseShare}).

        @param specs: the specifications; none means the current directory
            (C{cwd}) is the one share.
        @param readOnly: make every share read-only.
        @raise ShareError: a specification is invalid or names collide.
        """
        if not specs:
            specs = [cwd if cwd is not None else os.getcwd()]
        shares = [parseShare(spec, cwd=cwd) for spec in specs]
        if readOnly:
            shares = [Share(s.name, s.path, True) for s in shares]
        return cls(shares)

    def normalize(self, path: bytes) -> tuple[bytes, ...]:
        """
        L{normalize} relative to L{home}.
        """
        return normalize(path, self.home)

    def locate(
        self, components: Sequence[bytes]
    ) -> tuple[Share, tuple[bytes, ...]] | VirtualDirectory:
        """
        Find what a normalised virtual path names.

        @param components: the output of L{normalize}.
        @return: the share and the components inside it, or the virtual
            directory.
        @raise FileNotFoundError: the path is in the virtual tree but names
            nothing.
        """
        components = tuple(components)
        for n in range(len(components) + 1):
            share = self._byComponents.get(components[:n])
            if share is not None:
                return share, components[n:]
        depth = len(components)
        children = sorted(
            {s.components[depth] for s in self.shares if s.components[:depth] == components}
        )
        if not children:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return VirtualDirectory(components, tuple(children))

    def shareForRealPath(self, target: bytes) -> tuple[Share, tuple[bytes, ...]] | None:
        """
        Find the share holding an absolute real path, lexically.

        @return: the share and the components inside it, or L{None}.
        """
        parts = splitPath(target)
        best: tuple[Share, tuple[bytes, ...]] | None = None
        for share in self.shares:
            root = splitPath(os.fsencode(share.path))
            if parts[: len(root)] == root and b".." not in parts[len(root) :]:
                if best is None or len(root) > len(splitPath(os.fsencode(best[0].path))):
                    best = (share, tuple(parts[len(root) :]))
        return best
