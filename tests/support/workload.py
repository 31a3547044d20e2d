"""
Workloads for real SFTP clients: trees of files, tarballs, checksums, an
sshfs mount piped to a stdio SFTP server, and the sshfs workload of the SFTP
issue (section 4) that checks every byte read and written against the local
folder behind the share.

Pure subprocess and filesystem code, no Twisted: trial tests and C{bench/}
both use it.  Everything here blocks; call it from a test method (trial waits)
or from a plain script, never from reactor code.

Typical use::

    mount = mountSshfsPassive(["conchshare", "sftp-server", "--share", f"s={path}"],
                              "/s", mountPoint)
    try:
        runSshfsWorkload(mountPoint, path)
    finally:
        mount.unmount()
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

SSHFS = shutil.which("sshfs") or "sshfs"
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"

# One entry of a tree description: ("f", sha256, mode, mtime) for a file,
# ("d", "", mode, 0) for a directory, ("l", target, 0, 0) for a symlink.
TreeEntry = tuple[str, str, int, int]


def sshfsAvailable() -> str | None:
    """
    Why sshfs mounts cannot run here, or L{None} if they can.
    """
    if not shutil.which("sshfs"):
        return "sshfs is not installed (apt-get install sshfs)"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount3 is not installed (apt-get install fuse3)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE is not available here"
    if not shutil.which("mountpoint"):
        return "mountpoint(1) is not installed (util-linux)"
    return None


# Trees, files and checksums


def makeTree(
    root: str,
    count: int,
    *,
    perDirectory: int = 100,
    maxSize: int = 8192,
    seed: int = 1,
    withSymlink: bool = True,
) -> list[str]:
    """
    Create C{root} holding C{count} small files of random content (0 to
    C{maxSize} bytes), C{perDirectory} per sub-directory, with a few
    different modes and, if C{withSymlink}, one relative symlink per
    sub-directory.

    @return: the relative paths of the regular files created.
    """
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    made: list[str] = []
    directory = ""
    for i in range(count):
        if i % perDirectory == 0:
            directory = os.path.join(f"d{i // perDirectory:04d}", "sub" if i % 3 else "")
            os.makedirs(os.path.join(root, directory), exist_ok=True)
        relative = os.path.join(directory, f"f{i:05d}.dat")
        path = os.path.join(root, relative)
        writeFile(path, rng.randbytes(rng.randrange(0, maxSize + 1)))
        os.chmod(path, (0o644, 0o600, 0o755, 0o640)[i % 4])
        made.append(relative)
        if withSymlink and i % perDirectory == 0:
            os.symlink(os.path.basename(relative), os.path.join(root, directory, "link"))
    return made


def makeTarball(tree: str, tarPath: str) -> str:
    """
    Pack directory C{tree} into the uncompressed tarball C{tarPath}; its
    members are named after the tree's last component.

    @return: C{tarPath}.
    """
    tree = os.path.abspath(tree)
    subprocess.run(
        ["tar", "-C", os.path.dirname(tree), "-cf", tarPath, os.path.basename(tree)],
        check=True,
    )
    return tarPath


def makeLargeFile(path: str, size: int, *, seed: int | None = None) -> str:
    """
    Write C{size} random bytes to C{path} (1 MiB at a time).

    @return: the file's sha256, hex.
    """
    rng = random.Random(seed) if seed is not None else None
    digest = hashlib.sha256()
    chunk = 1 << 20
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            data = rng.randbytes(n) if rng is not None else os.urandom(n)
            digest.update(data)
            f.write(data)
            left -= n
    return digest.hexdigest()


def sha256File(path: str) -> str:
    """
    The sha256 of a file's content, hex.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def describeTree(root: str, *, modes: bool = True, mtimes: bool = False) -> dict[str, TreeEntry]:
    """
    Describe every entry under C{root} (not C{root} itself), without
    following symlinks: relative path → (kind, sha256 or link target, mode,
    mtime).  Modes and mtimes are 0 unless asked for; mtimes are whole
    seconds (SFTP v3 carries no more).
    """
    entries: dict[str, TreeEntry] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode) if modes else 0
            mtime = int(st.st_mtime) if mtimes else 0
            if stat.S_ISLNK(st.st_mode):
                entries[relative] = ("l", os.readlink(path), 0, 0)
            elif stat.S_ISDIR(st.st_mode):
                entries[relative] = ("d", "", mode, 0)
            elif stat.S_ISREG(st.st_mode):
                entries[relative] = ("f", sha256File(path), mode, mtime)
            else:
                entries[relative] = ("?", "", mode, 0)
    return entries


def sha256Tree(root: str) -> str:
    """
    One sha256 over a whole tree: paths, kinds, contents, link targets and
    modes.
    """
    digest = hashlib.sha256()
    for relative, entry in sorted(describeTree(root).items()):
        digest.update(repr((relative, entry)).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def assertSameTree(
    expected: str, actual: str, what: str, *, modes: bool = True, mtimes: bool = False
) -> int:
    """
    Check two trees have the same entries, contents, link targets (and
    modes, mtimes if asked).

    @return: how many entries were compared.
    @raise AssertionError: naming C{what} and the first few differences.
    """
    left = describeTree(expected, modes=modes, mtimes=mtimes)
    right = describeTree(actual, modes=modes, mtimes=mtimes)
    if left == right:
        return len(left)
    problems: list[str] = []
    for relative in sorted(set(left) | set(right)):
        a, b = left.get(relative), right.get(relative)
        if a == b:
            continue
        if a is None:
            problems.append(f"unexpected {relative!r} {b}")
        elif b is None:
            problems.append(f"missing {relative!r} (expected {a})")
        else:
            problems.append(f"{relative!r}: expected {a}, found {b}")
    raise AssertionError(
        f"{what}: {len(problems)} difference(s) between {expected} and {actual}: "
        + "; ".join(problems[:8])
        + (" ..." if len(problems) > 8 else "")
    )


def run(argv: Sequence[str], what: str, *, timeout: float = 120, **kwargs: object) -> str:
    """
    Run a command; return its stdout.

    @raise AssertionError: it failed or timed out, with its output.
    """
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what}: {' '.join(argv)} did not finish in {timeout} s")
    if done.returncode != 0:
        raise AssertionError(
            f"{what}: {' '.join(argv)} exited with {done.returncode}: "
            f"{done.stderr.strip()[-2000:]} {done.stdout.strip()[-500:]}"
        )
    out: str = done.stdout
    return out


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def writeFile(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# sshfs mounts


def mountedPaths() -> list[str]:
    """
    The mount points of this machine, from C{/proc/self/mounts} (whose
    octal escapes, C{\\040} for a space, are decoded).
    """
    paths = []
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            field = line.split(b" ")[1]
            paths.append(os.fsdecode(field.decode("unicode_escape").encode("latin-1")))
    return paths


def isMounted(mountPoint: str) -> bool:
    """
    Whether C{mountPoint} is a mount point that answers (C{mountpoint(1)}:
    its root can be looked at).  A mount whose root fails is not; one that
    hangs makes this hang: see L{inMountTable}.
    """
    return subprocess.run(["mountpoint", "-q", "--", mountPoint]).returncode == 0


def inMountTable(mountPoint: str) -> bool:
    """
    Whether something is mounted on C{mountPoint}, read from the mount
    table: nothing on the mount itself is looked at, so a hung or broken
    FUSE mount answers at once (and counts as mounted).
    """
    absolute = os.path.abspath(mountPoint)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) in mountedPaths()


def unmount(mountPoint: str) -> None:
    """
    Lazily unmount a FUSE mount if it is still mounted (never raises).
    """
    subprocess.run(
        [FUSERMOUNT, "-uz", mountPoint],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class SshfsMount:
    """
    An sshfs mount (C{sshfs -f}, foreground) and, for a passive mount, the
    SFTP server process it is piped to.  Call L{unmount} when done (always:
    put it in a cleanup / C{finally}).
    """

    mountPoint: str
    sshfs: subprocess.Popen[bytes]
    server: subprocess.Popen[bytes] | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    def log(self) -> str:
        """
        What sshfs and the server wrote on stderr so far.
        """
        texts = []
        for f in self.logs:
            try:
                f.flush()
                f.seek(0)
                texts.append(f.read().decode("utf-8", "replace"))
            except (OSError, ValueError):
                pass
        return "\n".join(t for t in texts if t)

    def waitMounted(self, timeout: float = 15) -> None:
        """
        Wait until the mount point is mounted.

        @raise AssertionError: sshfs or the server exited, or time ran out;
            the mount is torn down and their stderr is in the message.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if isMounted(self.mountPoint):
                return
            for name, process in (("sshfs", self.sshfs), ("server", self.server)):
                if process is not None and process.poll() is not None:
                    log = self.log()
                    self.unmount()
                    raise AssertionError(
                        f"{name} exited with {process.returncode} before "
                        f"{self.mountPoint} was mounted: {log}"
                    )
            time.sleep(0.02)
        log = self.log()
        self.unmount()
        raise AssertionError(f"{self.mountPoint} not mounted after {timeout} s: {log}")

    def unmount(self, timeout: float = 10) -> None:
        """
        Unmount (lazily), then wait for sshfs and the server to exit, killing
        them if they do not.  Safe to call more than once.
        """
        unmount(self.mountPoint)
        for process in (self.sshfs, self.server):
            if process is None:
                continue
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for f in self.logs:
            try:
                f.close()
            except OSError:
                pass
        self.logs = []


def mountSshfsPassive(
    serverCommand: Sequence[str],
    remotePath: str,
    mountPoint: str,
    *,
    sshfsOptions: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 15,
) -> SshfsMount:
    """
    Mount C{remotePath} of a stdio SFTP server on C{mountPoint} with
    C{sshfs -f -o passive}: the server's stdout is sshfs's stdin and sshfs's
    stdout is the server's stdin.  Returns once mounted.

    @param serverCommand: e.g. C{["conchshare", "sftp-server", ...]} or
        C{["/usr/lib/openssh/sftp-server"]}.
    @param sshfsOptions: more sshfs arguments, e.g. C{["-o", "cache=no"]}.
    @param cwd: the server's working directory.
    @raise AssertionError: the mount did not come up (stderr of both in the
        message).
    """
    toServerRead, toServerWrite = os.pipe()
    toSshfsRead, toSshfsWrite = os.pipe()
    serverLog = tempfile.TemporaryFile()
    sshfsLog = tempfile.TemporaryFile()
    try:
        server = subprocess.Popen(
            list(serverCommand),
            stdin=toServerRead,
            stdout=toSshfsWrite,
            stderr=serverLog,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        try:
            sshfs = subprocess.Popen(
                [SSHFS, "-f", "-o", "passive", *sshfsOptions, ":" + remotePath, mountPoint],
                stdin=toSshfsRead,
                stdout=toServerWrite,
                stderr=sshfsLog,
            )
        except BaseException:
            server.kill()
            server.wait()
            raise
    finally:
        for fd in (toServerRead, toServerWrite, toSshfsRead, toSshfsWrite):
            os.close(fd)
    mount = SshfsMount(mountPoint, sshfs, server, [sshfsLog, serverLog])
    mount.waitMounted(timeout)
    return mount


def mountSshfs(
    arguments: Sequence[str],
    mountPoint: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 15,
) -> SshfsMount:
    """
    Mount with C{sshfs -f ARGUMENTS MOUNTPOINT} (e.g. C{["-p", "2222", "-o",
    "IdentityFile=...", "user@127.0.0.1:/share"]} or C{["-o",
    "directport=PORT", "127.0.0.1:/share"]}); returns once mounted.

    @raise AssertionError: the mount did not come up (sshfs's stderr in the
        message).
    """
    sshfsLog = tempfile.TemporaryFile()
    sshfs = subprocess.Popen(
        [SSHFS, "-f", *arguments, mountPoint],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=sshfsLog,
        env=None if env is None else dict(env),
    )
    mount = SshfsMount(mountPoint, sshfs, None, [sshfsLog])
    mount.waitMounted(timeout)
    return mount


# The sshfs workload


def runSshfsWorkload(
    mountPoint: str,
    localSharePath: str,
    *,
    fileCount: int = 2000,
    scratch: str | None = None,
    subdirectory: str = "workload",
) -> dict[str, float]:
    """
    Through an sshfs mount of the share whose local folder is
    C{localSharePath}: extract a tarball of C{fileCount} small files, C{cp
    -a} the tree, rename over an existing file, make hard and symbolic links,
    truncate (shorter and longer), append, chmod, write and read a few MiB,
    run C{df} and C{find}, and remove everything.  Every byte written through
    the mount is checked in the local folder, and everything read through the
    mount against the local folder.

    Works in C{MOUNT/SUBDIRECTORY} (which must not exist) and removes it.

    @param scratch: a local folder outside the share for the source tree and
        tarball (a temporary one if L{None}; removed if so).
    @return: seconds taken by each step, by name.
    @raise AssertionError: with a clear message, on any mismatch or failed
        command.
    """
    ownScratch = scratch is None
    scratch = tempfile.mkdtemp(prefix="workload-") if scratch is None else scratch
    try:
        return _workload(mountPoint, localSharePath, fileCount, scratch, subdirectory)
    finally:
        if ownScratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _workload(
    mountPoint: str, localSharePath: str, fileCount: int, scratch: str, subdirectory: str
) -> dict[str, float]:
    timings: dict[str, float] = {}
    remote = os.path.join(mountPoint, subdirectory)
    local = os.path.join(localSharePath, subdirectory)
    _expect(not os.path.lexists(local), f"{local} already exists")

    start = time.monotonic()

    def lap(name: str) -> None:
        nonlocal start
        now = time.monotonic()
        timings[name] = now - start
        start = now

    source = os.path.join(scratch, "tree")
    if not os.path.exists(source):
        # No symlinks in the tarball: tar sets their times with
        # utimensat(AT_SYMLINK_NOFOLLOW), which sshfs 3.7 sends as a SETSTAT
        # that follows the link (ENOENT), with any server.  Symlinks are
        # exercised on their own below.
        makeTree(source, fileCount, withSymlink=False)
    tarPath = os.path.join(scratch, "tree.tar")
    if not os.path.exists(tarPath):
        makeTarball(source, tarPath)
    lap("prepare")

    os.mkdir(remote)
    _expect(os.path.isdir(local), f"mkdir through the mount: {local} not created locally")

    # Extract a tarball through the mount; check locally, and read back.
    run(["tar", "--no-same-owner", "-xf", tarPath, "-C", remote], "untar through sshfs")
    lap("untar")
    counted = assertSameTree(
        source, os.path.join(local, "tree"), "tarball extracted through sshfs", mtimes=True
    )
    _expect(counted > fileCount, f"only {counted} entries extracted, expected > {fileCount}")
    assertSameTree(
        source, os.path.join(remote, "tree"), "extracted tree read back through sshfs", mtimes=True
    )
    lap("check untar")

    # cp -a inside the mount (read and write through sshfs).
    run(
        ["cp", "-a", os.path.join(remote, "tree"), os.path.join(remote, "copy")],
        "cp -a through sshfs",
    )
    lap("cp -a")
    assertSameTree(
        source, os.path.join(local, "copy"), "tree copied with cp -a through sshfs", mtimes=True
    )
    lap("check cp -a")

    # A few MiB each way.
    bigLocal = os.path.join(scratch, "big.bin")
    bigSum = makeLargeFile(bigLocal, 5 * (1 << 20) + 12345, seed=7)
    shutil.copyfile(bigLocal, os.path.join(remote, "big.bin"))
    _expect(
        sha256File(os.path.join(local, "big.bin")) == bigSum,
        "5 MiB file written through sshfs: local checksum differs",
    )
    shutil.copyfile(bigLocal, os.path.join(local, "big-local.bin"))
    _expect(
        sha256File(os.path.join(remote, "big-local.bin")) == bigSum,
        "5 MiB file written locally: checksum read through sshfs differs",
    )
    lap("large files")

    # Rename over an existing file.
    target, incoming = os.path.join(remote, "target.txt"), os.path.join(remote, "incoming.txt")
    writeFile(target, b"old content\n")
    writeFile(incoming, b"new content\n")
    os.rename(incoming, target)
    _expect(
        readFile(os.path.join(local, "target.txt")) == b"new content\n",
        "rename over an existing file: old content remains",
    )
    _expect(
        not os.path.lexists(os.path.join(local, "incoming.txt")),
        "rename over an existing file: the source still exists",
    )

    # Hard link.
    os.link(target, os.path.join(remote, "hard.txt"))
    a, b = os.stat(os.path.join(local, "target.txt")), os.stat(os.path.join(local, "hard.txt"))
    _expect(
        (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev) and a.st_nlink == 2,
        f"hard link through sshfs: not the same inode locally (nlink {a.st_nlink})",
    )
    _expect(
        readFile(os.path.join(remote, "hard.txt")) == b"new content\n",
        "reading a hard link through sshfs",
    )

    # Symbolic link (relative), read through.
    os.symlink("target.txt", os.path.join(remote, "sym.txt"))
    _expect(
        os.readlink(os.path.join(local, "sym.txt")) == "target.txt",
        "symlink through sshfs: wrong target stored locally: "
        + repr(os.readlink(os.path.join(local, "sym.txt"))),
    )
    _expect(
        os.readlink(os.path.join(remote, "sym.txt")) == "target.txt",
        "readlink through sshfs: wrong target",
    )
    _expect(
        readFile(os.path.join(remote, "sym.txt")) == b"new content\n",
        "reading through a symlink in the share",
    )

    # Truncate shorter and longer; append; chmod.
    cut = os.path.join(remote, "big.bin")
    os.truncate(cut, 1000)
    head = readFile(bigLocal)[:1000]
    _expect(
        readFile(os.path.join(local, "big.bin")) == head,
        "truncate to 1000 bytes through sshfs: local content differs",
    )
    os.truncate(cut, 5000)
    _expect(
        readFile(os.path.join(local, "big.bin")) == head + b"\0" * 4000,
        "extending truncate through sshfs: local content differs",
    )
    with open(cut, "ab") as appending:
        appending.write(b"appended")
    _expect(
        readFile(os.path.join(local, "big.bin")) == head + b"\0" * 4000 + b"appended",
        "append through sshfs: local content differs",
    )
    _expect(
        readFile(cut) == head + b"\0" * 4000 + b"appended",
        "read back after append through sshfs differs",
    )
    os.chmod(cut, 0o600)
    _expect(
        stat.S_IMODE(os.stat(os.path.join(local, "big.bin")).st_mode) == 0o600,
        "chmod 600 through sshfs not applied locally",
    )
    lap("rename, links, truncate, append")

    # df: sshfs shows the share's filesystem (statvfs@openssh.com).
    dfOut = run(["df", "-P", "-k", mountPoint], "df on the mount")
    _expect(len(dfOut.splitlines()) == 2, f"df output unexpected: {dfOut!r}")
    remoteVfs, localVfs = os.statvfs(mountPoint), os.statvfs(localSharePath)
    remoteTotal = remoteVfs.f_blocks * remoteVfs.f_frsize
    localTotal = localVfs.f_blocks * localVfs.f_frsize
    _expect(
        abs(remoteTotal - localTotal) <= localTotal // 100,
        f"df through sshfs: total size {remoteTotal} bytes, the share's filesystem has "
        f"{localTotal}",
    )

    # find: same names as locally.
    def found(root: str) -> list[str]:
        out = run(["find", root], f"find {root}")
        return sorted(os.path.relpath(line, root) for line in out.splitlines())

    remoteNames, localNames = found(remote), found(local)
    _expect(
        remoteNames == localNames,
        f"find through sshfs lists {len(remoteNames)} entries, locally {len(localNames)}: "
        f"{sorted(set(remoteNames) ^ set(localNames))[:8]}",
    )
    _expect(len(remoteNames) > 2 * fileCount, f"find lists only {len(remoteNames)} entries")
    lap("df, find")

    # Remove everything through the mount.
    run(["rm", "-rf", remote], "rm -rf through sshfs")
    _expect(not os.path.lexists(local), f"rm -rf through sshfs left {local} behind")
    lap("rm -rf")
    return timings
