"""
End to end, differential: random SFTP request sequences answered by
OpenSSH's C{sftp-server} and by each of our engines must get the same
replies, request by request.

The servers run as long-lived subprocesses on pipes, reused across
sequences, each serving a folder of its own under the same umask, with
virtual paths equal to real ones (C{--share <DIR without />=<DIR>}), so
C{REALPATH(".")} and absolute paths mean the same everywhere:

  - C{openssh}: C{/usr/lib/openssh/sftp-server -d DIR};
  - C{stdio}: C{conchshare sftp-server} (threads, L{conchshare.sftp.threaded});
  - C{channel}: what serves a forwarded channel in C{conchshare share}
    (the avatar, its workers and io_uring ring on an epoll reactor), on
    stdio through L{tests.support.channelserver}.

Each sequence runs in a fresh folder; its batches are sent one write each
(pipelined).  Replies are normalised only as L{tests.support.sftpdiff.normalise}
says, and READ data compare equal when one is a non-empty prefix of the
other (a server may read short).  The differences we keep on purpose are
in L{KNOWN_DIFFERENCES} (and in README's "Differences from OpenSSH's
sftp-server"); nothing else may differ.

CI runs L{CI_SEQUENCES} sequences with a fixed seed.  C{CONCHSHARE_SOAK=N}
runs N random sequences instead.  A failure prints the first failing
sequence as it was generated (a race that shrinking cannot reproduce still
shows it), then what Hypothesis shrank it to.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import stat
import struct
import sys
import tempfile
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.sftpdiff import (
    ATTRS,
    EVERY_TIME,
    FX_BAD_MESSAGE,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    OUT_LINK,
    STAT,
    STATUS,
    WRITE,
    Batch,
    Op,
    PipeServer,
    Run,
    ServerGone,
    normalise,
)

OPENSSH_SFTP_SERVER = "/usr/lib/openssh/sftp-server"
#: Sequences in CI (fixed seed).
CI_SEQUENCES = 300
UMASK = 0o022

#: The differences kept on purpose, each with its reason; the test accepts
#: exactly these (see L{knownDifference}).
KNOWN_DIFFERENCES = {
    "links leaving DIR": (
        "a symlink that leads out of the share is listed, read (READLINK, LSTAT) "
        "and removed, but never followed: STAT and OPEN through it are "
        "PERMISSION_DENIED, and REALPATH keeps its virtual name instead of "
        "answering a real path outside"
    ),
    "paths are lexical": (
        "a path is normalised before it is resolved, so 'd/../a' names 'a' and "
        "'a/' names 'a' even where 'd' is missing or a symlink, or 'a' is not a "
        "folder (the kernel, in OpenSSH, looks 'd' up and goes to its real "
        "parent, and wants a folder before a '/'); paths stay confined whatever "
        "they meet"
    ),
    "READDIR after its folder moved": (
        "OpenSSH looks each entry up by the path OPENDIR was given, so once the "
        "folder is renamed or removed it lists nothing (or another folder's "
        "attributes); we list the folder that was opened"
    ),
    "REALPATH of a missing parent": (
        "REALPATH keeps what cannot be resolved lexically (a missing folder "
        "on the way included), where OpenSSH answers NO_SUCH_FILE once a "
        "folder before the last name is missing"
    ),
    "RENAME onto a dangling symlink": (
        "OpenSSH's RENAME checks the destination with stat(), which follows "
        "symlinks, so it replaces a dangling symlink (or fails as the move "
        "would); we refuse to replace any existing name (FAILURE, File exists), "
        "as SFTP v3 says"
    ),
    "set-id bits": (
        "a file OPEN creates never gets set-id or sticky bits, and SETSTAT, "
        "FSETSTAT, lsetstat and MKDIR never set set-user-id, nor set-group-id on "
        "anything but a directory, so that a client cannot leave a set-id "
        "program on this machine; OpenSSH applies them.  Not generated (it would "
        "cascade); pinned by test_setIdOnCreate"
    ),
    "short packets": (
        "a request too short for its fields is answered BAD_MESSAGE with its id "
        "and the session goes on; OpenSSH's sftp-server exits.  Not generated; "
        "pinned by test_shortPacket"
    ),
    "virtual folders above shares": (
        "the folders above a share (/ listing the shares) are virtual and "
        "read-only; OpenSSH serves the real file system.  Not generated: every "
        "generated path stays below DIR"
    ),
    "ELOOP's code": (
        "a symlink loop is PERMISSION_DENIED (a refused symlink), where OpenSSH "
        "answers NO_SUCH_FILE"
    ),
}

# The small tree a sequence plays in.  "x" is kept for the one link that
# leaves DIR (to OUTSIDE): no other operation makes or follows it.
NAMES = [b"a", b"b", b"d", b"d/a", b"d/b", b"e", b"d/e", b"d/e/a", b"e/a"]
ODD_NAMES = [b"./b", b"d//a", b"d/./e"]
# Only in requests that change nothing: where ".." or a trailing "/" meets
# no folder, the difference that is listed ("paths are lexical") would
# otherwise cascade.
DOT_DOT_NAMES = [b"d/../a", b"d/e/../b", b"e/..", b"d/./e/", b"a/"]


def _path(name: bytes, absolute: bool) -> bytes:
    return (b"/" if absolute else b"") + name


paths = st.builds(_path, st.sampled_from(NAMES + ODD_NAMES), st.booleans())
readPaths = st.builds(_path, st.sampled_from(NAMES + ODD_NAMES + DOT_DOT_NAMES), st.booleans())
dirPaths = st.builds(
    _path, st.sampled_from([b".", b"d", b"e", b"d/e", b"a", b"d/e/.."]), st.booleans()
)
times = st.sampled_from([1000000000, 1234567890, 1500000001, 1600000002])
setAttrs = st.one_of(
    st.builds(lambda n: {"size": n}, st.integers(0, 24)),
    st.builds(
        lambda m: {"permissions": m},
        # No set-id bits: a listed difference, pinned by test_setIdOnCreate.
        st.sampled_from([0o600, 0o644, 0o755, 0o700, 0o640, 0o1777]),
    ),
    st.builds(lambda a, m: {"atime": a, "mtime": m}, times, times),
)
openFlags = st.sampled_from(
    [
        FXF_READ,
        FXF_WRITE | FXF_CREAT | FXF_TRUNC,
        FXF_READ | FXF_WRITE | FXF_CREAT,
        FXF_WRITE | FXF_CREAT | FXF_EXCL,
        FXF_READ | FXF_WRITE,
        FXF_WRITE | FXF_APPEND | FXF_CREAT,
    ]
)
# No set-id bits: OPEN drops them (a listed difference, pinned by
# test_setIdOnCreate) and every later request on the file would differ.
modes = st.sampled_from([None, 0o644, 0o600, 0o755])
slots = st.integers(0, 3)
targets = st.one_of(
    st.tuples(st.just("rel"), st.sampled_from([b"a", b"b", b"d", b"d/a", b"../a", b".", b"e/a"])),
    st.tuples(st.just("abs"), st.sampled_from(NAMES)),
)
operations = st.one_of(
    st.tuples(st.just("open"), paths, openFlags, modes),
    st.tuples(st.just("close"), st.sampled_from(["f", "d"]), slots),
    st.tuples(st.just("read"), slots, st.integers(0, 20), st.integers(1, 40)),
    st.tuples(st.just("write"), slots, st.integers(0, 20), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("fstat"), slots),
    st.tuples(st.just("fsetstat"), slots, setAttrs),
    st.tuples(st.sampled_from(["stat", "lstat", "readlink", "realpath"]), readPaths),
    st.tuples(st.just("open"), readPaths, st.just(FXF_READ), st.just(None)),
    st.tuples(st.just("setstat"), paths, setAttrs),
    st.tuples(st.just("opendir"), dirPaths),
    st.tuples(st.just("readdir"), slots),
    st.tuples(st.sampled_from(["remove", "rmdir"]), paths),
    st.tuples(st.just("mkdir"), paths, st.sampled_from([None, 0o755, 0o700, 0o2775, 0o1777])),
    st.tuples(st.sampled_from(["rename", "posix-rename", "hardlink"]), paths, paths),
    st.tuples(st.just("symlink"), targets, paths),
    # The one link leaving DIR, and what is asked of it.
    st.tuples(st.just("symlink"), st.just(("out",)), st.just(OUT_LINK)),
    st.tuples(
        st.sampled_from(["stat", "lstat", "readlink", "realpath", "remove"]), st.just(OUT_LINK)
    ),
    st.tuples(st.just("open"), st.just(OUT_LINK), st.just(FXF_READ), st.just(None)),
)
#: What every sequence starts from (its first batches, not generated): a
#: small tree, two files open (slots 0 and 1) and the folder (slot 0).
SETUP: list[Batch] = [
    [
        ("mkdir", b"d", None),
        ("mkdir", b"e", None),
        ("open", b"a", FXF_READ | FXF_WRITE | FXF_CREAT, None),
        ("open", b"d/b", FXF_READ | FXF_WRITE | FXF_CREAT, 0o600),
    ],
    [("write", 0, 0, b"hello world\n"), ("write", 1, 0, b"0123456789"), ("opendir", b".")],
]
batches = st.lists(operations, min_size=1, max_size=6)
sequences = st.lists(batches, min_size=1, max_size=8)


def knownDifference(op: Op, expected: tuple[Any, ...], got: tuple[Any, ...]) -> str | None:
    """
    Which listed difference explains C{got} (ours) where OpenSSH answered
    C{expected}, if any.
    """
    path = op[1] if len(op) > 1 else None
    if path == OUT_LINK:
        if op[0] in ("stat", "open") and got == ("status", FX_PERMISSION_DENIED):
            return "links leaving DIR"
        if op[0] == "realpath" and got == ("name", ((b"<SEQ>/x", ()),)):
            return "links leaving DIR"
    if op[0] == "realpath" and expected == ("status", FX_NO_SUCH_FILE) and got[0] == "name":
        return "REALPATH of a missing parent"
    if expected == ("status", FX_NO_SUCH_FILE) and got == ("status", FX_PERMISSION_DENIED):
        return "ELOOP's code"  # checked against the tree in Differential.loops
    return None


def pathsOf(op: Op) -> list[bytes]:
    """
    The paths C{op} names (symbolic).
    """
    if op[0] in ("rename", "posix-rename", "hardlink"):
        return [op[1], op[2]]
    if op[0] == "symlink":
        return [op[2]]
    if op[0] in ("close", "read", "write", "fstat", "fsetstat", "readdir"):
        return []
    return [op[1]]


def sameData(expected: tuple[Any, ...], got: tuple[Any, ...]) -> bool:
    if expected[0] != "data" or got[0] != "data":
        return False
    a, b = expected[1], got[1]
    return bool(a and b) and (a.startswith(b) or b.startswith(a))


def describe(sequence: list[Batch]) -> str:
    return "\n".join(f"  batch {i}: {batch!r}" for i, batch in enumerate(sequence))


class Differential:
    """
    The servers, started once, and the comparison of one sequence's
    replies.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        outside = os.path.join(root, "outside")
        os.makedirs(outside)
        self.outside = os.fsencode(os.path.join(outside, "secret"))
        with open(self.outside, "wb") as f:
            f.write(b"outside the served folder\n")
        self.servers: list[PipeServer] = []
        self.count = 0
        #: How often each listed difference was met.
        self.reasons: collections.Counter[str] = collections.Counter()
        python = sys.executable
        for name, argv in [
            ("openssh", [OPENSSH_SFTP_SERVER, "-d", "{base}"]),
            (
                "stdio",
                [python, "-m", "conchshare", "sftp-server", "-u", "{umask}", "--share", "{share}"],
            ),
            (
                "channel",
                [python, "-m", "tests.support.channelserver", "--umask", "{umask}", "{share}"],
            ),
        ]:
            # Bases of one length: link sizes and names compare as they are.
            base = os.path.join(root, name[0])
            os.makedirs(base)
            share = base.lstrip("/") + "=" + base
            argv = [a.format(base=base, share=share, umask=f"{UMASK:03o}") for a in argv]
            self.servers.append(PipeServer(name, argv, os.fsencode(base), UMASK))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def check(self, sequence: list[Batch]) -> list[str]:
        """
        Run C{sequence} on every server.

        @return: the differences not listed, one line each.
        """
        self.count += 1
        folder = b"q%d" % self.count
        setTimes = {
            value
            for batch in sequence
            for op in batch
            for part in op
            if isinstance(part, dict)
            for key, value in part.items()
            if key in ("atime", "mtime")
        }
        runs = [Run(server, folder, self.outside) for server in self.servers]
        closed: list[set[tuple[str, int]]] = [set() for _ in runs]
        for run in runs:
            run.start()
        problems: list[str] = []
        for number, batch in enumerate(SETUP + sequence, -len(SETUP)):
            # The trees before the batch: a listed difference may depend on
            # a state that a later request of the batch changed.
            before = [self.facts(runs, op) for op in batch]
            results = [run.runBatch(batch, closed[i]) for i, run in enumerate(runs)]
            reference = results[0]
            for i, (op, rid, reply) in enumerate(reference):
                # A handle that may name different things on different
                # servers (for a listed difference) is not used again.
                if op[0] in ("open", "opendir") and (
                    any(len(result) > i and result[i][2][0] != reply[0] for result in results)
                    or "lexical" in before[batch.index(op)] | self.facts(runs, op)
                ):
                    for run in runs:
                        run.unusable(rid)
            for run, result in zip(runs[1:], results[1:], strict=True):
                if len(result) != len(reference):
                    problems.append(f"batch {number}: {run.server.name} sent other requests")
                    continue
                for (op, rid, expectedReply), (_, _, gotReply) in zip(
                    reference, result, strict=True
                ):
                    facts = before[batch.index(op)] | self.facts(runs, op)
                    expected = normalise(op, expectedReply, runs[0].server.base, folder, setTimes)
                    got = normalise(op, gotReply, run.server.base, folder, setTimes)
                    if expected == got or sameData(expected, got):
                        continue
                    reason = knownDifference(op, expected, got)
                    if reason == "ELOOP's code" and "loops" not in facts:
                        reason = None
                    if reason is None and "lexical" in facts:
                        reason = "paths are lexical"
                    if (
                        reason is None
                        and got == ("status", FX_FAILURE)
                        and ("dangling", run.server.name) in facts
                    ):
                        reason = "RENAME onto a dangling symlink"
                    if reason is None and "moved" in facts:
                        reason = "READDIR after its folder moved"
                    if reason is not None:
                        self.reasons[reason] += 1
                    else:
                        problems.append(
                            f"batch {number}, request {rid} {op!r}: openssh {expected!r}, "
                            f"{run.server.name} {got!r}"
                        )
        for run in runs:
            run.finish()
        return problems

    def facts(self, runs: list[Run], op: Op) -> set[Any]:
        """
        What the trees say now about the listed differences op may meet:
        C{"lexical"}, C{"loops"}, C{"moved"} (OpenSSH's tree), and
        C{("dangling", server)} (the destination of a RENAME, in each of
        our trees).
        """
        found: set[Any] = set()
        openssh = runs[0]
        if self.lexicalPathDiffers(openssh, op):
            found.add("lexical")
        if self.loops(openssh, op):
            found.add("loops")
        if op[0] == "readdir" and op[1] < len(openssh.dirPaths) and self.moved(openssh, op[1]):
            found.add("moved")
        if op[0] == "rename":
            for run in runs[1:]:
                if self.dangling(run, op[2]):
                    found.add(("dangling", run.server.name))
        return found

    def lexicalPathDiffers(self, run: Run, op: Op) -> bool:
        # Whether a path of op has ".." or a trailing "/" after a name that
        # is not a folder (missing, a file or a symlink) in OpenSSH's tree
        # now.
        for part in pathsOf(op):
            parts = part.lstrip(b"/").split(b"/")
            ends = [i for i, p in enumerate(parts) if p == b".."]
            if part.endswith(b"/"):
                ends.append(len(parts) - 1)
            for end in ends:
                path = os.path.join(run.server.base, run.folder, b"/".join(parts[:end]))
                try:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        return True
                except OSError:
                    return True
        return False

    def dangling(self, run: Run, name: bytes) -> bool:
        # Whether name is a symlink leading nowhere in run's tree now.
        path = os.path.join(run.server.base, run.folder, name.lstrip(b"/"))
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                return False
            os.stat(path)
        except OSError:
            return True
        return False

    def moved(self, run: Run, slot: int) -> bool:
        # Whether the path directory slot was opened with no longer names
        # a folder in OpenSSH's tree.
        path = os.path.join(run.server.base, run.folder, run.dirPaths[slot].lstrip(b"/"))
        try:
            return not stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return True

    def loops(self, run: Run, op: Op) -> bool:
        # Whether OpenSSH's tree resolves a path of op through a symlink
        # loop now (ELOOP's code is listed for those only).
        for part in pathsOf(op):
            path = os.path.join(run.server.base, run.folder, part.lstrip(b"/"))
            try:
                os.stat(path)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    return True
        return False


class DifferentialTests(TestCase):
    """
    OpenSSH's sftp-server and both our engines answer alike.
    """

    def setUp(self) -> None:
        if not os.access(OPENSSH_SFTP_SERVER, os.X_OK):
            raise SkipTest(f"{OPENSSH_SFTP_SERVER} is not installed")
        root = tempfile.mkdtemp(prefix="cdiff-")
        self.addCleanup(shutil.rmtree, root, True)
        self.differential = Differential(root)
        self.addCleanup(self.differential.close)

    def runSequences(self, count: int, derandomize: bool) -> None:
        differential = self.differential
        first: list[tuple[list[Batch], list[str]]] = []
        last: list[tuple[list[Batch], list[str]]] = []

        @settings(
            max_examples=count,
            derandomize=derandomize,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink] if derandomize else list(Phase),
            print_blob=False,
        )
        @given(sequences)
        def sequenceAnswersAlike(sequence: list[Batch]) -> None:
            problems = differential.check(sequence)
            if problems:
                if not first:
                    first.append((sequence, problems))
                last[:] = [(sequence, problems)]
            assert not problems, "\n".join(problems)

        try:
            sequenceAnswersAlike()
        except (AssertionError, ServerGone, Exception) as e:
            report = [f"{type(e).__name__}: {e}"]
            for label, found in [("as generated", first), ("as shrunk", last)]:
                if found:
                    sequence, problems = found[0]
                    report.append(f"The first failing sequence, {label}:")
                    report.append(describe(sequence))
                    report.extend(problems)
            raise self.failureException("\n".join(report)) from e

    def test_randomSequences(self) -> None:
        """
        CI: L{CI_SEQUENCES} sequences from a fixed seed (C{CONCHSHARE_SOAK=N}:
        N random ones) get the same replies from all three servers, but for
        the listed differences.
        """
        soak = os.environ.get("CONCHSHARE_SOAK")
        if soak:
            self.runSequences(int(soak), derandomize=False)
        else:
            self.runSequences(CI_SEQUENCES, derandomize=True)
        # The channel engine ran as share runs it: with its io_uring ring
        # where the kernel allows one.
        from conchshare.fs import ring

        if ring.usable():
            channel = self.differential.servers[2]
            with open(channel.stderrPath, "rb") as f:
                self.assertNotIn(b"io_uring is not used", f.read())

    def replies(self, sequence: list[Batch]) -> list[list[tuple[Any, ...]]]:
        """
        Run a fixed sequence (after L{SETUP}) on every server.

        @return: for each server, the normalised replies to the sequence's
            requests, times kept.
        """
        differential = self.differential
        differential.count += 1
        folder = b"q%d" % differential.count
        everything = []
        for server in differential.servers:
            run = Run(server, folder, differential.outside)
            run.start()
            closed: set[tuple[str, int]] = set()
            for batch in SETUP:
                run.runBatch(batch, closed)
            everything.append(
                [
                    normalise(op, reply, server.base, folder, EVERY_TIME)
                    for batch in sequence
                    for op, _, reply in run.runBatch(batch, closed)
                ]
            )
            run.finish()
        return everything

    def test_setstatTimes(self) -> None:
        """
        Times set by SETSTAT and FSETSTAT are what STAT, FSTAT and READDIR
        give back, on every server.
        """
        times = {"atime": 1234567890, "mtime": 1000000001}
        sequence: list[Batch] = [
            [("setstat", b"d/b", times), ("fsetstat", 0, {"atime": 7, "mtime": 8})],
            [("stat", b"d/b"), ("fstat", 0), ("opendir", b"d")],
            [("readdir", 1)],
        ]
        got = self.replies(sequence)
        self.assertEqual(got[1:], got[:1] * 2)
        stat, fstat, readdir = got[0][2], got[0][3], got[0][5]
        self.assertEqual((dict(stat[1])["atime"], dict(stat[1])["mtime"]), (1234567890, 1000000001))
        self.assertEqual((dict(fstat[1])["atime"], dict(fstat[1])["mtime"]), (7, 8))
        ((name, attrs),) = readdir[1]
        self.assertEqual((name, dict(attrs)["mtime"]), (b"b", 1000000001))

    def test_setIdOnCreate(self) -> None:
        """
        The listed difference "set-id bits": OPEN with mode 04755 makes a
        set-uid file in OpenSSH and a plain 0755 one with us; so does SETSTAT
        with 04755.
        """
        sequence: list[Batch] = [
            [("open", b"p", FXF_WRITE | FXF_CREAT, 0o4755)],
            [("fstat", 2)],
            [("setstat", b"p", {"permissions": 0o4755}), ("lstat", b"p")],
        ]
        modes = [
            (dict(replies[1][1])["permissions"], dict(replies[3][1])["permissions"])
            for replies in self.replies(sequence)
        ]
        self.assertEqual(
            modes,
            [(0o104755, 0o104755), (0o100755, 0o100755), (0o100755, 0o100755)],
        )

    def test_shortPacket(self) -> None:
        """
        The listed difference "short packets": a WRITE whose data field runs
        past the end of its packet is BAD_MESSAGE with its id from both our
        engines, which then answer the next request; OpenSSH's sftp-server
        exits.  Bytes after a request's last field are ignored by all three.
        """
        short = struct.pack(">IBI", 5 + 4 + 1 + 8 + 4 + 3, WRITE, 7)
        short += struct.pack(">I", 1) + b"0" + struct.pack(">QI", 0, 10) + b"abc"
        path = b"."
        trailing = struct.pack(">IBI", 5 + 4 + len(path) + 5, STAT, 8)
        trailing += struct.pack(">I", len(path)) + path + b"extra"
        outcomes: list[tuple[str, bool, Any]] = []
        for server in self.differential.servers:
            (reply,) = server.exchange([trailing]).values()
            ok = reply[0] == ATTRS
            try:
                (reply,) = server.exchange([short]).values()
            except ServerGone:
                outcomes.append((server.name, ok, "exited"))
                continue
            outcomes.append((server.name, ok, reply))
        badMessage = (STATUS, struct.pack(">I", FX_BAD_MESSAGE))
        self.assertEqual(
            [(name, ok, r if r == "exited" else (r[0], r[1][:4])) for name, ok, r in outcomes],
            [
                ("openssh", True, "exited"),
                ("stdio", True, badMessage),
                ("channel", True, badMessage),
            ],
        )
