"""
The contract between the SFTP protocol core and the share avatar.

The avatar implements Conch's L{twisted.conch.interfaces.ISFTPServer} (so it
also plugs into stock L{twisted.conch.ssh.filetransfer.FileTransferServer})
and, for OpenSSH's extensions, L{IShareSFTPServer} below.

Rules both sides rely on:
  - Paths are C{bytes}, virtual (as the client sent them); never decoded.
  - Every method may return its result directly or a L{Deferred} firing with
    it.  Slow filesystem work runs off the reactor thread, inside the avatar.
  - Failures are L{twisted.conch.ssh.filetransfer.SFTPError} (a v3 code and a
    message), L{OSError} (mapped to a v3 status by
    L{conchshare.sftp.errors.statusForException}) or L{EOFError} (end of file
    or of a directory listing).
  - Attributes are dicts with the keys Conch uses: C{size}, C{uid}, C{gid},
    C{permissions}, C{atime}, C{mtime} (and C{ext_*} for extended pairs).
  - An L{ISFTPFile} serialises the requests made on it: they apply in the
    order they were made, even though each runs in a worker thread.
  - An avatar that runs its calls in an engine says which
    (L{IEngineAvatar}): the protocol around the core then brackets each
    feed with the engine's wake-up hold and waits briefly after small ones
    (L{conchshare.sftp.engine.ICallEngine}).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IShareDirectory(Interface):
    """
    An open directory: what L{ISFTPServer.openDirectory} returns.

    It is also a plain iterator of C{(filename, longname, attrs)} so that
    stock Conch can use it; the core uses L{readBatch} instead.
    """

    def readBatch(maximum: int) -> object:
        """
        Read up to C{maximum} entries.

        @return: a list of C{(filename: bytes, longname: bytes, attrs: dict)}
            or a Deferred firing with one; never empty.
        @raise EOFError: when no entries are left.
        """

    def close() -> object:
        """
        Release the directory.  May return a Deferred.
        """


class IEncodedDirectory(IShareDirectory):
    """
    An L{IShareDirectory} that also gives its entries already encoded (the
    core then sends them as they are).
    """

    def readEncoded(maximum: int) -> object:
        """
        Read up to C{maximum} entries, as L{IShareDirectory.readBatch} but
        each encoded as a NAME reply carries it: the filename and the long
        name as SFTP strings, then the ATTRS.

        @return: a list of C{bytes} or a Deferred firing with one; never
            empty.
        @raise EOFError: when no entries are left.
        """


class IShareSFTPServer(Interface):
    """
    The OpenSSH extensions, as avatar methods.  The core owns the wire format
    (parsing requests, encoding replies) and the table that advertises them.
    """

    def posixRename(oldPath: bytes, newPath: bytes) -> object:
        """
        C{posix-rename@openssh.com}: rename, replacing C{newPath} if it exists.
        """

    def statVFS(path: bytes) -> object:
        """
        C{statvfs@openssh.com}.

        @return: a dict with integer keys C{bsize}, C{frsize}, C{blocks},
            C{bfree}, C{bavail}, C{files}, C{ffree}, C{favail}, C{fsid},
            C{flag} (bit 1 read-only, bit 2 nosuid), C{namemax}.
        """

    def fstatVFS(fileObj: object) -> object:
        """
        C{fstatvfs@openssh.com} on an open file (an L{ISFTPFile} from this
        avatar).  Same dict as L{statVFS}.
        """

    def hardLink(oldPath: bytes, newPath: bytes) -> object:
        """
        C{hardlink@openssh.com}: make C{newPath} a hard link to C{oldPath}.
        """

    def fsync(fileObj: object) -> object:
        """
        C{fsync@openssh.com} on an open file.
        """

    def lsetStat(path: bytes, attrs: dict[str, object]) -> object:
        """
        C{lsetstat@openssh.com}: like setAttrs, without following a final
        symlink.
        """

    def expandPath(path: bytes) -> object:
        """
        C{expand-path@openssh.com}: like realPath, with a leading C{~} or
        C{~/} meaning the home (starting) directory.

        @return: the virtual path, bytes.
        """

    def copyData(
        readFile: object, readOffset: int, length: int, writeFile: object, writeOffset: int
    ) -> object:
        """
        C{copy-data}: copy C{length} bytes (0: to end of file) between two open
        files of this avatar.
        """

    def homeDirectory(username: bytes) -> object:
        """
        C{home-directory}: the virtual starting directory, whatever the user.

        @return: bytes.
        """

    def usersGroupsById(uids: list[int], gids: list[int]) -> object:
        """
        C{users-groups-by-id@openssh.com}.

        @return: a tuple of two lists of bytes (user names, group names), in
            the order asked; an empty name for an unknown id.
        """

    readOnly = Attribute("True when every share is read-only (informational).")


class IEngineAvatar(Interface):
    """
    An avatar whose blocking calls run in an engine.
    """

    engine = Attribute(
        "The L{conchshare.sftp.engine.ICallEngine} running its calls (the "
        "same for every connection it serves)."
    )
