"""
What both benchmark sections share: endpoints (a way to reach one SFTP
server with C{sftp} and with C{sshfs}), the workloads, the measuring loop
(medians of N runs, reference and candidate interleaved) and the table.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support.processes import endProcess  # noqa: E402
from tests.support.workload import (  # noqa: E402
    SshfsMount,
    makeLargeFile,
    makeTarball,
    makeTree,
    unmount,
)

OPENSSH_SFTP_SERVER = "/usr/lib/openssh/sftp-server"
MB = 1_000_000
TIMEOUT = 600


def log(message: str) -> None:
    """
    Progress, on stderr (the table goes to stdout).
    """
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def conchshareCommand() -> list[str]:
    """
    How to run the C{conchshare} command: the console script if installed,
    C{python -m conchshare} otherwise.
    """
    found = shutil.which("conchshare")
    return [found] if found else [sys.executable, "-m", "conchshare"]


@dataclass
class Sizes:
    """
    How big the workloads are.
    """

    bulk: int  # bytes for get/put/dd
    untarFiles: int  # small files in the tarball
    treeFiles: int  # small files for find / ls -lR
    runs: int = 3

    @classmethod
    def full(cls) -> Sizes:
        return cls(bulk=256 << 20, untarFiles=2000, treeFiles=5000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(bulk=32 << 20, untarFiles=500, treeFiles=1000)


@dataclass
class Data:
    """
    The files the workloads use.  C{folder} is the served folder (what every
    server shares): C{big.bin} and C{tree/}.  C{scratch} is local only:
    C{source.bin} (uploaded), C{untar.tar}, downloads.
    """

    folder: str
    scratch: str
    sizes: Sizes

    @classmethod
    def prepare(cls, base: str, sizes: Sizes) -> Data:
        folder = os.path.join(base, "served")
        scratch = os.path.join(base, "scratch")
        os.makedirs(folder)
        os.makedirs(scratch)
        log(f"preparing data in {base}")
        makeLargeFile(os.path.join(folder, "big.bin"), sizes.bulk, seed=1)
        makeLargeFile(os.path.join(scratch, "source.bin"), sizes.bulk, seed=2)
        makeTree(os.path.join(folder, "tree"), sizes.treeFiles, withSymlink=False)
        untar = os.path.join(scratch, "untar")
        makeTree(untar, sizes.untarFiles, seed=3, withSymlink=False)
        makeTarball(untar, os.path.join(scratch, "untar.tar"))
        shutil.rmtree(untar)
        return cls(folder, scratch, sizes)

    def timeout(self) -> float:
        """
        Seconds after which a run counts as hung: 20 s plus the bulk size at
        2 MB/s.
        """
        return 20 + self.sizes.bulk / (2 * MB)


@dataclass
class Endpoint:
    """
    One SFTP server and how clients reach it.

    @ivar remoteRoot: the served folder as clients name it.
    @ivar sftp: the C{sftp} command line, without C{-b}.
    @ivar mount: mounts the served folder (C{remoteRoot}) on a mount point
        with sshfs, returning once mounted.
    @ivar unavailable: why this endpoint cannot be measured, or L{None}.
    """

    name: str
    remoteRoot: str
    sftp: list[str]
    mount: Callable[[str], SshfsMount]
    unavailable: str | None = None
    stop: Callable[[], None] = lambda: None


class Failed(Exception):
    """
    A workload failed on an endpoint; the message says why.
    """


class SftpSession:
    """
    An C{sftp -b -} session driven line by line, so that a command can be
    timed without the session's start: each command is followed by C{pwd},
    and the command is done when C{pwd}'s answer comes.
    """

    def __init__(self, argv: Sequence[str], timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            [*argv[:1], "-b", "-", *argv[1:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._buffer = b""
        self._send("pwd\n", "(session start)")

    def _send(self, text: str, command: str) -> None:
        """
        Send lines; wait for C{pwd}'s answer.

        @raise Failed: sftp stopped (batch mode stops on the first error),
            or no answer within the timeout (sftp is killed).
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(text.encode())
            self.process.stdin.flush()
        except OSError:
            pass
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(b"Remote working directory"):
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise Failed(f"sftp {command!r}: no end after {self.timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            chunk = os.read(fd, 65536) if ready else b"-"
            if not chunk:
                self.close()
                said = self._buffer.decode(errors="replace").strip()[-500:]
                raise Failed(f"sftp {command!r} failed: {said}")
            if ready:
                self._buffer += chunk

    def run(self, command: str) -> float:
        """
        Run one sftp command; return the seconds it took.

        @raise Failed: it failed or did not end in time.
        """
        start = time.monotonic()
        self._send(command + "\npwd\n", command)
        return time.monotonic() - start

    def close(self, kill: bool = False) -> None:
        """
        End the session (see L{endProcess}); with C{kill}, kill sftp first.
        """
        if kill and self.process.poll() is None:
            self.process.kill()
        endProcess(self.process)


def timed(argv: Sequence[str], what: str, timeout: float = TIMEOUT, **kwargs: object) -> float:
    """
    Run a command, output discarded; return its wall time in seconds.

    @raise Failed: it failed (its stderr in the message) or timed out.
    """
    start = time.monotonic()
    try:
        done = subprocess.run(
            list(argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            **kwargs,  # type: ignore[call-overload]
        )
    except subprocess.TimeoutExpired:
        raise Failed(f"{what}: no end after {timeout:.0f} s")
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise Failed(
            f"{what}: exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
        )
    return elapsed


def _mounted(endpoint: Endpoint, data: Data) -> SshfsMount:
    mountPoint = tempfile.mkdtemp(prefix="mnt-", dir=data.scratch)
    try:
        return endpoint.mount(mountPoint)
    except AssertionError as e:
        unmount(mountPoint)
        raise Failed(f"sshfs mount failed: {e}")


# Workloads: each returns the value in its unit (MB/s or seconds).


def sftpGet(endpoint: Endpoint, data: Data) -> float:
    target = os.path.join(data.scratch, "got.bin")
    session = SftpSession(endpoint.sftp, data.timeout())
    try:
        seconds = session.run(f"get {endpoint.remoteRoot}/big.bin {target}")
    finally:
        session.close()
        size = os.path.getsize(target) if os.path.exists(target) else -1
        if size >= 0:
            os.remove(target)
    if size != data.sizes.bulk:
        raise Failed(f"sftp get: {size} bytes received, expected {data.sizes.bulk}")
    return data.sizes.bulk / MB / seconds


def sftpPut(endpoint: Endpoint, data: Data) -> float:
    source = os.path.join(data.scratch, "source.bin")
    landed = os.path.join(data.folder, "put.bin")
    session = SftpSession(endpoint.sftp, data.timeout())
    try:
        seconds = session.run(f"put {source} {endpoint.remoteRoot}/put.bin")
    finally:
        session.close()
        size = os.path.getsize(landed) if os.path.exists(landed) else -1
        if size >= 0:
            os.remove(landed)
    if size != data.sizes.bulk:
        raise Failed(f"sftp put: {size} bytes written, expected {data.sizes.bulk}")
    return data.sizes.bulk / MB / seconds


def ddRead(endpoint: Endpoint, data: Data) -> float:
    mount = _mounted(endpoint, data)
    try:
        seconds = timed(
            ["dd", f"if={mount.mountPoint}/big.bin", "of=/dev/null", "bs=1M"],
            "dd read",
            data.timeout(),
        )
    finally:
        mount.unmount()
    return data.sizes.bulk / MB / seconds


def ddWrite(endpoint: Endpoint, data: Data) -> float:
    landed = os.path.join(data.folder, "dd.bin")
    mount = _mounted(endpoint, data)
    try:
        # sshfs's flush on close waits for every WRITE's reply.
        seconds = timed(
            [
                "dd",
                f"if={os.path.join(data.scratch, 'source.bin')}",
                f"of={mount.mountPoint}/dd.bin",
                "bs=1M",
            ],
            "dd write",
            data.timeout(),
        )
    finally:
        mount.unmount()
        size = os.path.getsize(landed) if os.path.exists(landed) else -1
        if size >= 0:
            os.remove(landed)
    if size != data.sizes.bulk:
        raise Failed(f"dd write: {size} bytes landed, expected {data.sizes.bulk}")
    return data.sizes.bulk / MB / seconds


# Each untar lands in a folder of its own, removed with the whole benchmark
# only: deleting 2,000 files makes ext4 slower at allocating inodes for a
# while after (OpenSSH's untar: 1.7-1.9 s run after run with deletions in
# between, 0.7 s without), which would slow the runs that follow.
_untars = itertools.count(1)


def untar(endpoint: Endpoint, data: Data) -> float:
    name = f"untar-{next(_untars)}"
    landed = os.path.join(data.folder, name)
    os.mkdir(landed)
    mount = _mounted(endpoint, data)
    try:
        seconds = timed(
            [
                "tar",
                "--no-same-owner",
                "-xf",
                os.path.join(data.scratch, "untar.tar"),
                "-C",
                os.path.join(mount.mountPoint, name),
            ],
            "untar",
            data.timeout(),
        )
    finally:
        mount.unmount()
        count = sum(len(files) for _, _, files in os.walk(landed))
    if count != data.sizes.untarFiles:
        raise Failed(f"untar: {count} files landed, expected {data.sizes.untarFiles}")
    return seconds


def _walk(command: list[str]) -> Callable[[Endpoint, Data], float]:
    def walk(endpoint: Endpoint, data: Data) -> float:
        mount = _mounted(endpoint, data)
        try:
            return timed(
                [*command, os.path.join(mount.mountPoint, "tree")],
                " ".join(command),
                data.timeout(),
            )
        finally:
            mount.unmount()

    return walk


@dataclass
class Workload:
    name: str
    unit: str  # "MB/s" (higher is better) or "s" (lower is better)
    run: Callable[[Endpoint, Data], float]

    def label(self, sizes: Sizes) -> str:
        mib = f"{sizes.bulk >> 20} MiB"
        return self.name.format(
            bulk=mib, untar=f"{sizes.untarFiles:,}", tree=f"{sizes.treeFiles:,}"
        )


WORKLOADS = [
    Workload("sftp get {bulk}", "MB/s", sftpGet),
    Workload("sftp put {bulk}", "MB/s", sftpPut),
    Workload("sshfs dd read {bulk}", "MB/s", ddRead),
    Workload("sshfs dd write {bulk}", "MB/s", ddWrite),
    Workload("sshfs untar {untar} files", "s", untar),
    Workload("sshfs find {tree} files", "s", _walk(["find"])),
    Workload("sshfs ls -lR {tree} files", "s", _walk(["ls", "-lR"])),
]


@dataclass
class Row:
    label: str
    unit: str
    reference: list[float] = field(default_factory=list)
    candidate: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def measure(
    reference: Endpoint, candidate: Endpoint, data: Data, workloads: Sequence[Workload] = WORKLOADS
) -> list[Row]:
    """
    Run every workload C{data.sizes.runs} times on both endpoints,
    alternating so that drift in the machine's load hits both alike, and
    in turn first (reference then candidate, then candidate then
    reference, ...): what a run leaves behind (dirty pages, files to write
    back) must not always slow the same side.
    """
    rows = []
    for workload in workloads:
        row = Row(workload.label(data.sizes), workload.unit)
        rows.append(row)
        failed: set[str] = set()
        for run in range(data.sizes.runs):
            pairs = [(reference, row.reference), (candidate, row.candidate)]
            if run % 2:
                pairs.reverse()
            for endpoint, values in pairs:
                if endpoint.unavailable is not None or endpoint.name in failed:
                    continue
                try:
                    value = workload.run(endpoint, data)
                except (Failed, OSError) as e:
                    # One failure is enough: do not wait for a hang twice.
                    failed.add(endpoint.name)
                    message = f"{endpoint.name}: {e}"
                    log(f"{row.label}: FAILED {message}")
                    row.errors.append(message)
                    values.clear()
                    continue
                values.append(value)
                log(f"{row.label} [{endpoint.name}] run {run + 1}: {value:.2f} {workload.unit}")
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(row: Row) -> float | None:
    """
    Candidate speed / reference speed (above 1: the candidate is faster).
    """
    ref, cand = _median(row.reference), _median(row.candidate)
    if ref is None or cand is None or ref == 0 or cand == 0:
        return None
    return cand / ref if row.unit == "MB/s" else ref / cand


def table(title: str, reference: Endpoint, candidate: Endpoint, rows: list[Row]) -> str:
    """
    A Markdown table of medians and ratios.
    """

    def cell(values: list[float], unit: str) -> str:
        m = _median(values)
        if m is None:
            return "failed"
        if unit == "MB/s":
            return f"{m:.0f} MB/s"
        return f"{m:.3f} s" if m < 1 else f"{m:.2f} s"

    lines = [
        f"### {title}",
        "",
        f"| workload | {reference.name} | {candidate.name} | ratio |",
        "|---|---:|---:|---:|",
    ]
    notes = []
    for row in rows:
        if candidate.unavailable is not None:
            cand, r = "not available", "—"
        else:
            cand = cell(row.candidate, row.unit)
            value = ratio(row)
            r = "—" if value is None else f"{value:.2f}×"
        lines.append(f"| {row.label} | {cell(row.reference, row.unit)} | {cand} | {r} |")
        notes.extend(row.errors)
    for endpoint in (reference, candidate):
        if endpoint.unavailable is not None:
            notes.insert(0, f"{endpoint.name} not available: {endpoint.unavailable}")
    lines.append("")
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    return "\n".join(lines)
