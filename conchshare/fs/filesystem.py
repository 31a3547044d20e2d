"""
The shares' file system: every call made for a client, confined to a
L{ShareSet} by the one resolver (L{conchshare.fs.resolver}, whose rule is
written at its top).

Paths are a client's (virtual) bytes; flags are C{open(2)}'s; attributes
are L{conchshare.fs.attrs.Attrs}.  Every method blocks unless its name says
C{Cached} (never waits: for the reactor thread) or C{ring} (a call the
kernel makes through io_uring).  Failures are L{OSError} (its errno says
what happened) and L{EOFError}.  Pure Python: no Twisted, nothing of the
protocol above.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections.abc import Callable, Mapping
from functools import cached_property, partial

from conchshare.fs import links
from conchshare.fs.attrs import Attrs, attrsFromStat, attrsFromStatx, denied, number, readOnly
from conchshare.fs.directory import ConfinedDirectory
from conchshare.fs.file import ConfinedFile, permissions, setAttrsOnFd, statVFSOf
from conchshare.fs.resolver import (
    CACHED,
    ENTRY,
    LIST,
    Place,
    Resolver,
    Unresolved,
)
from conchshare.fs.ring import RingCall
from conchshare.fs.ringcalls import RingCreate, RingStat
from conchshare.fs.syscalls import (
    CLOEXEC,
    O_PATH,
    MountKey,
    SystemCalls,
    processUmask,
    renameNoReplace,
    systemCalls,
)
from conchshare.shares import Share, ShareSet, VirtualDirectory

__all__ = ["ConfinedFilesystem"]

# The access mode of open(2)'s flags.
_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR
# What a cached STAT opens: the entry itself.
_CACHED_ENTRY = O_PATH | os.O_NOFOLLOW | CLOEXEC


class ConfinedFilesystem:
    """
    The blocking, confined filesystem over a share set.
    """

    def __init__(
        self,
        shares: ShareSet,
        *,
        umask: int = 0o022,
        clock: Callable[[], float] = time.monotonic,
        calls: SystemCalls | None = None,
    ) -> None:
        """
        @param umask: removed from the permissions of what is created.
        @param clock: seconds, monotonic: when a share's path is checked
            again (see L{conchshare.fs.resolver}).
        @param calls: the Linux-only calls to use (default: those this
            system offers, unless C{CONCHSHARE_PORTABLE_FS=1}: see
            L{conchshare.fs.syscalls.systemCalls}).
        """
        self.shares = shares
        self.umask = umask & 0o777
        self._processUmask = processUmask()
        if calls is None:
            calls = systemCalls()
        self._calls = calls
        self._memory = calls.memory
        self.resolver = resolver = Resolver(shares, calls, clock)
        self._lookup = resolver.lookup
        #: See L{Resolver.place}.
        self.place = resolver.place
        # What a STAT made by io_uring opens, and one on the reactor thread:
        # the entry itself; what OPENDIR does there.
        self._ringEntry = resolver.how(ENTRY | CLOEXEC)
        self._cachedEntry = resolver.how(_CACHED_ENTRY, 0, CACHED)
        self._cachedList = resolver.how(LIST, 0, CACHED)
        self._started = int(time.time())
        # The mount of each share on a local filesystem (by its path): its
        # attributes may be read in the reactor thread (statCached).
        self._localMounts: dict[str, MountKey] = {}
        if self._memory is not None:
            for share in shares.shares:
                try:
                    mount = self._memory.localMount(share.path)
                except OSError:
                    mount = None
                if mount is not None:
                    self._localMounts[share.path] = mount
        for share in shares.shares:
            try:
                resolver.root(share)
            except OSError:
                pass  # each request fails until the folder is there

    @property
    def shareMoved(self) -> Callable[[Share, str], None] | None:
        """
        Called (in whatever thread noticed it) once each time a share's
        path stops leading to its folder, with the share and a sentence
        saying so; L{None}: nobody is told.
        """
        return self.resolver.shareMoved

    @shareMoved.setter
    def shareMoved(self, report: Callable[[Share, str], None] | None) -> None:
        self.resolver.shareMoved = report

    def _inMemory(self, share: Share) -> tuple[MountKey, int] | None:
        """
        The mount of C{share} and its folder's descriptor, if what is below
        may be read from the kernel's memory (see L{statCached}): the share
        is on a local filesystem and its path was checked lately.  Never
        blocks.
        """
        mount = self._localMounts.get(share.path)
        if mount is None:
            return None
        root = self.resolver.freshRoot(share)
        if root is None:
            return None
        return mount, root

    def _writable(self, found: Place | VirtualDirectory) -> Place:
        if isinstance(found, VirtualDirectory):
            raise denied("The virtual directories above the shares are read-only")
        if found.share.readOnly:
            raise readOnly()
        return found

    def _entry(self, found: Place | VirtualDirectory) -> Place:
        """
        A place that names a removable/renamable entry (not a share root).
        """
        place = self._writable(found)
        if place.isRoot:
            raise denied("A share itself cannot be removed or renamed")
        return place

    # -- attributes -----------------------------------------------------

    def _virtualAttrs(self) -> Attrs:
        return {
            "size": 0,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "permissions": stat.S_IFDIR | 0o555,
            "atime": self._started,
            "mtime": self._started,
        }

    def statCached(self, path: bytes, *, follow: bool = True) -> Attrs | None:
        """
        STAT (C{follow}) or LSTAT answered from the kernel's caches without
        ever blocking, for the reactor thread: the path must resolve with
        no symlink (a final one too, for STAT), no mount crossing and
        nothing the kernel would have to read from disk, on a share on a
        local filesystem.  Same answers as L{stat}.

        @return: the attributes, or L{None} when L{stat} must do it.
        @raise FileNotFoundError: the kernel knows the path does not exist.
        """
        memory = self._memory
        if memory is None:
            return None
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return self._virtualAttrs()
        share, components = found
        inMemory = self._inMemory(share)
        if inMemory is None:
            return None
        mount, root = inMemory
        if components:
            fd = self.resolver.openCached(root, components, self._cachedEntry)
            if fd < 0:
                return None
            try:
                got = memory.statx(fd)
            finally:
                os.close(fd)
        else:
            got = memory.statx(root)
        if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
            return None
        if stat.S_ISLNK(got.mode) and (follow or self._mapsLinks):
            return None  # followed, or its size is what READLINK gives
        return attrsFromStatx(got)

    def openDirectoryCached(self, path: bytes) -> ConfinedDirectory | None:
        """
        OPENDIR without ever blocking, for the reactor thread, under the
        same conditions as L{statCached} (opening a directory reads
        nothing on a local filesystem; listing it is left to the caller,
        in a worker).

        @return: the open directory, or L{None} when L{openDirectory} must
            do it (a virtual directory, a symlink on the way, ...).
        @raise FileNotFoundError: the kernel knows the path does not exist.
        """
        memory = self._memory
        if memory is None:
            return None
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return None
        share, components = found
        inMemory = self._inMemory(share)
        if inMemory is None:
            return None
        mount, root = inMemory
        fd = self.resolver.openCached(root, components, self._cachedList)
        if fd < 0:
            return None
        try:
            got = memory.statx(fd)
            if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
                os.close(fd)
                return None
            return ConfinedDirectory(fd, linkTargets=self._linkTargets, memory=memory)
        except BaseException:
            os.close(fd)
            raise

    def fstatCached(self, confined: ConfinedFile) -> Attrs | None:
        """
        FSTAT of an open file from memory, for the reactor thread: on a
        share on a local filesystem only (see L{statCached}).

        @return: the attributes, or L{None} when L{ConfinedFile.stat} must
            do it.
        """
        memory = self._memory
        if memory is None or confined.closed:
            return None
        mount = self._localMounts.get(confined.share.path)
        if mount is None:
            return None
        got = memory.statx(confined.fd)
        if got is None or (got.mntId, got.devMajor, got.devMinor) != mount:
            return None
        return attrsFromStatx(got)

    def ringStat(
        self, path: bytes, *, follow: bool = True, cachedFirst: bool = True
    ) -> RingCall | None:
        """
        L{stat} as a call in the kernel (see L{conchshare.fs.ring}), when
        it can be one; L{None} otherwise.

        @param cachedFirst: try L{statCached} first, when the call starts
            (L{False}: the caller just did, and the call starts at once).
        """
        found = self.resolver.ringPath(path)
        if found is None:
            return None
        cached = partial(self.statCached, path, follow=follow) if cachedFirst else None
        # A symlink met is left to stat (falling back) where it is followed
        # or its size is what READLINK gives.
        linkFallback = follow or self._mapsLinks
        return RingStat(found[1], found[2], self._ringEntry, linkFallback, cached)

    def ringOpenFile(self, path: bytes, flags: int, attrs: Mapping[str, object]) -> RingCall | None:
        """
        L{openFile} as a call in the kernel, for the creation of a new file
        (C{O_CREAT}) in a writable share; L{None} otherwise.
        """
        if not flags & os.O_CREAT:
            return None
        mode = number(attrs, "permissions", 0o666) & 0o777 & ~self.umask
        if mode & self._processUmask:
            return None  # needs an fchmod after the open
        found = self.resolver.ringPath(path, creating=True)
        if found is None or found[0].readOnly:
            return None
        share, root, relative = found
        osFlags = self._osFlags(flags) & ~os.O_NONBLOCK
        how = self.resolver.how(osFlags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC, mode)
        append = bool(flags & os.O_APPEND)
        virtualPath = share.virtualPath + b"/" + relative

        def made(fd: int) -> ConfinedFile:
            return ConfinedFile(fd, share, append=append, virtualPath=virtualPath)

        return RingCreate(root, relative, how, bool(flags & os.O_EXCL), made)

    def stat(self, path: bytes, *, follow: bool = True) -> Attrs:
        """
        STAT (C{follow}) or LSTAT.
        """
        fd = self.resolver.openEntry(path, ENTRY)
        if fd >= 0:
            try:
                entry = os.fstat(fd)
                if not (follow and stat.S_ISLNK(entry.st_mode)):
                    return self._linkAttrs(attrsFromStat(entry), fd, b"")
            finally:
                os.close(fd)
        with self.place(path, follow=follow) as found:
            if isinstance(found, VirtualDirectory):
                return self._virtualAttrs()
            st = found.seen
            if st is None:
                st = os.stat(found.name, dir_fd=found.parent, follow_symlinks=False)
            return self._linkAttrs(attrsFromStat(st), found.parent, found.name)

    def setAttrs(self, path: bytes, attrs: Mapping[str, object], *, follow: bool = True) -> None:
        """
        SETSTAT (C{follow}) or lsetstat: size, uid/gid, permissions,
        atime/mtime.
        """
        flags = (os.O_WRONLY if "size" in attrs else os.O_RDONLY) | os.O_NONBLOCK
        fd = self.resolver.openEntry(path, flags, writing=True)
        if fd >= 0:
            # Not a symlink (refused by the open), and open for the change.
            try:
                setAttrsOnFd(fd, attrs)
            finally:
                os.close(fd)
            return
        with self.place(path, follow=follow) as found:
            place = self._writable(found)
            st = place.seen
            if st is None:
                st = os.stat(place.name, dir_fd=place.parent, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                # lsetstat on a symlink: only what Linux can do to a link.
                if "size" in attrs or "permissions" in attrs:
                    raise OSError(errno.EOPNOTSUPP, "Operation not supported on a symlink")
                if "uid" in attrs or "gid" in attrs:
                    os.chown(
                        place.name,
                        number(attrs, "uid", -1),
                        number(attrs, "gid", -1),
                        dir_fd=place.parent,
                        follow_symlinks=False,
                    )
                if "atime" in attrs and "mtime" in attrs:
                    os.utime(
                        place.name,
                        (number(attrs, "atime"), number(attrs, "mtime")),
                        dir_fd=place.parent,
                        follow_symlinks=False,
                    )
                return
            flags = os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC
            if "size" in attrs:
                fd = os.open(place.name, os.O_WRONLY | flags, dir_fd=place.parent)
            else:
                try:
                    fd = os.open(place.name, os.O_RDONLY | flags, dir_fd=place.parent)
                except PermissionError:
                    if not hasattr(os, "O_PATH"):
                        raise
                    fd = os.open(place.name, os.O_PATH | flags, dir_fd=place.parent)
                    try:
                        # An O_PATH descriptor accepts no fchmod: go through
                        # its /proc link, which names this very inode.
                        self._setAttrsByProc(fd, attrs)
                    finally:
                        os.close(fd)
                    return
            try:
                setAttrsOnFd(fd, attrs)
            finally:
                os.close(fd)

    def _setAttrsByProc(self, fd: int, attrs: Mapping[str, object]) -> None:
        proc = f"/proc/self/fd/{fd}"
        if "uid" in attrs or "gid" in attrs:
            os.chown(proc, number(attrs, "uid", -1), number(attrs, "gid", -1))
        if "permissions" in attrs:
            os.chmod(proc, permissions(attrs, fd))
        if "atime" in attrs and "mtime" in attrs:
            os.utime(proc, (number(attrs, "atime"), number(attrs, "mtime")))

    def statVFS(self, path: bytes) -> dict[str, int]:
        """
        statvfs@openssh.com.  A virtual directory reports the first share
        under it, read-only.
        """
        with self.place(path, follow=True) as found:
            if isinstance(found, VirtualDirectory):
                share = next(
                    s
                    for s in self.shares.shares
                    if s.components[: len(found.components)] == found.components
                )
                # The folder served (its path may lead elsewhere by now).
                return statVFSOf(self.resolver.root(share), True)
            # Any kind of entry (statvfs of a file is fine); a symlink is
            # opened itself, never followed.
            flags = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK)
            fd = os.open(found.name, flags | os.O_NOFOLLOW | CLOEXEC, dir_fd=found.parent)
            try:
                return statVFSOf(fd, found.share.readOnly)
            finally:
                os.close(fd)

    # -- files and directories ------------------------------------------

    def openFile(self, path: bytes, flags: int, attrs: Mapping[str, object]) -> ConfinedFile:
        """
        OPEN with C{open(2)} C{flags}: the access mode, C{O_APPEND},
        C{O_TRUNC}, C{O_CREAT} and C{O_EXCL} (others are ignored).  A
        created file gets the requested permissions (default 0666) minus
        the umask; a final symlink is followed only inside the share.
        """
        creating = flags & os.O_CREAT
        mutating = flags & (_ACCESS | os.O_APPEND | os.O_TRUNC | os.O_CREAT) != os.O_RDONLY
        osFlags = self._osFlags(flags)
        # Like OpenSSH: no set-id or sticky bits on create.
        mode = number(attrs, "permissions", 0o666) & 0o777 & ~self.umask
        if creating:
            # A new file, with no symlink on the way: one openat2.
            fd = self.resolver.openEntry(
                path,
                (osFlags & ~os.O_NONBLOCK) | os.O_CREAT | os.O_EXCL,
                mode,
                writing=True,
                creating=True,
            )
            if fd >= 0:
                share, components = self._lookup(path, creating=True)  # type: ignore[misc]
                return self._created(fd, share, components, flags, mode)
            if ctypes.get_errno() == errno.EEXIST and flags & os.O_EXCL:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        with self.place(path, follow=True, creating=bool(creating)) as found:
            if mutating:
                place = self._writable(found)
            elif isinstance(found, VirtualDirectory):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
            else:
                place = found
            if creating:
                try:
                    # A new regular file: no FIFO to guard against, so
                    # blocking from the start (no fstat, no fcntl).
                    fd = os.open(
                        place.name,
                        (osFlags & ~os.O_NONBLOCK) | os.O_CREAT | os.O_EXCL,
                        mode,
                        dir_fd=place.parent,
                    )
                except FileExistsError:
                    if flags & os.O_EXCL:
                        raise
                else:
                    return self._created(fd, place.share, place.components, flags, mode)
            fd = os.open(place.name, osFlags, dir_fd=place.parent)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    # O_NONBLOCK only guarded the open against FIFOs.
                    os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return ConfinedFile(
                fd, place.share, append=bool(flags & os.O_APPEND), virtualPath=place.virtualPath
            )

    @staticmethod
    def _osFlags(flags: int) -> int:
        # The flags every open of OPEN is made with (not O_CREAT: see
        # openFile).
        return (
            flags & (_ACCESS | os.O_APPEND | os.O_TRUNC) | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC
        )

    def _created(
        self, fd: int, share: Share, components: tuple[bytes, ...], flags: int, mode: int
    ) -> ConfinedFile:
        # The file open on fd was just created with mode (before the
        # process umask): the file of an OPEN with O_CREAT.
        try:
            if mode & self._processUmask:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return ConfinedFile(
            fd,
            share,
            append=bool(flags & os.O_APPEND),
            virtualPath=b"/".join((share.virtualPath,) + components),
        )

    def openDirectory(self, path: bytes) -> ConfinedDirectory:
        """
        OPENDIR: a real directory, or a virtual one listing the shares (or
        the virtual directories) below it with their attributes.
        """
        with self.place(path, follow=True) as found:
            if isinstance(found, VirtualDirectory):
                entries = []
                for child in found.children:
                    try:
                        attrs = self.stat(found.virtualPath.rstrip(b"/") + b"/" + child)
                    except OSError:
                        # A share whose folder went away is still listed.
                        attrs = self._virtualAttrs()
                    entries.append((child, attrs))
                return ConfinedDirectory(None, entries)
            fd = os.open(found.name, LIST, dir_fd=found.parent)
            try:
                return ConfinedDirectory(fd, linkTargets=self._linkTargets, memory=self._memory)
            except BaseException:
                os.close(fd)
                raise

    def makeDirectory(self, path: bytes, attrs: Mapping[str, object]) -> None:
        """
        MKDIR with the requested permissions (default 0777) minus the umask.
        """
        # Never set-user-id (set-group-id is fine on a directory).
        mode = number(attrs, "permissions", 0o777) & 0o7777 & ~self.umask & ~stat.S_ISUID
        with self.place(path, follow=False, creating=True) as found:
            place = self._entry(found)
            os.mkdir(place.name, mode, dir_fd=place.parent)
            if mode & self._processUmask:
                fd = os.open(place.name, LIST, dir_fd=place.parent)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)

    def removeDirectory(self, path: bytes) -> None:
        """
        RMDIR, never recursive.
        """
        with self.place(path, follow=False) as found:
            place = self._entry(found)
            os.rmdir(place.name, dir_fd=place.parent)

    def removeFile(self, path: bytes) -> None:
        """
        REMOVE (a symlink itself is removed, not its target).
        """
        with self.place(path, follow=False) as found:
            place = self._entry(found)
            os.unlink(place.name, dir_fd=place.parent)

    def rename(self, oldPath: bytes, newPath: bytes, *, overwrite: bool) -> None:
        """
        RENAME (C{overwrite=False}: an existing C{newPath} is an error, as
        SFTP v3 requires) or posix-rename (C{overwrite=True}).
        """
        with (
            self.place(oldPath, follow=False) as old,
            self.place(newPath, follow=False, creating=True) as new,
        ):
            source = self._entry(old)
            destination = self._entry(new)
            if overwrite:
                os.rename(
                    source.name,
                    destination.name,
                    src_dir_fd=source.parent,
                    dst_dir_fd=destination.parent,
                )
            else:
                renameNoReplace(
                    self._calls.renameat2,
                    source.parent,
                    source.name,
                    destination.parent,
                    destination.name,
                )

    def hardLink(self, oldPath: bytes, newPath: bytes) -> None:
        """
        hardlink@openssh.com: C{newPath} becomes a link to C{oldPath} (a
        symlink is linked itself, never followed).  Both shares must be
        writable, or a link would let the read-only file be written.
        """
        with (
            self.place(oldPath, follow=False) as old,
            self.place(newPath, follow=False, creating=True) as new,
        ):
            source = self._entry(old)
            destination = self._entry(new)
            os.link(
                source.name,
                destination.name,
                src_dir_fd=source.parent,
                dst_dir_fd=destination.parent,
                follow_symlinks=False,
            )

    # -- symlinks and names ---------------------------------------------

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        """
        SYMLINK, storing what READLINK gives back as it was written: a
        relative target as given; an absolute target whose virtual path lies
        in a share as that share's real path followed by the rest of the
        target exactly as written (so the link works on this side too, and
        breaks if the folder moves); any other target as given (a link that
        leads out of its share is never followed).
        """
        if b"\0" in targetPath:
            raise OSError(errno.EINVAL, "The target contains a NUL byte")
        with self.place(linkPath, follow=False, creating=True) as found:
            place = self._entry(found)
            os.symlink(links.storedTarget(self.shares, targetPath), place.name, dir_fd=place.parent)

    def virtualTarget(self, target: bytes) -> bytes:
        """
        What READLINK answers for a stored symlink target (see
        L{links.virtualTarget}).
        """
        return links.virtualTarget(self.shares, target)

    @cached_property
    def _mapsLinks(self) -> bool:
        # Whether virtualTarget may change a target's length; if not,
        # symlinks' sizes are reported as they are, without a readlink
        # each.  (A bool, not the bound method: no reference cycle.  The
        # shares never change.)
        return links.mapsLinks(self.shares)

    @property
    def _linkTargets(self) -> Callable[[bytes], bytes] | None:
        # virtualTarget where it may change a target's length, else None.
        return self.virtualTarget if self._mapsLinks else None

    def _linkAttrs(self, attrs: Attrs, parent: int, name: bytes) -> Attrs:
        # LSTAT of a symlink: its size is the length of what READLINK gives.
        if not stat.S_ISLNK(number(attrs, "permissions", 0)):
            return attrs
        linkTargets = self._linkTargets
        if linkTargets is None:
            return attrs
        try:
            target = os.readlink(name, dir_fd=parent)
        except OSError:
            return attrs
        return {**attrs, "size": len(linkTargets(target))}

    def readLink(self, path: bytes) -> bytes:
        """
        READLINK: the stored target, mapped by L{virtualTarget}.
        """
        with self.place(path, follow=False) as found:
            if isinstance(found, VirtualDirectory):
                raise OSError(errno.EINVAL, "Not a symbolic link")
            target = os.readlink(found.name, dir_fd=found.parent)
        return self.virtualTarget(target)

    def realPath(self, path: bytes) -> bytes:
        """
        REALPATH: the canonical virtual path.  Symlinks inside the share are
        resolved; where resolution stops (missing entry, link out of the
        share) the rest is kept lexically.  Never a real path.
        """
        found = self._lookup(path)
        if isinstance(found, VirtualDirectory):
            return found.virtualPath
        share, components = found
        fds: list[int] = []
        try:
            try:
                place = self.resolver.walk(share, components, True, fds, lenient=True)
                resolved = list(place.components)
            except Unresolved as stop:
                resolved = list(stop.components)
                for component in stop.rest:
                    if component == b"..":
                        if resolved:
                            resolved.pop()
                    elif component not in (b"", b"."):
                        resolved.append(component)
        finally:
            for fd in fds:
                os.close(fd)
        return b"/".join([share.virtualPath] + resolved)

    # -- extensions -----------------------------------------------------

    def copyData(
        self,
        source: ConfinedFile,
        readOffset: int,
        length: int,
        destination: ConfinedFile,
        writeOffset: int,
        limit: int | None = None,
    ) -> int:
        """
        copy-data: C{length} bytes (0: to the end) from C{source} to
        C{destination}, or their first C{limit} bytes (the rest is copied
        by calling again with the offsets and length moved on).

        @return: the count copied: less than C{limit} (or no C{limit})
            means the copy is complete.
        @raise OSError: the destination's share is read-only, or the
            ranges overlap within one file (C{EBUSY}), or a read or write
            failed.
        """
        if destination.share.readOnly:
            raise readOnly()
        # Within one file only between ranges that do not overlap.  Copying
        # "to the end" past the read offset would otherwise read back what it
        # wrote, for ever, filling the disk (OpenSSH refuses one file always).
        a, b = os.fstat(source.fd), os.fstat(destination.fd)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and (
            length == 0 or (readOffset < writeOffset + length and writeOffset < readOffset + length)
        ):
            raise OSError(errno.EBUSY, "copy-data between overlapping ranges of one file")
        remaining = length if length else None
        if limit is not None:
            remaining = limit if remaining is None else min(remaining, limit)
        copied = 0
        while remaining is None or remaining > 0:
            size = 256 * 1024 if remaining is None else min(remaining, 256 * 1024)
            data = os.pread(source.fd, size, readOffset)
            if not data:
                break
            destination.write(writeOffset, data)
            readOffset += len(data)
            writeOffset += len(data)
            copied += len(data)
            if remaining is not None:
                remaining -= len(data)
        return copied
