"""
Folders to share, made on disk for a test: L{makeTree} (shares, an
outside secret, symlinks in and out at several depths), and L{snapshot},
which records every entry below a folder so that a test can tell that
nothing changed.
"""

from __future__ import annotations

import hashlib
import os

SECRET = b"OUTSIDE-SECRET"


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def makeTree(base: str) -> None:
    """
    Three shares (C{one}, C{two}, read-only C{ro}), a multi-component share
    C{home/alice/docs}, an C{outside} folder with a secret, and symlinks
    leading in and out at several depths.
    """
    j = os.path.join
    for d in ("outside/dir", "one/sub/deeper", "two", "ro/d", "alice"):
        os.makedirs(j(base, d))
    write(j(base, "outside", "secret"), SECRET)
    write(j(base, "one", "f"), b"inside")
    write(j(base, "one", "sub", "g"), b"deep")
    write(j(base, "two", "t"), b"two")
    write(j(base, "ro", "r"), b"read-only")
    write(j(base, "alice", "a"), b"alice")
    links = {
        "one/esc_abs": j(base, "outside"),
        "one/esc_rel": "../outside",
        "one/esc_root": "/",
        "one/sub/deeper/esc": "../../../outside",
        "one/sub/esc_file": j(base, "outside", "secret"),
        "one/to_sibling": j(base, "two"),
        "one/rel_sibling": "../two",
        "one/in_rel": "sub",
        "one/in_abs": j(base, "one", "sub"),
        "one/in_dotdot": "sub/deeper/..",
        "one/sub/deeper/up": "../g",
        "one/chain": "in_rel",
        "one/loop": "loop",
        "one/dangling": "nothing-here",
        "ro/l": "r",
    }
    for name, target in links.items():
        os.symlink(target, j(base, name))


def snapshot(top: str, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """
    Every entry under C{top} (not following symlinks), with its type, mode,
    size, mtime, link target or content digest; C{skip} subtrees left out.
    """
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            extra: object = None
            if os.path.islink(path):
                extra = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            result[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, extra)
    st = os.lstat(top)
    result[top] = (st.st_mode, st.st_mtime_ns)
    return result
