"""
Helpers for the tunnel tests: connect a L{ShareConnection} to a throwaway
sshd, run remote-side clients (sftp, sshfs, socat) as subprocesses, make
test files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from conchshare.sftp.avatar import ShareSFTPServer
from conchshare.sftp.protocol import SFTPServerProtocol
from conchshare.tunnel.connection import Listener, ShareConnection
from conchshare.tunnel.endpoint import connectSSH
from conchshare.tunnel.nested import NestedSSHServer, loadOrCreateHostKey
from conchshare.tunnel.sessionkey import InstalledSessionKey, generateSessionKey, installSessionKey
from conchshare.tunnel.sshconfig import ConnectOptions
from tests.support.sshd import ThrowawaySSHD


def sshdConnectOptions(sshd: ThrowawaySSHD, **overrides: Any) -> ConnectOptions:
    """
    Options that reach C{sshd} with its client key and known_hosts, and
    nothing of the user's own (no agent, no ~/.ssh); C{overrides} win.
    """
    settings: dict[str, Any] = dict(
        host=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identityFiles=[sshd.clientKeyPath],
        userKnownHostsFiles=[sshd.knownHostsPath],
        globalKnownHostsFiles=[],
        strictHostKeyChecking="yes",
        identityAgent=None,
        useAgent=False,
        batchMode=True,
        connectTimeout=10,
    )
    settings.update(overrides)
    return ConnectOptions(**settings)


def connect(testCase: Any, sshd: ThrowawaySSHD, **kw: Any) -> defer.Deferred[ShareConnection]:
    """
    Connect a L{ShareConnection} to C{sshd} with conchshare's client
    (L{connectSSH}); the test case's cleanup stops it.

    @return: a Deferred firing with the connection once its service started.
    """
    options = sshdConnectOptions(sshd)
    made: list[ShareConnection] = []

    def factory() -> ShareConnection:
        conn = ShareConnection(**kw)
        made.append(conn)
        return conn

    def cleanup() -> defer.Deferred[None] | None:
        for conn in made:
            if conn.transport is not None and not conn._lost:
                return conn.stop(timeout=5)
        return None

    testCase.addCleanup(cleanup)
    d: defer.Deferred[ShareConnection] = connectSSH(options, factory, reactor=reactor)  # type: ignore[assignment]
    return d


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[tuple[int | None, bytes, bytes]] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.done.callback((code, b"".join(self.out), b"".join(self.err)))


def run(
    testCase: Any,
    args: Sequence[str],
    stdin: bytes | None = None,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> defer.Deferred[tuple[int | None, bytes, bytes]]:
    """
    Run a command without blocking the reactor; killed after C{timeout}.

    @return: a Deferred firing with (exit code, stdout, stderr).
    """
    proc = _Collect()
    exe = shutil.which(args[0]) or args[0]
    transport = reactor.spawnProcess(
        proc, exe, list(args), env=env if env is not None else dict(os.environ)
    )
    if stdin is not None:
        transport.write(stdin)
    transport.closeStdin()

    def kill() -> None:
        try:
            transport.signalProcess("KILL")
        except Exception:
            pass

    timer = reactor.callLater(timeout, kill)

    def cancel(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    proc.done.addBoth(cancel)
    testCase.addCleanup(lambda: None if proc.done.called else (kill(), proc.done)[1])
    return proc.done


def spawn(
    testCase: Any, args: Sequence[str]
) -> tuple[Any, defer.Deferred[tuple[int | None, bytes, bytes]]]:
    """
    Start a command; return (process transport, Deferred of its end).
    Killed in cleanup.
    """
    proc = _Collect()
    transport = reactor.spawnProcess(
        proc, shutil.which(args[0]) or args[0], list(args), env=dict(os.environ)
    )
    transport.closeStdin()

    def cleanup() -> Any:
        if proc.done.called:
            return None
        try:
            transport.signalProcess("KILL")
        except Exception:
            pass
        return proc.done

    testCase.addCleanup(cleanup)
    return transport, proc.done


def makeFile(path: str, size: int) -> str:
    """
    Write C{size} pseudo-random bytes to C{path}; return their SHA-256.
    """
    h = hashlib.sha256()
    block = hashlib.sha256(path.encode()).digest() * 2048  # 64 KiB
    with open(path, "wb") as f:
        written = 0
        counter = 0
        while written < size:
            chunk = (counter.to_bytes(8, "big") + block)[: min(len(block) + 8, size - written)]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            counter += 1
    return h.hexdigest()


def sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def waitFor(predicate: Callable[[], bool], timeout: float = 20, step: float = 0.02) -> None:
    """
    Wait until C{predicate()} is true; fail after C{timeout} seconds.
    """
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError("timed out waiting")
        await sleep(step)
        waited += step


class EchoProtocol(Protocol):
    """
    Echoes what it receives (a stand-in endpoint protocol).
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def killSSHD(sshd: ThrowawaySSHD) -> None:
    """
    Kill sshd and its per-connection processes at once.

    L{ThrowawaySSHD.kill} kills the listener's process group first, but
    sshd's per-connection children call C{setsid()}, so they are not in that
    group, and once the listener is dead C{pgrep -P} no longer finds them:
    kill the sessions first.
    """
    sshd.killSessions()
    sshd.kill()


_SSH_OPTIONS = ["-o", "BatchMode=yes", "-o", "GlobalKnownHostsFile=/dev/null"]


class _Base(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sshd = ThrowawaySSHD.start(self.mktemp())
        self.addCleanup(self.sshd.stop)
        self.share = os.path.abspath(self.mktemp())
        os.makedirs(self.share)
        self.avatar = ShareSFTPServer.fromSpecs([f"s={self.share}"])

    def sftpFactory(self) -> SFTPServerProtocol:
        return SFTPServerProtocol(self.avatar)

    async def raw(self) -> tuple[ShareConnection, Listener]:
        conn = await connect(self, self.sshd)
        listener = await conn.requestForward(Listener("raw", self.sftpFactory))
        return conn, listener

    async def nested(self) -> tuple[ShareConnection, Listener, InstalledSessionKey]:
        conn = await connect(self, self.sshd)
        self.sessionKey = generateSessionKey()
        self.server = NestedSSHServer(
            loadOrCreateHostKey(None), [self.sessionKey.public()], self.sftpFactory
        )
        listener = await conn.requestForward(Listener("ssh", self.server.buildProtocol))
        installed = await installSessionKey(
            conn, self.sessionKey, self.server.hostKey, listener.port, "anyone"
        )
        return conn, listener, installed

    def rawSftp(self, listener: Listener, batch: str) -> object:
        return run(
            self,
            ["sftp", "-D", f"socat STDIO TCP:127.0.0.1:{listener.port}", "-b", "-"],
            batch.encode(),
        )

    def nestedSftp(self, installed: InstalledSessionKey, batch: str, *extra: str) -> object:
        args = ["sftp", "-P", str(installed.port), *_SSH_OPTIONS]
        for option in installed._options():
            args += ["-o", option]
        return run(self, args + [*extra, "-b", "-", f"{installed.user}@127.0.0.1"], batch.encode())
