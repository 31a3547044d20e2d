"""
Issue 3, section 7: the reverse tunnel.  A throwaway sshd (tests/support/sshd.py)
is the remote host; the remote clients (sftp, sshfs) run here too and reach
the share through the port that sshd listens on.

- ssh mode.  Reference: C{ssh -R PORT:127.0.0.1:LOCALSSHD} to the remote
  sshd, where LOCALSSHD is a second throwaway sshd serving the folder (sftp
  subsystem: OpenSSH's sftp-server).  Candidate: C{conchshare share --mode
  ssh}.  Clients: C{sshfs -p PORT} and C{sftp -P PORT} with the key and
  known_hosts of the inner server.
- raw mode.  Reference: C{ssh -R PORT:127.0.0.1:SOCATPORT}, where C{socat
  TCP-LISTEN:SOCATPORT,fork EXEC:sftp-server} serves.  Candidate:
  C{conchshare share --mode raw}.  Clients: C{sshfs -o directport=PORT} and
  C{sftp -D "socat STDIO TCP:127.0.0.1:PORT"}.

The reference C{ssh -R} runs a remote command (C{sleep}) like conchshare
runs one (sshd turns C{TCP_NODELAY} on only for connections that ran a
command, DESIGN.md), so both get the same treatment from the remote sshd.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import IO, Any

from common import (
    OPENSSH_SFTP_SERVER,
    Data,
    Endpoint,
    Row,
    conchshareCommand,
    log,
    measure,
)

from tests.support.sshd import ThrowawaySSHD, freePort
from tests.support.workload import SshfsMount, mountSshfs

SHARE = "bench"


def _waitListening(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: port {port} not listening after {timeout} s")


def _kill(process: subprocess.Popen[Any] | None) -> None:
    """
    Stop a process started in its own session, with its children.
    """
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _sshOptions(key: str, knownHosts: str) -> list[str]:
    return [
        "-o", f"IdentityFile={key}",
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={knownHosts}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "GlobalKnownHostsFile=/dev/null",
    ]  # fmt: skip


def _reverseForward(
    remote: ThrowawaySSHD, port: int, target: int, logPath: str
) -> subprocess.Popen[bytes]:
    """
    C{ssh -R 127.0.0.1:PORT:127.0.0.1:TARGET} to the remote sshd, running
    C{sleep} there; returns once the remote port listens.
    """
    with open(logPath, "ab") as logFile:
        process = subprocess.Popen(
            [
                "ssh", "-n", "-p", str(remote.port),
                *_sshOptions(remote.clientKeyPath, remote.knownHostsPath),
                "-o", "ExitOnForwardFailure=yes",
                "-R", f"127.0.0.1:{port}:127.0.0.1:{target}",
                f"{remote.user}@127.0.0.1", "exec sleep 86400",
            ],
            stdin=subprocess.DEVNULL,
            stdout=logFile,
            stderr=logFile,
            start_new_session=True,
        )  # fmt: skip
    _waitListening(port, process, "ssh -R")
    return process


def _sshEndpoint(
    name: str, port: int, user: str, key: str, knownHosts: str, remoteRoot: str
) -> Endpoint:
    options = _sshOptions(key, knownHosts)

    def mount(mountPoint: str) -> SshfsMount:
        return mountSshfs(["-p", str(port), *options, f"{user}@127.0.0.1:{remoteRoot}"], mountPoint)

    return Endpoint(
        name=name,
        remoteRoot=remoteRoot,
        sftp=["sftp", "-P", str(port), *options, f"{user}@127.0.0.1"],
        mount=mount,
    )


def _rawEndpoint(name: str, port: int, remoteRoot: str) -> Endpoint:
    def mount(mountPoint: str) -> SshfsMount:
        return mountSshfs(["-o", f"directport={port}", f"127.0.0.1:{remoteRoot}"], mountPoint)

    return Endpoint(
        name=name,
        remoteRoot=remoteRoot,
        sftp=["sftp", "-D", f"socat STDIO TCP:127.0.0.1:{port},nodelay"],
        mount=mount,
    )


def _readEvents(
    stdout: IO[bytes], process: subprocess.Popen[bytes], wanted: set[str], timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """
    Read C{--json} events until every event named in C{wanted} was seen.

    @raise RuntimeError: an C{error} event, the process exited, or time ran
        out.
    """
    seen: dict[str, dict[str, Any]] = {}
    buffer = b""
    deadline = time.monotonic() + timeout
    fd = stdout.fileno()
    while not wanted <= set(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no {sorted(wanted - set(seen))} event after {timeout} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode}")
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            process.wait(5)
            raise RuntimeError(f"exited with {process.returncode}")
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "error":
                raise RuntimeError(event.get("message", "error event"))
            seen.setdefault(event.get("event"), event)
    return seen


def _conchshare(
    mode: str, remote: ThrowawaySSHD, data: Data, logPath: str
) -> tuple[subprocess.Popen[bytes], dict[str, dict[str, Any]]]:
    """
    Start C{conchshare share --mode MODE --json} to the remote sshd; return
    the process and its startup events.
    """
    with open(logPath, "ab") as logFile:
        process = subprocess.Popen(
            [
                *conchshareCommand(), "share", "--mode", mode, "--json",
                "--known-hosts", remote.knownHostsPath,
                "-i", remote.clientKeyPath,
                remote.destination(), f"{SHARE}={data.folder}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=logFile,
            start_new_session=True,
        )  # fmt: skip
    wanted = {"forwarding", "session-key"} if mode == "ssh" else {"forwarding"}
    assert process.stdout is not None
    try:
        events = _readEvents(process.stdout, process, wanted)
    except (RuntimeError, OSError) as e:
        _kill(process)
        with open(logPath, errors="replace") as f:
            tail = f.read().strip().splitlines()[-3:]
        raise RuntimeError(f"conchshare share --mode {mode}: {e} {' | '.join(tail)}".strip())
    # Keep draining stdout so the process never blocks on a full pipe.
    stdout = process.stdout

    def drain() -> None:
        try:
            while stdout.read(65536):
                pass
        except (OSError, ValueError):
            pass

    import threading

    threading.Thread(target=drain, daemon=True).start()
    return process, events


def _unavailable(name: str, why: str) -> Endpoint:
    def mount(mountPoint: str) -> SshfsMount:
        raise AssertionError(why)

    return Endpoint(name=name, remoteRoot="/", sftp=[], mount=mount, unavailable=why)


def _guard(name: str, start: Callable[[], Endpoint]) -> Endpoint:
    try:
        return start()
    except Exception as e:  # noqa: BLE001 - any failure: report it, go on
        log(f"{name}: not available: {e}")
        return _unavailable(name, str(e))


def run(data: Data, base: str) -> list[tuple[str, Endpoint, Endpoint, list[Row]]]:
    """
    Both modes; returns (title, reference, candidate, rows) per mode.
    """
    directory = os.path.join(base, "tunnel")
    os.makedirs(directory)
    logs = os.path.join(directory, "logs")
    os.makedirs(logs)
    processes: list[subprocess.Popen[bytes]] = []
    sshds: list[ThrowawaySSHD] = []
    results = []
    try:
        remote = ThrowawaySSHD.start(os.path.join(directory, "remote-sshd"))
        sshds.append(remote)

        # ssh mode.
        def referenceSsh() -> Endpoint:
            local = ThrowawaySSHD.start(os.path.join(directory, "local-sshd"))
            sshds.append(local)
            port = freePort()
            processes.append(
                _reverseForward(remote, port, local.port, os.path.join(logs, "ssh-R-ssh"))
            )
            knownHosts = os.path.join(directory, "inner_known_hosts")
            with open(knownHosts, "w") as f:
                f.write(f"[127.0.0.1]:{port} {local.hostPublicKey}\n")
            return _sshEndpoint(
                "ssh -R + sshd", port, local.user, local.clientKeyPath, knownHosts, data.folder
            )

        def conchshareSsh() -> Endpoint:
            process, events = _conchshare("ssh", remote, data, os.path.join(logs, "conchshare-ssh"))
            processes.append(process)
            key = events["session-key"]
            return _sshEndpoint(
                "conchshare share --mode ssh",
                int(events["forwarding"]["port"]),
                remote.user,
                key["key"],
                key["known_hosts"],
                f"/{SHARE}",
            )

        reference = _guard("ssh -R + sshd", referenceSsh)
        candidate = _guard("conchshare share --mode ssh", conchshareSsh)
        log("tunnel, ssh mode")
        results.append(
            (
                "Tunnel, ssh mode (issue 3 §7): nested SSH through a remote port",
                reference,
                candidate,
                measure(reference, candidate, data),
            )
        )
        for process in processes:
            _kill(process)
        processes.clear()

        # raw mode.
        def referenceRaw() -> Endpoint:
            socatPort = freePort()
            with open(os.path.join(logs, "socat"), "ab") as logFile:
                socat = subprocess.Popen(
                    [
                        "socat",
                        f"TCP-LISTEN:{socatPort},bind=127.0.0.1,fork,reuseaddr,nodelay",
                        f"EXEC:{OPENSSH_SFTP_SERVER}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=logFile,
                    stderr=logFile,
                    start_new_session=True,
                )
            processes.append(socat)
            _waitListening(socatPort, socat, "socat")
            port = freePort()
            processes.append(
                _reverseForward(remote, port, socatPort, os.path.join(logs, "ssh-R-raw"))
            )
            return _rawEndpoint("ssh -R + socat sftp-server", port, data.folder)

        def conchshareRaw() -> Endpoint:
            process, events = _conchshare("raw", remote, data, os.path.join(logs, "conchshare-raw"))
            processes.append(process)
            return _rawEndpoint(
                "conchshare share --mode raw", int(events["forwarding"]["port"]), f"/{SHARE}"
            )

        reference = _guard("ssh -R + socat sftp-server", referenceRaw)
        candidate = _guard("conchshare share --mode raw", conchshareRaw)
        log("tunnel, raw mode")
        results.append(
            (
                "Tunnel, raw mode (issue 3 §7): SFTP straight on the forwarded channel",
                reference,
                candidate,
                measure(reference, candidate, data),
            )
        )
    finally:
        for process in processes:
            _kill(process)
        for sshd in sshds:
            sshd.stop()
    return results
