"""
Hostile input that reaches the remote host, end to end against a throwaway
OpenSSH sshd (the remote host is this machine):

  - the nested SSH server of C{ssh} mode refuses every authentication but
    the authorized public keys, and every channel and request but the
    C{sftp} subsystem, to the real C{ssh}/C{sftp} clients and to a Conch
    client that sends what OpenSSH's client would not;
  - shell metacharacters in C{mount --at}, in share names and in
    C{--remote-socket}, which end up in the commands conchshare runs (or
    prints for the user to run) on the remote host, run nothing there: the
    mount is made at the literal path, or fails with one sentence.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
from typing import Any

from twisted.conch.ssh import channel, common, connection, keys, transport, userauth
from twisted.internet import defer, protocol, reactor, threads
from twisted.python.failure import Failure
from twisted.trial import unittest

from conchshare.errors import MountFailed
from conchshare.mount import RemoteMount
from conchshare.shares import ShareSet
from tests.support import sshd as sshdmodule
from tests.support.command import WAIT, Running, shortTempDir, sshArgs
from tests.support.mounting import (
    _MountBase,
    forceUnmount,
    listRemote,
    remote,
)
from tests.support.sshd import ThrowawaySSHD
from tests.support.tunnelhelpers import _SSH_OPTIONS, connect, run, spawn, waitFor
from tests.support.tunnelhelpers import _Base as _TunnelBase
from tests.support.workload import FUSERMOUNT, mountedPaths


def _mountSkipReason() -> str | None:
    reason = sshdmodule.available()
    if reason:
        return reason
    for tool in ("sshfs", "mountpoint", "socat"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse here"
    return None


def _listdir(path: str) -> list[str]:
    """
    The names in C{path}, listed by a child process (the mount is served by
    this test's reactor: a blocking call on its thread would deadlock).
    """
    result = subprocess.run(
        ["ls", "-A", "--", path], stdin=subprocess.DEVNULL, capture_output=True, timeout=30
    )
    if result.returncode != 0:
        raise AssertionError(f"ls {path!r} failed: {result.stderr!r}")
    return sorted(os.fsdecode(name) for name in result.stdout.split(b"\n") if name)


# -- the nested SSH server ---------------------------------------------------


class _Counter(protocol.Factory):
    """
    A listener that counts the connections it gets (and serves none): the
    target of the forwards the nested server must refuse.
    """

    def __init__(self) -> None:
        self.connections = 0

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        self.connections += 1
        return protocol.Protocol()


class _ProbeAuth(userauth.SSHUserAuthClient):  # type: ignore[misc]
    """
    Sends raw C{MSG_USERAUTH_REQUEST}s one at a time, whatever methods the
    server offers, and records the server's answer to each; then logs in
    with C{key} the ordinary way.

    @ivar answers: per request, C{("failure", methods, partial)},
        C{("success",)} or C{("message 60",)}.
    """

    def __init__(self, instance: Any, requests: list[tuple[bytes, Any]], key: keys.Key) -> None:
        super().__init__(b"anyone", instance)
        self.requests = list(requests)
        self.answers: list[tuple[Any, ...]] = []
        self.key = key
        self.probing = True

    def serviceStarted(self) -> None:
        self.sendNext()

    def sendNext(self) -> None:
        if not self.requests:
            self.probing = False
            super().serviceStarted()
            return
        method, data = self.requests.pop(0)
        if callable(data):
            data = data(self)
        self.askForAuth(method, data)

    def signed(self, method: bytes, blob: bytes, signer: keys.Key, algorithm: bytes) -> bytes:
        """
        The C{publickey} request data for C{blob}, signed by C{signer}
        (RFC 4252 section 7).
        """
        head = b"\1" + common.NS(algorithm) + common.NS(blob)
        sigData = (
            common.NS(self.transport.sessionID)
            + bytes([userauth.MSG_USERAUTH_REQUEST])
            + common.NS(self.user)
            + common.NS(self.instance.name)
            + common.NS(method)
            + head
        )
        return head + common.NS(signer.sign(sigData))

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        if not self.probing:
            return super().ssh_USERAUTH_FAILURE(packet)
        methods, rest = common.getNS(packet)
        self.answers.append(("failure", methods, rest[:1]))
        self.sendNext()
        return None

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        if self.probing:
            self.answers.append(("success",))
        super().ssh_USERAUTH_SUCCESS(packet)

    def ssh_USERAUTH_PK_OK(self, packet: bytes) -> Any:
        if not self.probing:
            return super().ssh_USERAUTH_PK_OK(packet)
        self.answers.append(("message 60",))
        self.sendNext()
        return None

    def getPublicKey(self) -> Any:
        if self.key in self.triedPublicKeys:
            return None
        self.triedPublicKeys.append(self.key)
        return self.key.public()

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self.key)

    def getPassword(self, prompt: Any = None) -> None:
        return None


class _ProbeConnection(connection.SSHConnection):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.ready: defer.Deferred[_ProbeConnection] = defer.Deferred()

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.ready.callback(self)


class _ProbeTransport(transport.SSHClientTransport):  # type: ignore[misc]
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if hostKey != self.factory.hostKey.public().blob():
            return defer.fail(Exception("not the nested server's host key"))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(self.factory.auth)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        conn = self.factory.auth.instance
        if not conn.ready.called:
            conn.ready.errback(reason or Failure(Exception("connection lost")))


class _ProbeChannel(channel.SSHChannel):  # type: ignore[misc]
    """
    A channel of any type; C{opened} fires with L{True} once open, L{False}
    if refused.
    """

    def __init__(self, name: bytes, **kw: Any) -> None:
        super().__init__(**kw)
        self.name = name
        self.opened: defer.Deferred[bool] = defer.Deferred()

    def channelOpen(self, specificData: bytes) -> None:
        self.opened.callback(True)

    def openFailed(self, reason: Any) -> None:
        self.opened.callback(False)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _sendAndRead(port: int) -> bytes:
    """
    Connect to C{port}, send a line, return what comes back until the
    other side closes (or resets) the connection.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        try:
            s.sendall(b"hello\n")
            while chunk := s.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def _hostPort(host: bytes, port: int) -> bytes:
    return common.NS(host) + struct.pack(">L", port)


class NestedServerRefusalTests(_TunnelBase):
    """
    The nested SSH server (C{share --mode ssh}, C{mount --via ssh}), reached
    through its forward on the throwaway sshd: only the authorized keys log
    in, and only the C{sftp} subsystem is served.  Nothing a refused request
    asked for happens (checked with marker files and counting listeners).
    """

    skip = sshdmodule.available()

    async def setUp(self) -> None:
        super().setUp()
        self.conn, self.listener, self.installed = await self.nested()
        self.marker = os.path.abspath(self.mktemp())
        # Unix socket paths are limited to 107 bytes; trial's are long.
        self.sock = os.path.join(shortTempDir(self), "remote.sock")
        self.target = _Counter()
        port = reactor.listenTCP(0, self.target, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.targetPort = port.getHost().port

    def ssh(self, *args: str, key: bool = True) -> list[str]:
        """
        An C{ssh} command line to the nested server (BatchMode, no agent,
        nothing from ~/.ssh), with the session key unless C{key} is false.
        """
        argv = ["ssh", "-F", "none", "-p", str(self.installed.port), *_SSH_OPTIONS]
        argv += ["-o", f"UserKnownHostsFile={self.installed.knownHostsPath}"]
        argv += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        if key:
            argv += ["-o", f"IdentityFile={self.installed.keyPath}"]
        return argv + list(args)

    def assertNothingRan(self) -> None:
        self.assertFalse(os.path.lexists(self.marker), "a refused request ran a command")
        self.assertFalse(os.path.lexists(self.sock), "a refused forward made a socket")
        self.assertEqual(self.target.connections, 0, "a refused forward reached its target")

    async def test_onlyPublicKeyOffered(self) -> None:
        """
        OpenSSH's client, told to use none, password or
        keyboard-interactive (with a password ready from SSH_ASKPASS), is
        offered public-key authentication only and refused; the command it
        asked for did not run.
        """
        askpass = os.path.abspath(self.mktemp())
        with open(askpass, "w") as f:
            f.write("#!/bin/sh\necho hunter2\n")
        os.chmod(askpass, 0o700)
        env = dict(os.environ, SSH_ASKPASS=askpass, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        for methods in (
            "none",
            "password",
            "keyboard-interactive",
            "password,keyboard-interactive",
        ):
            argv = self.ssh(
                "-v",
                "-o",
                "BatchMode=no",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                f"PreferredAuthentications={methods}",
                "-o",
                "NumberOfPasswordPrompts=1",
                "x@127.0.0.1",
                f"touch {self.marker}",
                key=False,
            )
            code, out, err = await run(self, argv, b"", timeout=20, env=env)
            self.assertEqual(code, 255, (methods, err))
            self.assertIn(b"Authentications that can continue: publickey\r\n", err + b"\r\n")
            self.assertIn(b"Permission denied (publickey)", err)
            self.assertNotIn(b"Authenticated to", err)
            self.assertNothingRan()

    async def test_foreignKeysRefused(self) -> None:
        """
        Keys the nested server was not given are refused, whatever their
        type, including the key that logs in to the remote host's own sshd.
        """
        foreign = [self.sshd.clientKeyPath]
        for keyType in ("ed25519", "ecdsa", "rsa"):
            path = os.path.abspath(self.mktemp())
            sshdmodule.keygen(path, keyType)
            foreign.append(path)
        for path in foreign:
            argv = self.ssh(
                "-o", f"IdentityFile={path}", "x@127.0.0.1", f"touch {self.marker}", key=False
            )
            code, out, err = await run(self, argv, b"", timeout=20)
            self.assertEqual(code, 255, (path, err))
            self.assertIn(b"Permission denied (publickey)", err)
            self.assertNothingRan()
            code, out, err = await run(
                self,
                ["sftp", "-F", "none", "-P", str(self.installed.port), *_SSH_OPTIONS]
                + ["-o", f"UserKnownHostsFile={self.installed.knownHostsPath}"]
                + ["-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={path}"]
                + ["-b", "-", "x@127.0.0.1"],
                b"ls /\n",
                timeout=20,
            )
            self.assertNotEqual(code, 0)
            self.assertNotIn(b"s", out.split())

    async def test_clientRequestsRefused(self) -> None:
        """
        With the session key, OpenSSH's client gets no command, shell, pty,
        X11 or agent forwarding, no subsystem but sftp, and no port or
        socket forwarding either way; nothing it asked for happened.  (The
        agent request wants no reply: its refusal is checked with the Conch
        client below, as are channels OpenSSH's client cannot be made to
        open.)
        """
        target = f"127.0.0.1:{self.targetPort}"
        touch = f"touch {self.marker}"
        who = "x@127.0.0.1"
        cases: list[tuple[list[str], bytes, bytes]] = [
            # exec
            (self.ssh(who, touch), b"", b"exec request failed"),
            # shell, with a pty
            (self.ssh("-tt", who), f"{touch}\nexit\n".encode(), b"PTY allocation request failed"),
            # X11 (with a fake display cookie), then exec
            (self.ssh("-X", who, touch), b"", b"X11 forwarding request failed"),
            # another subsystem
            (self.ssh("-s", who, "shell"), b"", b"subsystem request failed"),
            # direct-tcpip (what -L and -W open)
            (self.ssh("-W", target, who), b"hello", b"open failed"),
            # tcpip-forward and streamlocal-forward (-R)
            (
                self.ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", f"0:{target}", who),
                b"",
                b"remote port forwarding failed",
            ),
            (
                self.ssh(
                    "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"{self.sock}:{target}", who
                ),
                b"",
                b"remote port forwarding failed",
            ),
        ]
        env = dict(os.environ, DISPLAY="127.0.0.1:97")
        for argv, stdin, message in cases:
            code, out, err = await run(self, argv, stdin, timeout=20, env=env)
            self.assertNotEqual(code, 0, (argv, err))
            self.assertIn(message, err, (argv, err))
            self.assertNothingRan()
        # -L: what arrives on the local port is closed, unforwarded.
        localPort = sshdmodule.freePort()
        spawn(self, self.ssh("-N", "-L", f"{localPort}:{target}", who))
        await waitFor(lambda: _listening(localPort))
        self.assertEqual(await threads.deferToThread(_sendAndRead, localPort), b"")
        self.assertNothingRan()
        code, out, err = await self.nestedSftp(self.installed, "ls /\n")
        self.assertEqual(code, 0, err)

    async def probe(self, requests: list[tuple[bytes, Any]]) -> tuple[_ProbeAuth, Any]:
        """
        Connect a Conch client to the nested server, send the raw
        authentication C{requests}, then log in with the session key.

        @return: the authentication client (its answers) and the connection.
        """
        conn = _ProbeConnection()
        auth = _ProbeAuth(conn, requests, self.sessionKey)
        factory = protocol.ClientFactory()
        factory.protocol = _ProbeTransport
        factory.auth = auth  # type: ignore[attr-defined]
        factory.hostKey = self.server.hostKey  # type: ignore[attr-defined]
        connector = reactor.connectTCP("127.0.0.1", self.installed.port, factory, timeout=10)
        self.addCleanup(connector.disconnect)
        return auth, await conn.ready.addTimeout(30, reactor)

    async def test_rawAuthenticationRefused(self) -> None:
        """
        Requests OpenSSH's client would not send get a failure naming
        C{publickey} alone: none, a password, keyboard-interactive,
        host-based, GSSAPI, a foreign key with its own valid signature, and
        the authorized key signed by another key.  The authorized key still
        logs in afterwards.
        """
        foreign = keys.Key.fromFile(self.mktempKey())
        authorized = self.sessionKey.public().blob()
        ed25519 = b"ssh-ed25519"
        requests: list[tuple[bytes, Any]] = [
            (b"none", b""),
            (b"password", b"\0" + common.NS(b"hunter2")),
            (b"keyboard-interactive", common.NS(b"") + common.NS(b"")),
            (b"hostbased", common.NS(ed25519) + common.NS(foreign.public().blob())),
            (b"gssapi-with-mic", struct.pack(">L", 0)),
            (
                b"publickey",
                lambda a: a.signed(b"publickey", foreign.public().blob(), foreign, ed25519),
            ),
            (b"publickey", lambda a: a.signed(b"publickey", authorized, foreign, ed25519)),
        ]
        auth, conn = await self.probe(requests)
        self.assertEqual(auth.answers, [("failure", b"publickey", b"\0")] * len(requests))

    def mktempKey(self) -> str:
        path = os.path.abspath(self.mktemp())
        sshdmodule.keygen(path, "ed25519")
        return path

    async def test_rawChannelsAndRequestsRefused(self) -> None:
        """
        Logged in with the session key, a Conch client that asks for more
        than OpenSSH's client would gets: every channel type but C{session}
        refused (port and socket forwarding, X11, agent, tun); the global
        forward requests refused (nothing listens); every session request
        but C{subsystem sftp} refused (exec, shell, pty, X11, agent, env,
        signal, other subsystem names); nothing reached its target, no
        command ran.  C{subsystem sftp} is granted once.
        """
        sock = self.sock + ".target"
        unix = reactor.listenUNIX(sock, self.target)
        self.addCleanup(unix.stopListening)
        _, conn = await self.probe([])
        local = _hostPort(b"127.0.0.1", 40000)
        opens = {
            b"direct-tcpip": _hostPort(b"127.0.0.1", self.targetPort) + local,
            b"direct-streamlocal@openssh.com": common.NS(sock.encode()) + local,
            b"forwarded-tcpip": _hostPort(b"127.0.0.1", self.targetPort) + local,
            b"forwarded-streamlocal@openssh.com": common.NS(sock.encode()) + common.NS(b""),
            b"x11": local,
            b"auth-agent@openssh.com": b"",
            b"tun@openssh.com": struct.pack(">LL", 1, 0),
        }
        for name, extra in opens.items():
            ch = _ProbeChannel(name)
            conn.openChannel(ch, extra)
            self.assertFalse(await ch.opened, name)
        port = sshdmodule.freePort()
        forwards = {
            b"tcpip-forward": _hostPort(b"127.0.0.1", port),
            b"streamlocal-forward@openssh.com": common.NS(self.sock.encode()),
        }
        for name, data in forwards.items():
            granted = await conn.sendGlobalRequest(name, data, wantReply=True).addCallbacks(
                lambda _: True, lambda _: False
            )
            self.assertFalse(granted, name)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", port)), 0)

        session = _ProbeChannel(b"session")
        conn.openChannel(session)
        self.assertTrue(await session.opened)
        requests = [
            (b"exec", common.NS(f"touch {self.marker}".encode())),
            (b"shell", b""),
            (b"pty-req", common.NS(b"xterm") + struct.pack(">LLLL", 80, 24, 0, 0) + common.NS(b"")),
            (
                b"x11-req",
                b"\0" + common.NS(b"MIT-MAGIC-COOKIE-1") + common.NS(b"0" * 32) + b"\0" * 4,
            ),
            (b"auth-agent-req@openssh.com", b""),
            (b"env", common.NS(b"LD_PRELOAD") + common.NS(self.marker.encode())),
            (b"signal", common.NS(b"KILL")),
            (b"subsystem", common.NS(b"shell")),
            (b"subsystem", common.NS(b"SFTP")),
            (b"subsystem", common.NS(b"sftp\0")),
            (b"subsystem", common.NS(b"../sftp")),
        ]
        for name, data in requests:
            granted = await self.request(conn, session, name, data)
            self.assertFalse(granted, (name, data))
        self.assertTrue(await self.request(conn, session, b"subsystem", common.NS(b"sftp")))
        self.assertFalse(await self.request(conn, session, b"subsystem", common.NS(b"sftp")))
        self.assertNothingRan()

    def request(self, conn: Any, ch: Any, name: bytes, data: bytes) -> defer.Deferred[bool]:
        """
        Send a channel request wanting a reply; fire with whether it was
        granted.
        """
        d: defer.Deferred[Any] = conn.sendRequest(ch, name, data, wantReply=True)
        return d.addCallbacks(lambda _: True, lambda _: False)


# -- remote commands ---------------------------------------------------------


#: Where a payload names the marker file.
_M = "@MARKER@"

#: Path components that would run C{touch MARKER} (or create MARKER by a
#: redirection), or would be read as an option, a glob, a home directory
#: or a variable, if a remote shell or tool ever interpreted them.
PAYLOADS = (
    f"a; touch {_M}",
    f"a && touch {_M}",
    f"a || touch {_M}",
    f"a | touch {_M}",
    f"a & touch {_M} &",
    f"`touch {_M}`",
    f"$(touch {_M})",
    f"a\ntouch {_M}",
    f"a\ntouch {_M}\n",
    f"a\rtouch {_M}",
    f"'; touch {_M}; '",
    f"'\"'\"'; touch {_M}; '",
    f'"; touch {_M}; "',
    f"a'$(touch {_M})'b",
    f"\\'; touch {_M} #",
    f"a > {_M}",
    f"a >> {_M} <",
    f"${{IFS}}touch${{IFS}}{_M}",
    f"x=1 touch {_M}",
    f"-o allow_other; touch {_M}",
    "--",
    "-",
    "*",
    "?[a-z]*",
    "{a,b}",
    "a,b:c!d(e)",
    "~root",
    "~",
    "$HOME",
    "!!",
    "%s%n%x",
    " spaced  out ",
    "\ttab\\back",
    "#comment",
    "\x1b[31mred",
    "\udcff\udcfe non-UTF-8",
    "ünï 日本",
)

#: The payloads whose meaning changes when C{--at} is relative: options,
#: C{cd -}, a leading C{~}, globs, trailing newlines, spaces, variables.
_RELATIVE = (
    "-",
    "--",
    f"-o allow_other; touch {_M}",
    "~root",
    "~",
    "*",
    f"a\ntouch {_M}\n",
    " spaced  out ",
    "$HOME",
    "\udcff\udcfe non-UTF-8",
)

#: The payloads tried with every transport (C{socket} passes the paths
#: through socat's address syntax and an environment variable).
_EVERY_VIA = (
    f"a; touch {_M}",
    f"$(touch {_M})",
    f"`touch {_M}`",
    f"'; touch {_M}; '",
    f"\\'; touch {_M} #",
    f"a\ntouch {_M}\n",
    "a,b:c!d(e)",
    " spaced  out ",
    "\udcff\udcfe non-UTF-8",
)


def _bashLogin() -> bool:
    """
    Whether the remote sessions run bash (which reads C{BASH_ENV}).
    """
    return pwd.getpwnam(getpass.getuser()).pw_shell.endswith("/bash")


class RemoteCommandInjectionTests(unittest.TestCase):
    """
    Mount points (C{--at}) and share names are quoted in every command run
    on the remote host: a payload runs nothing (no marker file appears),
    the mount is made at the literal path with the share's contents, and
    unmounting removes every directory it created.

    The remote sessions start in a home directory of the test's own (sshd
    sets C{HOME}, bash reads C{BASH_ENV}), so relative mount points land
    there.
    """

    skip = _mountSkipReason()
    timeout = 240

    async def setUp(self) -> None:
        self.tmp = shortTempDir(self)
        self.marker = os.path.join(self.tmp, "pwned")
        self.home = os.path.join(self.tmp, "home")
        os.mkdir(self.home)
        bashEnv = os.path.join(self.tmp, "bash_env")
        with open(bashEnv, "w") as f:
            f.write('cd "$HOME" || exit 1\n')
        self.sshd = ThrowawaySSHD.start(
            os.path.join(self.tmp, "sshd"),
            extraConfig=[f"SetEnv HOME={self.home} BASH_ENV={bashEnv}"],
        )
        self.addCleanup(self.sshd.stop)
        self.folder = os.path.join(self.tmp, "folder")
        os.mkdir(self.folder)
        with open(os.path.join(self.folder, "f.txt"), "w") as f:
            f.write("hello\n")
        self.connection = await connect(self, self.sshd)

    async def mountAt(self, at: str, name: str, via: str) -> str:
        """
        Mount the folder, shared as C{name}, at C{at}; list it; unmount.

        @return: the mount point's absolute path, as the mount reported it.
        """
        shares = ShareSet.fromSpecs([f"{name}={self.folder}"])
        mount = RemoteMount(self.connection, shares, at, via=via)
        try:
            path = await mount.mount()
            self.addCleanup(forceUnmount, path)
            names = await threads.deferToThread(_listdir, path)
        finally:
            await mount.unmount()
        self.assertEqual(names, ["f.txt"])
        return path

    async def check(
        self, payloads: list[str], relative: bool = False, via: str = "passive"
    ) -> None:
        """
        Mount at each payload (below the home directory, given as an
        absolute path or a relative one) with the payload as the share's
        name too; collect what went wrong for every payload, then fail
        with the list.
        """
        failures: list[tuple[str, str]] = []
        for payload in payloads:
            at = payload if relative else os.path.join(self.home, payload)
            expected = self.home if at == "~" else os.path.join(self.home, payload)
            try:
                # A share's name ends at its first "=".
                path = await self.mountAt(at, payload.replace("=", "") or "x", via)
                if path != expected:
                    failures.append((payload, f"mounted at {path!r}"))
            except Exception as e:
                failures.append((payload, f"{e.__class__.__name__}: {e}"))
            if os.path.lexists(self.marker):
                failures.append((payload, "the marker file was created"))
                os.unlink(self.marker)
            left = os.listdir(self.home)
            if left:
                failures.append((payload, f"left behind: {left!r}"))
                for name in left:
                    shutil.rmtree(os.path.join(self.home, name))
        self.assertEqual(failures, [])

    def payloads(self, templates: tuple[str, ...]) -> list[str]:
        """
        C{templates} with the marker's path filled in.
        """
        return [t.replace(_M, self.marker) for t in templates]

    async def test_absoluteMountPoints(self) -> None:
        """
        Every payload as the last component of an absolute C{--at} and as
        the share's name, through the default transport (passive).
        """
        self.assertGreaterEqual(len(PAYLOADS), 30)
        await self.check(self.payloads(PAYLOADS))

    async def test_relativeMountPoints(self) -> None:
        """
        A relative C{--at} is below the remote home directory, however it
        begins: C{-} and C{-o ...} are folders, not options nor C{cd -};
        C{~root} is a folder, C{~} the home directory itself; a trailing
        newline is part of the name.
        """
        if not _bashLogin():
            raise unittest.SkipTest("the remote sessions need bash as the login shell here")
        self.assertLessEqual(set(_RELATIVE), set(PAYLOADS))
        await self.check(self.payloads(_RELATIVE), relative=True)

    async def test_emptyMountPoint(self) -> None:
        """
        An empty C{--at} is refused in one sentence; the home directory is
        not mounted over.
        """
        mount = RemoteMount(self.connection, ShareSet.fromSpecs([self.folder]), "")
        self.addCleanup(forceUnmount, self.home)
        with self.assertRaises(MountFailed) as caught:
            await mount.mount()
        self.assertTrue(str(caught.exception).startswith("could not create the remote mount point"))
        self.assertNotIn("\n", str(caught.exception))
        self.assertEqual(mount.state, "idle")
        self.assertNotIn(self.home, mountedPaths())

    async def test_everyTransport(self) -> None:
        """
        The paths reach sshfs intact with C{--via socket} (through socat's
        address syntax), C{ssh} and C{raw-tcp} too.
        """
        self.assertLessEqual(set(_EVERY_VIA), set(PAYLOADS))
        for via in ("socket", "ssh", "raw-tcp"):
            await self.check(self.payloads(_EVERY_VIA), via=via)


class CommandInjectionTests(_MountBase):
    """
    The same through the commands a user runs: C{conchshare mount} with a
    payload in C{--at} and in the share's name; C{conchshare share}'s
    printed C{sshfs} command line for a share with a payload name.  The
    remote sessions start in a home directory of the test's own, where a
    payload's C{touch pwned} would create the marker.
    """

    timeout = 120

    def configure(self) -> list[str]:
        self.home = os.path.join(self.tmp, "home")
        os.mkdir(self.home)
        bashEnv = os.path.join(self.tmp, "bash_env")
        with open(bashEnv, "w") as f:
            f.write('cd "$HOME" || exit 1\n')
        return [f"SetEnv HOME={self.home} BASH_ENV={bashEnv}"]

    def assertNothingRan(self) -> None:
        for where in (self.home, self.tmp):
            self.assertFalse(os.path.lexists(os.path.join(where, "pwned")), where)

    def test_mountCommand(self) -> None:
        """
        C{--at} relative, starting with C{-}, with a command substitution,
        a byte that is not UTF-8 and a trailing newline; a share name full
        of quotes and substitutions: the C{mounted} event names the literal
        path below the remote home, the share is there, SIGTERM unmounts
        and removes it; nothing ran.
        """
        if not _bashLogin():
            raise unittest.SkipTest("the remote sessions need bash as the login shell here")
        at = "-rf; $(touch pwned) \udcff\n"
        name = 'it\'s "$(touch pwned)" `touch pwned`; touch pwned\n'
        args = ["mount", *sshArgs(self.sshd), "--control", self.control, "--json"]
        args += [self.sshd.destination(), f"{name}={self.share}", f"--at={at}"]
        path = os.path.join(self.home, at)
        self.addCleanup(forceUnmount, path)
        running = Running(self, args)
        self.assertEqual(running.event("mounted")["remote_path"], path)
        self.assertEqual(listRemote(path), ["hello.txt"])
        self.stopped(running, path)
        self.assertEqual(os.listdir(self.home), [])
        self.assertNothingRan()

    def test_mountRefusedInOneSentence(self) -> None:
        """
        A payload mount point that cannot be used (it is a file, or a file
        is in its way): exit 7 and one sentence naming the literal path on
        standard error, nothing created, nothing ran.
        """
        blocker = os.path.join(self.home, "x; touch pwned; $(touch pwned) `touch pwned`")
        with open(blocker, "w"):
            pass

        def mount(at: str) -> subprocess.CompletedProcess[str]:
            self.addCleanup(forceUnmount, at)
            return subprocess.run(
                [sys.executable, "-m", "conchshare", *self.mountArgs(at, json_=False)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="surrogateescape",
                timeout=WAIT,
            )

        result = mount(blocker)
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertEqual(
            result.stderr, f"The remote mount point {blocker} exists and is not a directory.\n"
        )
        at = os.path.join(blocker, "sub")
        result = mount(at)
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertTrue(
            result.stderr.startswith(f"Could not create the remote mount point {at}: mkdir: "),
            result.stderr,
        )
        self.assertTrue(result.stderr.endswith("Not a directory.\n"), result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertEqual(os.listdir(self.home), [os.path.basename(blocker)])
        self.assertNothingRan()

    def test_shareSessionKeyCommand(self) -> None:
        """
        C{share}'s C{session-key} event prints an C{sshfs} command line
        for a share whose name is a payload; run by a shell on the remote
        host (with the mount point put in), it mounts the share and runs
        nothing else.
        """
        name = 'it\'s "$(touch pwned)" `touch pwned`; touch pwned & $HOME'
        args = ["share", *sshArgs(self.sshd), "--control", self.control, "--json"]
        running = Running(self, args + [self.sshd.destination(), f"{name}={self.share}"])
        command = running.event("session-key")["sshfs"]
        self.assertTrue(command.endswith(" MOUNTPOINT"), command)
        mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(mnt)
        self.addCleanup(forceUnmount, mnt)
        line = command[: -len("MOUNTPOINT")] + shlex.quote(mnt) + " -o BatchMode=yes"
        result = remote("sh", "-c", line)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(listRemote(mnt), ["hello.txt"])
        self.assertEqual(remote(FUSERMOUNT, "-u", "--", mnt).returncode, 0)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0, running.stderr)
        self.assertNothingRan()

    def test_remoteSocketPath(self) -> None:
        """
        C{share --remote-socket PATH} with a payload path, where a stale
        socket is left: the stale one is removed, the forward listens at
        the literal path and serves the share, stopping removes it; the
        commands that removed it ran nothing else.
        """
        directory = os.path.join(self.tmp, "s")
        os.mkdir(directory)
        path = os.path.join(directory, "$(touch pwned)'; touch pwned `touch pwned`.sock")
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)
        args = ["share", *sshArgs(self.sshd), "--control", self.control, "--json"]
        args += ["--mode", "raw", "--remote-socket", path, self.sshd.destination(), self.share]
        running = Running(self, args)
        self.assertEqual(running.event("forwarding")["socket"], path)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(WAIT)
            client.connect(path)
            client.sendall(struct.pack(">LBL", 5, 1, 3))  # SSH_FXP_INIT, version 3
            self.assertEqual(client.recv(5)[4:], b"\2")  # SSH_FXP_VERSION
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0, running.stderr)
        self.assertFalse(os.path.lexists(path))
        self.assertEqual(os.listdir(directory), [])
        self.assertNothingRan()
