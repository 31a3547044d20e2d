"""
A throwaway OpenSSH C{sshd} on a free loopback port: the remote host of the
end-to-end tests.

It runs as whoever runs the tests (root or not) with its own temporary
config, host key, client key and authorized_keys.  Everything lives in one
temporary directory that L{ThrowawaySSHD.stop} removes.

Usage from a trial test::

    sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=["AllowTcpForwarding no"])
    self.addCleanup(sshd.stop)
    sshd.port, sshd.clientKeyPath, sshd.knownHostsPath, sshd.user
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port that nothing listens on right now.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def portOpen(port: int) -> bool:
    """
    Whether something accepts TCP connections on C{127.0.0.1:port}.
    """
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def keygen(path: str, keyType: str = "ed25519", passphrase: str = "", comment: str = "") -> str:
    """
    Make a key pair with C{ssh-keygen}; return the public key line.
    """
    args = ["ssh-keygen", "-q", "-t", keyType, "-N", passphrase, "-f", path, "-C", comment]
    if keyType == "rsa":
        args += ["-b", "2048"]
    subprocess.run(args, check=True, stdin=subprocess.DEVNULL)
    with open(path + ".pub") as f:
        return f.read().strip()


def available() -> str | None:
    """
    Why the end-to-end tests cannot run here, or L{None} if they can.
    """
    if not os.path.exists(SSHD):
        return "OpenSSH sshd is not installed (apt-get install openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    return None


def startForTest(
    testCase: Any, extraConfig: Sequence[str] = (), needs: Sequence[str] = ()
) -> ThrowawaySSHD:
    """
    Start a throwaway sshd for C{testCase} (stopped at its cleanup), or skip
    the test with the reason when sshd or one of the commands C{needs} is
    missing.

    @raise SkipTest: sshd, ssh-keygen or a needed command is not installed.
    """
    from twisted.trial.unittest import SkipTest

    reason = available()
    missing = [name for name in needs if not shutil.which(name)]
    if reason is None and missing:
        reason = " and ".join(missing) + " needed"
    if reason is not None:
        raise SkipTest(reason)
    sshd = ThrowawaySSHD.start(testCase.mktemp(), extraConfig=extraConfig)
    testCase.addCleanup(sshd.stop)
    return sshd


@dataclass
class ThrowawaySSHD:
    """
    A running sshd.  Create with L{start}.
    """

    directory: str
    port: int
    host: str
    user: str
    configPath: str
    hostKeyPath: str
    hostPublicKey: str
    clientKeyPath: str
    clientPublicKey: str
    authorizedKeysPath: str
    knownHostsPath: str
    logPath: str
    process: subprocess.Popen[bytes] | None = None
    extraConfig: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        directory: str,
        extraConfig: Sequence[str] = (),
        host: str = "127.0.0.1",
        clientKeyType: str = "ed25519",
        port: int | None = None,
    ) -> ThrowawaySSHD:
        """
        Create the files and start sshd; return once it accepts connections.

        @param directory: a path that does not exist yet (e.g. C{mktemp()}).
        @param extraConfig: sshd_config lines, added before the defaults
            (sshd takes the first value given for a keyword).
        @raise RuntimeError: sshd did not come up; its log is in the message.
        """
        os.makedirs(directory, mode=0o700)
        directory = os.path.abspath(directory)
        # sshd refuses keys and configs in group/world-writable places.
        os.chmod(directory, 0o700)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True) if os.geteuid() == 0 else None
        hostKeyPath = os.path.join(directory, "host_ed25519")
        hostPublicKey = keygen(hostKeyPath, "ed25519")
        clientKeyPath = os.path.join(directory, "client_key")
        clientPublicKey = keygen(clientKeyPath, clientKeyType)
        authorizedKeysPath = os.path.join(directory, "authorized_keys")
        with open(authorizedKeysPath, "w") as f:
            f.write(clientPublicKey + "\n")
        os.chmod(authorizedKeysPath, 0o600)
        if port is None:
            port = freePort(host)
        knownHostsPath = os.path.join(directory, "known_hosts")
        hostField = host if port == 22 else f"[{host}]:{port}"
        with open(knownHostsPath, "w") as f:
            f.write(f"{hostField} {hostPublicKey}\n")
        configPath = os.path.join(directory, "sshd_config")
        logPath = os.path.join(directory, "sshd.log")
        user = getpass.getuser()
        # Commands run without the account's ~/.bashrc: bash sources it for
        # sshd only as a top-level shell.  A developer's .bashrc must not
        # slow the remote host's commands down: pyenv's init runs `pyenv
        # rehash`, which waits 60 s on the lock a session killed mid-rehash
        # leaves behind (seen here: every test that runs a command timed
        # out).  sshd takes the first SetEnv line only: added to it.
        extra = list(extraConfig)
        setEnv = [i for i, line in enumerate(extra) if line.split(None, 1)[:1] == ["SetEnv"]]
        if setEnv:
            extra[setEnv[0]] += " SHLVL=1"
        else:
            extra.append("SetEnv SHLVL=1")
        lines = extra + [
            f"ListenAddress {host}:{port}" if ":" not in host else f"ListenAddress [{host}]:{port}",
            f"HostKey {hostKeyPath}",
            f"AuthorizedKeysFile {authorizedKeysPath}",
            f"PidFile {os.path.join(directory, 'sshd.pid')}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AllowTcpForwarding yes",
            "AllowStreamLocalForwarding yes",
            "GatewayPorts no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            f"Subsystem sftp {SFTP_SERVER}",
        ]
        with open(configPath, "w") as f:
            f.write("\n".join(lines) + "\n")
        self = cls(
            directory=directory,
            port=port,
            host=host,
            user=user,
            configPath=configPath,
            hostKeyPath=hostKeyPath,
            hostPublicKey=hostPublicKey,
            clientKeyPath=clientKeyPath,
            clientPublicKey=clientPublicKey,
            authorizedKeysPath=authorizedKeysPath,
            knownHostsPath=knownHostsPath,
            logPath=logPath,
            extraConfig=list(extraConfig),
        )
        self._run()
        return self

    def _run(self) -> None:
        log = open(self.logPath, "ab")
        try:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.configPath],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 10
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with socket.socket(family, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not start:\n{self.log()}")

    def restart(self) -> None:
        """
        Start sshd again (same port, keys and config) after L{stop}/L{kill}.
        """
        self._run()

    def log(self) -> str:
        """
        What sshd wrote so far.
        """
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def hostField(self) -> str:
        """
        The known_hosts host field for this server.
        """
        return f"[{self.host}]:{self.port}"

    def destination(self) -> str:
        """
        C{user@host:port}, as conchshare's command takes it.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def killSessions(self) -> None:
        """
        Kill every per-connection sshd child (the listener stays up): what a
        dropped connection looks like to the client.
        """
        if self.process is None:
            return
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def kill(self) -> None:
        """
        Kill the listener and every session process at once (sshd killed
        mid-transfer).
        """
        if self.process is None:
            return
        # Connection children run setsid(): find them while the listener,
        # their parent, is still alive.
        self.killSessions()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """
        Stop sshd and its sessions.  The directory stays until trial's
        temporary directory is removed, so logs can still be read.
        """
        if self.process is None:
            return
        self.killSessions()
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None
