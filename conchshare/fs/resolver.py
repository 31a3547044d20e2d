"""
How a client's path becomes a descriptor below its share's folder: the one
resolver every call made for a client goes through (worker threads, the
never-waiting calls of the reactor thread, and io_uring).

The rule
--------

1. A client path is normalised lexically (L{conchshare.shares}): no
   C{..}, C{.} or empty component is left, and it names either a virtual
   directory above the shares (no I/O at all) or a share and the
   components below its folder.

2. The share's folder is a descriptor opened once, the folder its path led
   to first, pinned by (C{st_dev}, C{st_ino}) and kept open (its inode
   number cannot be reused).  Its path is checked again without following
   any symlink (L{openFolder}) at most every L{ROOT_RECHECK} seconds of the
   injected clock, by a caller that may wait (L{Resolver.root}, in a
   worker); while it leads anywhere else the share serves nothing
   (C{ENOENT}).  A caller that must not wait (the reactor thread, the
   ring's submission) uses the descriptor only while that check is recent
   (L{Resolver.freshRoot}); otherwise its call goes to a worker.

3. Every descriptor below the folder is opened relative to it, in one of
   two ways and no other:

   - the fast path, one C{openat2} whose C{open_how} is made by
     L{Resolver.how} alone and always holds C{RESOLVE_BENEATH |
     RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS}: the kernel refuses any
     component that would leave the folder and every symlink, the last
     one included.  Workers use it for the entry of a request
     (L{Resolver.openEntry}) and for the directory of a walk; the reactor
     thread adds C{RESOLVE_CACHED | RESOLVE_NO_XDEV}
     (L{Resolver.openCached}); io_uring is handed the same structure
     (L{Resolver.ringPath} and L{Resolver.how}).  What it refuses is
     either known missing (C{ENOENT}, no symlink on the way) or walked;
   - the component walk (L{Resolver.walk}), in a worker: one component at
     a time, each opened C{O_NOFOLLOW | O_DIRECTORY} relative to the
     previous descriptor; a symlink met is read and expanded here,
     lexically, and followed only if its target stays in the share (a
     relative target whose C{..} stay below the folder, an absolute target
     under the share's real path); any other fails with C{EACCES}.  The
     last component is never followed by the kernel: the call is made
     relative to its parent's descriptor with C{follow_symlinks=False} or
     C{O_NOFOLLOW}.

   Without C{openat2} (C{CONCHSHARE_PORTABLE_FS=1}, macOS, a kernel older
   than 5.6) the walk alone.

So a concurrent process that swaps a directory for a symlink can only make
a request fail, never reach outside its share.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from conchshare.fs.attrs import denied
from conchshare.fs.syscalls import (
    AT_FDCWD,
    CLOEXEC,
    O_PATH,
    RESOLVE_BENEATH,
    RESOLVE_CACHED,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    SYS_OPENAT2,
    OpenHow,
    SystemCalls,
)
from conchshare.shares import Share, ShareSet, VirtualDirectory, splitPath

__all__ = [
    "MAX_WALKED",
    "ROOT_RECHECK",
    "Place",
    "Placed",
    "Resolver",
    "Unresolved",
    "movedMessage",
    "openFolder",
]

#: A directory on the way (O_PATH: we may search it without reading it).
WALK = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC
#: A directory to list.
LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC
#: Any entry, to read its status (a symlink itself).
ENTRY = O_PATH | os.O_NOFOLLOW
# A share's folder, kept open to resolve below.
_ROOT = O_PATH | os.O_DIRECTORY | CLOEXEC

#: What every open below a share's folder asks of the kernel.
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
#: And what the reactor thread's opens add: nothing not in memory, no
#: other mount.
CACHED = RESOLVE_CACHED | RESOLVE_NO_XDEV

#: Seconds a share folder's descriptor is used before its path is checked
#: again (renaming the folder away ends the share within this long).
ROOT_RECHECK = 0.05
_MAX_HOPS = 40
#: The most components one walk goes through, those of symlink targets
#: included (Linux's PATH_MAX, in components): past it, ELOOP.
MAX_WALKED = 4096
# The most client paths whose lookup is remembered.
_LOOKUPS_KEPT = 4096
_HOW_SIZE = ctypes.sizeof(OpenHow)
addressof = ctypes.addressof
# The most open_how structures kept (a handful of flag sets, and the modes
# clients create files with).
_HOWS_KEPT = 256


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


def closeAll(roots: dict[str, tuple[int, int, int, float]]) -> None:
    """
    Close the share folders' descriptors of a resolver (when collected).
    """
    for fd in [entry[0] for entry in roots.values()]:
        try:
            os.close(fd)
        except OSError:
            pass
    roots.clear()


# A share's folder by its absolute path, with no symlink anywhere on the
# way (the folder itself included): RESOLVE_NO_SYMLINKS from "/".
_HOW_FOLDER = OpenHow(_ROOT | os.O_NOFOLLOW, 0, RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)


def openFolder(path: str, calls: SystemCalls) -> int:
    """
    An C{O_PATH} descriptor of the directory at the absolute C{path},
    reached without following any symlink (one C{openat2} with
    C{RESOLVE_NO_SYMLINKS}, else an C{O_NOFOLLOW} open per component from
    C{/}).  Never waits for anything but the filesystem: call it in a worker.

    @raise OSError: the path is missing, not a directory, or has a symlink
        on the way (C{ELOOP} or C{ENOTDIR}).
    """
    encoded = os.fsencode(path)
    if calls.openat2 is not None:
        fd = calls.open(AT_FDCWD, encoded, _HOW_FOLDER)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return fd
    fd = os.open("/", _ROOT)
    try:
        for component in splitPath(encoded):
            if component == b"..":
                raise OSError(errno.EINVAL, "A share's path is absolute and canonical", path)
            following = os.open(component, WALK, dir_fd=fd)
            os.close(fd)
            fd = following
    except BaseException:
        os.close(fd)
        raise
    return fd


def movedMessage(share: Share) -> str:
    """
    The sentence that says C{share}'s folder is no longer at its path.
    """
    return (
        f"The folder of the share {os.fsdecode(share.name)!r} is no longer at "
        f"{share.path}: its files are not served until that folder is back there "
        "(a folder deleted and made again, or remounted, needs a restart)."
    )


class Resolver:
    """
    The one resolver of a share set (see the module docstring for its
    rule).

    @ivar shareMoved: called (in whatever thread noticed it) once each time
        a share's path stops leading to its folder, with the share and a
        sentence saying so; L{None}: nobody is told.
    """

    def __init__(self, shares: ShareSet, calls: SystemCalls, clock: Callable[[], float]) -> None:
        """
        @param calls: the Linux-only calls to use (see
            L{conchshare.fs.syscalls.systemCalls}).
        @param clock: seconds, monotonic: when a share's path is checked
            again.
        """
        self.shares = shares
        self.calls = calls
        self._openat2 = calls.openat2
        self._clock = clock
        # What lookup found for a client path (bounded: cleared when full).
        self._located: dict[bytes, tuple[Share, tuple[bytes, ...]] | VirtualDirectory] = {}
        # A descriptor of each share's folder, by its path, with the
        # folder's identity (st_dev, st_ino) and when its path last led
        # there (see the module docstring, rule 2).
        self._roots: dict[str, tuple[int, int, int, float]] = {}
        weakref.finalize(self, closeAll, self._roots)
        self._rootLock = threading.Lock()
        # The paths of the shares whose folder is not there (reported).
        self._moved: set[str] = set()
        self.shareMoved: Callable[[Share, str], None] | None = None
        self._hows: dict[tuple[int, int, int], OpenHow] = {}
        # The directory of a walk, by one openat2.
        self._walkHow = self.how(WALK & ~os.O_NOFOLLOW)
        self._walkAddress = addressof(self._walkHow)

    # -- rule 1: the client's path ----------------------------------------

    def lookup(
        self, path: bytes, *, creating: bool = False
    ) -> tuple[Share, tuple[bytes, ...]] | VirtualDirectory:
        """
        The share and components of C{path}, or the virtual directory it
        names.  Lexical only: never blocks.

        @param creating: the caller means to create the entry: a new name
            in a virtual directory is refused (C{EACCES}), not missing.
        @raise OSError: C{ENOENT}, C{EACCES} or C{EINVAL} (see
            L{conchshare.shares.ShareSet}).
        """
        # The share set never changes: clients name the same paths again
        # and again (sshfs: LSTAT, OPEN, SETSTAT, ...).
        found = self._located.get(path)
        if found is not None:
            return found
        components = self.shares.normalize(path)
        try:
            found = self.shares.locate(components)
        except FileNotFoundError:
            if creating and components:
                parent = self.shares.locate(components[:-1])
                if isinstance(parent, VirtualDirectory):
                    raise denied("The virtual directories above the shares are read-only")
            raise
        located = self._located
        if len(located) >= _LOOKUPS_KEPT:
            located.clear()
        located[path] = found
        return found

    # -- rule 2: the share's folder ---------------------------------------

    def root(self, share: Share) -> int:
        """
        The descriptor of C{share}'s folder (owned here: never close it).
        May wait for the filesystem every L{ROOT_RECHECK} seconds: never on
        the reactor thread.

        @raise FileNotFoundError: the share's path leads nowhere, or not to
            the folder it led to first (a symlink on the way included).
        """
        entry = self._roots.get(share.path)
        now = self._clock()
        if entry is not None and now - entry[3] < ROOT_RECHECK:
            return entry[0]
        with self._rootLock:
            entry = self._roots.get(share.path)
            try:
                fd = openFolder(share.path, self.calls)
            except OSError:
                if entry is not None:
                    self._lost(share)
                raise FileNotFoundError(
                    errno.ENOENT, "The share's folder is not at its path"
                ) from None
            try:
                found = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if entry is None:
                self._roots[share.path] = (fd, found.st_dev, found.st_ino, now)
                return fd
            os.close(fd)
            if (found.st_dev, found.st_ino) != entry[1:3]:
                self._lost(share)
                raise FileNotFoundError(errno.ENOENT, "The share's folder is not at its path")
            self._roots[share.path] = (*entry[:3], now)
            self._moved.discard(share.path)
            return entry[0]

    def freshRoot(self, share: Share) -> int | None:
        """
        The descriptor of C{share}'s folder if its path was checked within
        L{ROOT_RECHECK} seconds, for a caller that must not wait; L{None}:
        the call goes to a worker (which checks it again).
        """
        entry = self._roots.get(share.path)
        if entry is None or self._clock() - entry[3] >= ROOT_RECHECK:
            return None
        return entry[0]

    def _lost(self, share: Share) -> None:
        # Once per loss: again only after the folder was back.
        if share.path in self._moved:
            return
        self._moved.add(share.path)
        report = self.shareMoved
        if report is not None:
            report(share, movedMessage(share))

    # -- rule 3: the fast path ---------------------------------------------

    def how(self, flags: int, mode: int = 0, resolve: int = 0) -> OpenHow:
        """
        The C{open_how} of every C{openat2} below a share's folder: C{flags}
        and C{mode}, resolved L{BENEATH} it, plus C{resolve} (L{CACHED}).
        Whoever gets one keeps it while the kernel reads it (io_uring).
        """
        key = (flags, mode, resolve)
        how = self._hows.get(key)
        if how is None:
            if len(self._hows) >= _HOWS_KEPT:
                self._hows.clear()
            how = self._hows[key] = OpenHow(flags, mode, BENEATH | resolve)
        return how

    def openEntry(
        self,
        path: bytes,
        flags: int,
        mode: int = 0,
        *,
        writing: bool = False,
        creating: bool = False,
    ) -> int:
        """
        The fast path of a request on one entry, in a worker: C{path}'s
        entry opened with one C{openat2} below its share's folder (C{flags}
        plus C{O_NOFOLLOW | O_CLOEXEC}), when no symlink is on the way and
        the entry is not a share's folder.

        @return: the descriptor, or -1 when the caller must take the walk
            (L{place}), which follows symlinks that stay in the share and
            reports any other failure as it should (C{ctypes.get_errno()}
            says why: C{EEXIST} for an C{O_EXCL} create).
        @param writing: the request changes the entry (refused in a
            read-only share).
        @param creating: the entry is to be created (see L{lookup}).
        @raise FileNotFoundError: no such entry (nor symlink on the way).
        @raise PermissionError: the request would change a read-only share.
        """
        if self._openat2 is None:
            return -1
        found = self.lookup(path, creating=creating)
        if isinstance(found, VirtualDirectory) or not found[1]:
            return -1
        share, components = found
        if writing and share.readOnly:
            raise denied("The share is read-only")
        how = self.how(flags | os.O_NOFOLLOW | CLOEXEC, mode)
        fd = int(
            self._openat2(
                SYS_OPENAT2, self.root(share), b"/".join(components), addressof(how), _HOW_SIZE
            )
        )
        if fd < 0 and ctypes.get_errno() == errno.ENOENT and not flags & os.O_CREAT:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return fd

    def openCached(self, root: int, components: tuple[bytes, ...], how: OpenHow) -> int:
        """
        The fast path on the reactor thread: C{components} below the
        folder C{root} (from L{freshRoot}) opened as C{how} says (one of
        L{how}'s, with L{CACHED}): nothing the kernel does not have in
        memory, no mount crossed.  Never waits.

        @return: the descriptor, or -1 when a worker must do it.
        @raise FileNotFoundError: the kernel knows it does not exist.
        """
        fd = int(
            self._openat2(
                SYS_OPENAT2, root, b"/".join(components) or b".", addressof(how), _HOW_SIZE
            )
        )
        if fd < 0 and ctypes.get_errno() == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return fd

    def ringPath(self, path: bytes, *, creating: bool = False) -> tuple[Share, int, bytes] | None:
        """
        For a call io_uring makes (an C{openat2} with an L{how}), without
        blocking: the share, its folder's descriptor (checked lately) and
        the path relative to it, of an entry below a folder.  L{None}: the
        call runs in a worker.
        """
        if self._openat2 is None:
            return None
        try:
            found = self.lookup(path, creating=creating)
        except OSError:
            return None
        if isinstance(found, VirtualDirectory) or not found[1]:
            return None
        share, components = found
        root = self.freshRoot(share)
        if root is None:
            return None
        return share, root, b"/".join(components)

    # -- rule 3: the walk ----------------------------------------------------

    def place(self, path: bytes, *, follow: bool, creating: bool = False) -> Placed:
        """
        Resolve C{path} to a confined location, for a C{with} statement:
        C{with resolver.place(path, follow=True) as found:}.  The
        descriptors it opened are closed when the statement ends.  Blocks:
        in a worker.

        @param follow: resolve a final symlink (inside its share) too.
        @param creating: see L{lookup}.
        @raise PermissionError: a symlink on the way leads out of the share.
        @raise OSError: a directory on the way is missing or not a directory.
        """
        found = self.lookup(path, creating=creating)
        if isinstance(found, VirtualDirectory):
            return Placed(found, [])
        fds: list[int] = []
        try:
            return Placed(self.walk(found[0], found[1], follow, fds), fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def walk(
        self,
        share: Share,
        components: tuple[bytes, ...],
        follow: bool,
        fds: list[int],
        *,
        lenient: bool = False,
    ) -> Place:
        """
        The place of C{components} below C{share}'s folder: its directory by
        the fast path when it can, else component by component (see the
        module docstring).  The descriptors opened are appended to C{fds}
        (the caller closes them).

        @param lenient: raise L{Unresolved} where resolution stops (for
            REALPATH) instead of the error.
        """
        root = self.root(share)
        if self._openat2 is not None and len(components) > 1:
            place = self._fastWalk(share, root, components, follow, fds)
            if place is not None:
                return place
        # stack[1:] are the descriptors at the end of fds (those the fast
        # path left come first): a directory left by ".." or an absolute
        # link is closed at once, so one walk holds at most one descriptor
        # per component of the directory it is in.
        stack = [root]
        first = len(fds)
        names: list[bytes] = []
        # Never empty or "." (normalised, and filtered from link targets).
        pending = list(components)
        hops = _MAX_HOPS
        walked = 0

        # Lenient mode (realPath): the state before the first symlink, so
        # that a link out of the share is reported by its own name.
        firstLink: tuple[tuple[bytes, ...], list[bytes]] | None = None

        def fail(error: OSError, component: bytes) -> OSError:
            if lenient:
                if isinstance(error, PermissionError) and firstLink is not None:
                    raise Unresolved(*firstLink)
                raise Unresolved(tuple(names), [component] + pending)
            return error

        while pending:
            component = pending.pop(0)
            walked += 1
            if walked > MAX_WALKED:
                raise fail(OSError(errno.ELOOP, "Too many path components"), component)
            if component == b"..":
                if not names:
                    raise fail(denied("A symlink leads out of the share"), component)
                names.pop()
                stack.pop()
                os.close(fds.pop())
                continue
            last = not pending
            parent = stack[-1]
            if last:
                if not follow:
                    return Place(share, parent, component, tuple(names) + (component,))
                try:
                    st = os.stat(component, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError as e:
                    if lenient:
                        raise Unresolved(tuple(names), [component])
                    # The parent exists: a new entry may be made here.
                    del e
                    return Place(share, parent, component, tuple(names) + (component,))
                if not stat.S_ISLNK(st.st_mode):
                    return Place(share, parent, component, tuple(names) + (component,), st)
            else:
                try:
                    fd = os.open(component, WALK, dir_fd=parent)
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise fail(e, component)
                    try:
                        st = os.stat(component, dir_fd=parent, follow_symlinks=False)
                    except OSError as e2:
                        raise fail(e2, component)
                    if not stat.S_ISLNK(st.st_mode):
                        raise fail(NotADirectoryError(errno.ENOTDIR, "Not a directory"), component)
                else:
                    fds.append(fd)
                    stack.append(fd)
                    names.append(component)
                    continue
            # A symlink: expand it, if it stays in the share.
            if firstLink is None:
                firstLink = (tuple(names), [component] + pending)
            hops -= 1
            if hops < 0:
                raise fail(OSError(errno.ELOOP, "Too many levels of symbolic links"), component)
            try:
                target = os.readlink(component, dir_fd=parent)
            except OSError as e:
                raise fail(e, component)
            parts = splitPath(target)
            if target.startswith(b"/"):
                rootParts = splitPath(os.fsencode(share.path))
                if parts[: len(rootParts)] != rootParts:
                    raise fail(denied("A symlink leads out of the share"), component)
                del stack[1:]
                for fd in fds[first:]:
                    os.close(fd)
                del fds[first:]
                names.clear()
                pending[:0] = parts[len(rootParts) :]
            else:
                pending[:0] = parts
        # The path ended on a directory reached through a symlink or "..".
        if not names:
            return Place(share, root, b".", ())
        return Place(share, stack[-2], names[-1], tuple(names))

    def _fastWalk(
        self,
        share: Share,
        root: int,
        components: tuple[bytes, ...],
        follow: bool,
        fds: list[int],
    ) -> Place | None:
        """
        The place of C{components} (normalised: no C{..}, C{.} or empty
        component) when its directory is reached without any symlink, with
        one C{openat2} confined below C{root}; L{None} when the walk must
        be done component by component (a symlink on the way or at the end,
        a missing directory, an error).
        """
        name = components[-1]
        parent = int(
            self._openat2(
                SYS_OPENAT2, root, b"/".join(components[:-1]), self._walkAddress, _HOW_SIZE
            )
        )
        if parent < 0:
            return None
        fds.append(parent)
        st = None
        if follow:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                pass  # a new entry may be made here
            except OSError:
                return None
            else:
                if stat.S_ISLNK(st.st_mode):
                    return None
        return Place(share, parent, name, components, st)
