"""
End-to-end tests of L{conchshare.mount.RemoteMount} against a throwaway
OpenSSH sshd on loopback: the remote host is this machine, so the remote
mount point is a local path too.

Files on the mount are touched only from worker threads or child processes:
the mount is served by this very reactor, so a blocking call on the reactor
thread would deadlock.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import Any

from twisted.conch.ssh import keys, transport, userauth
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from conchshare import mount as mountModule
from conchshare.errors import MountFailed
from conchshare.mount import RemoteMount
from conchshare.shares import ShareSet
from conchshare.tunnel.connection import ShareConnection
from tests.support.mounting import forceUnmount, mountSkipReason
from tests.support.sshd import ThrowawaySSHD
from tests.support.workload import FUSERMOUNT, isMounted, readFile, sha256File, writeFile

# -- a minimal SSH client (the product's own client lives in conchshare.tunnel)


class _Connection(ShareConnection):
    ready: defer.Deferred[Any]

    def serviceStarted(self) -> None:
        super().serviceStarted()
        if not self.ready.called:
            self.ready.callback(self)


class _Transport(transport.SSHClientTransport):  # type: ignore[misc]
    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
        expected = keys.Key.fromString(self.factory.sshd.hostPublicKey.encode()).blob()
        if hostKey != expected:
            return defer.fail(Exception("host key mismatch"))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_UserAuth(self.factory.sshd, self.factory.connection))

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        if not self.factory.connection.ready.called:
            self.factory.connection.ready.errback(reason or Failure(ConnectionDone()))


class _UserAuth(userauth.SSHUserAuthClient):  # type: ignore[misc]
    def __init__(self, sshd: ThrowawaySSHD, connection: Any) -> None:
        super().__init__(sshd.user.encode(), connection)
        self._key = keys.Key.fromFile(sshd.clientKeyPath)
        self._offered = False

    def getPublicKey(self) -> Any:
        if self._offered:
            return None
        self._offered = True
        return self._key.public()

    def getPrivateKey(self) -> Any:
        return defer.succeed(self._key)

    def getPassword(self, prompt: Any = None) -> Any:
        return None


class _Factory(protocol.ClientFactory):
    protocol = _Transport

    def __init__(self, sshd: ThrowawaySSHD) -> None:
        self.sshd = sshd
        self.connection = _Connection()
        self.connection.ready = defer.Deferred()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.connection.ready.called:
            self.connection.ready.errback(reason)


def connect(testCase: unittest.TestCase, sshd: ThrowawaySSHD) -> defer.Deferred[Any]:
    """
    Connect to C{sshd}; the test's cleanup disconnects.

    @return: a Deferred firing with the connected C{SSHConnection}.
    """
    factory = _Factory(sshd)
    connector = reactor.connectTCP(sshd.host, sshd.port, factory, timeout=10)

    def disconnect() -> None:
        tr = factory.connection.transport
        if tr is not None and tr.transport is not None:
            tr.transport.loseConnection()
        else:
            connector.disconnect()

    testCase.addCleanup(disconnect)
    return factory.connection.ready.addTimeout(15, reactor)


# -- helpers -----------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inThread(f: Any, *args: Any) -> defer.Deferred[Any]:
    """
    Run blocking file work on the mount in a thread, with a timeout.
    """
    return threads.deferToThread(f, *args).addTimeout(30, reactor)


class MountTestsMixin:
    """
    Start an sshd, connect, build shares; clean up every mount.
    """

    skip = mountSkipReason()
    extraConfig: list[str] = []

    def setUpSSHD(self, extraConfig: list[str] | None = None) -> defer.Deferred[Any]:
        tc: Any = self
        self.sshd = ThrowawaySSHD.start(tc.mktemp(), extraConfig=extraConfig or [])
        tc.addCleanup(self.sshd.stop)
        self.base = os.path.abspath(tc.mktemp())
        os.makedirs(self.base)
        return connect(tc, self.sshd)

    def share(self, name: str, files: dict[str, bytes]) -> str:
        path = os.path.join(self.base, "local", name)
        os.makedirs(path)
        for filename, data in files.items():
            writeFile(os.path.join(path, filename), data)
        return path

    def remoteMount(
        self, connection: Any, specs: list[str], mountPoint: str, **kw: Any
    ) -> RemoteMount:
        tc: Any = self
        self.events: list[dict[str, Any]] = []
        mount = RemoteMount(
            connection,
            ShareSet.fromSpecs(specs),
            mountPoint,
            observer=self.events.append,
            **kw,
        )
        absolute = mountPoint if os.path.isabs(mountPoint) else None
        tc.addCleanup(lambda: forceUnmount(mount.remotePath or absolute or mountPoint))
        tc.addCleanup(mount.unmount)
        return mount


class PassiveMountTests(MountTestsMixin, unittest.TestCase):
    """
    C{--via passive}: sshfs on an exec channel, SFTP over its stdio.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_oneShareReadWrite(self) -> Any:
        """
        With one share, the mount point shows the folder's contents; a
        few MiB file reads back with its checksum, and files written on the
        remote side arrive in the local folder intact.  Unmounting removes
        the mount point this call created and reports it.
        """
        connection = yield self.setUpSSHD()
        big = os.urandom(3 * 1024 * 1024 + 17)
        local = self.share("docs", {"hello.txt": b"hello\n", "big.bin": big})
        mountPoint = os.path.join(self.base, "remote", "mnt")
        mount = self.remoteMount(connection, [f"docs={local}"], mountPoint)

        path = yield mount.mount()
        self.assertEqual(path, mountPoint)
        self.assertTrue(isMounted(mountPoint))
        self.assertEqual([e["event"] for e in self.events], ["mounted"])
        self.assertEqual(self.events[0]["remote_path"], mountPoint)

        names = yield inThread(os.listdir, mountPoint)
        self.assertEqual(sorted(names), ["big.bin", "hello.txt"])
        data = yield inThread(readFile, os.path.join(mountPoint, "big.bin"))
        self.assertEqual(sha256(data), sha256(big))

        written = os.urandom(2 * 1024 * 1024 + 5)
        yield inThread(writeFile, os.path.join(mountPoint, "from-remote.bin"), written)
        self.assertEqual(sha256File(os.path.join(local, "from-remote.bin")), sha256(written))

        yield mount.unmount()
        self.assertFalse(isMounted(mountPoint))
        self.assertFalse(os.path.exists(mountPoint))
        self.assertFalse(os.path.exists(os.path.join(self.base, "remote")))
        self.assertEqual([e["event"] for e in self.events], ["mounted", "unmounted"])
        self.assertEqual(self.events[1]["remote_path"], mountPoint)
        self.assertNotIn("lazy", self.events[1])
        self.assertTrue(os.path.exists(os.path.join(local, "from-remote.bin")))

    @defer.inlineCallbacks
    def test_severalSharesShowTheVirtualRoot(self) -> Any:
        """
        With several shares the mount point shows one folder per share; an
        existing mount point is left in place after unmounting; unmounting
        twice at once unmounts once.
        """
        connection = yield self.setUpSSHD()
        one = self.share("one", {"a.txt": b"A"})
        two = self.share("two", {"b.txt": b"B"})
        mountPoint = os.path.join(self.base, "existing")
        os.makedirs(mountPoint)
        mount = self.remoteMount(connection, [f"one={one}", f"two={two}"], mountPoint)
        yield mount.mount()
        names = yield inThread(os.listdir, mountPoint)
        self.assertEqual(sorted(names), ["one", "two"])
        data = yield inThread(readFile, os.path.join(mountPoint, "two", "b.txt"))
        self.assertEqual(data, b"B")
        # A second unmount (say, a signal during stop) waits for the first.
        yield defer.gatherResults([mount.unmount(), mount.unmount()])
        self.assertFalse(isMounted(mountPoint))
        self.assertTrue(os.path.isdir(mountPoint))
        self.assertEqual([e["event"] for e in self.events], ["mounted", "unmounted"])

    @defer.inlineCallbacks
    def test_awkwardPath(self) -> Any:
        """
        A mount point with spaces, quotes, shell metacharacters and
        non-ASCII characters is created, mounted, unmounted and removed.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {"f.txt": b"quoted"})
        parent = os.path.join(self.base, 'it\'s "a" $HOME `x`')
        os.makedirs(parent)
        mountPoint = os.path.join(parent, "mnt dir; rm -rf ü 日本")
        mount = self.remoteMount(connection, [local], mountPoint)
        path = yield mount.mount()
        self.assertEqual(path, mountPoint)
        data = yield inThread(readFile, os.path.join(mountPoint, "f.txt"))
        self.assertEqual(data, b"quoted")
        yield mount.unmount()
        self.assertFalse(os.path.exists(mountPoint))
        self.assertTrue(os.path.isdir(parent))
        self.assertEqual(os.listdir(parent), [])

    @defer.inlineCallbacks
    def test_homeRelativePath(self) -> Any:
        """
        C{~/DIR} names a folder in the remote user's home directory; the
        mount reports its absolute path.
        """
        import pwd
        import uuid

        connection = yield self.setUpSSHD()
        local = self.share("s", {"f.txt": b"home"})
        name = f".conchshare-test-{uuid.uuid4().hex[:8]}"
        home = pwd.getpwuid(os.getuid()).pw_dir
        expected = os.path.join(home, name, "mnt")
        self.addCleanup(lambda: shutil.rmtree(os.path.join(home, name), ignore_errors=True))
        mount = self.remoteMount(connection, [local], f"~/{name}/mnt")
        path = yield mount.mount()
        self.assertEqual(path, expected)
        data = yield inThread(readFile, os.path.join(expected, "f.txt"))
        self.assertEqual(data, b"home")
        yield mount.unmount()
        self.assertFalse(os.path.exists(os.path.join(home, name)))

    @defer.inlineCallbacks
    def test_busyMountIsUnmountedLazily(self) -> Any:
        """
        While a remote process keeps a file on the mount open, unmount
        retries, then detaches the mount lazily and says so in the event.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {"open.txt": b"x"})
        mountPoint = os.path.join(self.base, "busy")
        mount = self.remoteMount(connection, [local], mountPoint)
        yield mount.mount()
        holder = subprocess.Popen(
            [
                "sh",
                "-c",
                'exec 3<"$1"; echo ready; exec sleep 30',
                "sh",
                os.path.join(mountPoint, "open.txt"),
            ],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(lambda: (holder.kill(), holder.wait(), holder.stdout.close()))  # type: ignore[union-attr]
        line = yield inThread(holder.stdout.readline)  # type: ignore[union-attr]
        self.assertEqual(line, b"ready\n")
        yield mount.unmount()
        self.assertFalse(isMounted(mountPoint))
        self.assertFalse(os.path.exists(mountPoint))
        event = self.events[-1]
        self.assertEqual(event["event"], "unmounted")
        self.assertIs(event.get("lazy"), True)
        self.assertIn("lazily", event["message"])

    @defer.inlineCallbacks
    def test_mountPointIsAFile(self) -> Any:
        """
        A mount point that is a file: L{MountFailed}, the file untouched.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "file")
        writeFile(mountPoint, b"keep")
        mount = self.remoteMount(connection, [local], mountPoint)
        failure = yield self.assertFailure(mount.mount(), MountFailed)
        self.assertIn("not a directory", str(failure))
        self.assertEqual(readFile(mountPoint), b"keep")
        self.assertEqual(self.events, [])

    @defer.inlineCallbacks
    def test_sshfsFails(self) -> Any:
        """
        When sshfs itself fails, mount fails with L{MountFailed} quoting
        sshfs's complaint, and the mount point it created is removed.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "bad", "mnt")
        mount = self.remoteMount(
            connection, [local], mountPoint, sshfsOptions=["no_such_option_at_all"]
        )
        failure = yield self.assertFailure(mount.mount(), MountFailed)
        self.assertIn("sshfs failed on the remote host", str(failure))
        self.assertIn("no_such_option_at_all", str(failure))
        self.assertFalse(os.path.exists(os.path.join(self.base, "bad")))
        self.assertEqual(mount.state, "idle")
        self.assertEqual(self.events, [])

    @defer.inlineCallbacks
    def test_unmountWhileMounting(self) -> Any:
        """
        L{RemoteMount.unmount} called while the mount is under way waits
        for it, then undoes it.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "hurry")
        mount = self.remoteMount(connection, [local], mountPoint)
        mounting = mount.mount()
        yield mount.unmount()
        path = yield mounting
        self.assertEqual(path, mountPoint)
        self.assertFalse(isMounted(mountPoint))
        self.assertFalse(os.path.exists(mountPoint))
        self.assertEqual([e["event"] for e in self.events], ["mounted", "unmounted"])

    @defer.inlineCallbacks
    def test_unmountAfterConnectionLost(self) -> Any:
        """
        Once the connection is gone, sshfs has gone with it (the mount
        disappears on its own) and L{RemoteMount.unmount} fires at once.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "lost")
        mount = self.remoteMount(connection, [local], mountPoint)
        yield mount.mount()
        lost = connection.whenLost()
        connection.transport.transport.loseConnection()
        yield lost
        yield mount.unmount()
        self.assertEqual(mount.state, "idle")
        self.assertEqual(self.events[-1]["event"], "unmounted")
        for _ in range(50):
            if not isMounted(mountPoint):
                break
            yield deferLater(reactor, 0.1)
        self.assertFalse(isMounted(mountPoint))

    @defer.inlineCallbacks
    def test_unmountedOnTheRemoteSide(self) -> Any:
        """
        When the mount goes away on the remote host (someone ran fusermount
        -u there) while it is still wanted, sshfs is started again: a
        second C{mounted} event, and the mount works.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {"f.txt": b"back"})
        mountPoint = os.path.join(self.base, "external")
        mount = self.remoteMount(connection, [local], mountPoint)
        yield mount.mount()
        subprocess.run([FUSERMOUNT, "-u", "--", mountPoint], check=True)
        for _ in range(200):
            if len(self.events) == 2 and mount.state == "mounted":
                break
            yield deferLater(reactor, 0.05)
        self.assertEqual([e["event"] for e in self.events], ["mounted", "mounted"])
        self.assertTrue(isMounted(mountPoint))
        data = yield inThread(readFile, os.path.join(mountPoint, "f.txt"))
        self.assertEqual(data, b"back")
        yield mount.unmount()
        self.assertEqual([e["event"] for e in self.events], ["mounted", "mounted", "unmounted"])
        self.assertFalse(os.path.exists(mountPoint))

    @defer.inlineCallbacks
    def test_unmountedOnTheRemoteSideTooOften(self) -> Any:
        """
        An sshfs that keeps ending is given up after L{REMOUNT_LIMIT}
        remounts: an C{unmounted} event says so and the mount point this
        mount created is removed.
        """
        self.patch(mountModule, "REMOUNT_LIMIT", 0)
        connection = yield self.setUpSSHD()
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "external")
        mount = self.remoteMount(connection, [local], mountPoint)
        yield mount.mount()
        subprocess.run([FUSERMOUNT, "-u", "--", mountPoint], check=True)
        for _ in range(100):
            if mount.state == "idle":
                break
            yield deferLater(reactor, 0.05)
        self.assertEqual(mount.state, "idle")
        self.assertEqual([e["event"] for e in self.events], ["mounted", "unmounted"])
        self.assertIn("sshfs ended on the remote host", self.events[-1]["message"])
        self.assertFalse(os.path.exists(mountPoint))
        yield mount.unmount()
        self.assertEqual(len(self.events), 2)

    @defer.inlineCallbacks
    def test_remountOnNewConnection(self) -> Any:
        """
        After the connection is lost (sshfs goes with it), L{remount} on a
        new connection mounts again and the mount works.
        """
        connection = yield self.setUpSSHD()
        local = self.share("s", {"f.txt": b"again"})
        mountPoint = os.path.join(self.base, "re")
        mount = self.remoteMount(connection, [local], mountPoint)
        yield mount.mount()
        connection.transport.transport.loseConnection()
        second = yield connect(self, self.sshd)
        path = yield mount.remount(second)
        self.assertEqual(path, mountPoint)
        data = yield inThread(readFile, os.path.join(mountPoint, "f.txt"))
        self.assertEqual(data, b"again")
        yield mount.unmount()
        self.assertFalse(os.path.exists(mountPoint))


class ForwardedMountTests(MountTestsMixin, unittest.TestCase):
    """
    C{--via socket} and C{--via raw-tcp}: sshfs reaches a raw SFTP endpoint
    through a forward of the connection.
    """

    timeout = 60

    @defer.inlineCallbacks
    def mountReadWrite(self, via: str) -> Any:
        connection = yield self.setUpSSHD()
        local = self.share("s", {"f.txt": b"through a forward"})
        mountPoint = os.path.join(self.base, f"via {via}")
        mount = self.remoteMount(connection, [local], mountPoint, via=via)
        path = yield mount.mount()
        self.assertEqual(path, mountPoint)
        listener = mount.listener
        if mount._sessionKey is not None:
            self.sessionKeyDirectory = mount._sessionKey.directory
        data = yield inThread(readFile, os.path.join(mountPoint, "f.txt"))
        self.assertEqual(data, b"through a forward")
        written = os.urandom(1024 * 1024)
        yield inThread(writeFile, os.path.join(mountPoint, "new.bin"), written)
        self.assertEqual(sha256File(os.path.join(local, "new.bin")), sha256(written))
        yield mount.unmount()
        self.assertFalse(isMounted(mountPoint))
        self.assertFalse(os.path.exists(mountPoint))
        self.assertEqual([e["event"] for e in self.events], ["mounted", "unmounted"])
        self.assertEqual(connection.listeners, [])
        return listener

    @defer.inlineCallbacks
    def test_socket(self) -> Any:
        """
        The mount works through an owner-only Unix socket forward; unmounting
        cancels the forward and removes the socket and its directory.
        """
        listener = yield self.mountReadWrite("socket")
        self.assertTrue(listener.socketPath)
        self.assertFalse(os.path.lexists(listener.socketPath))
        self.assertFalse(os.path.lexists(os.path.dirname(listener.socketPath)))

    @defer.inlineCallbacks
    def test_ssh(self) -> Any:
        """
        X2Go's way: the mount works through a TCP forward to the nested SSH
        server with a session key; unmounting closes the port and removes
        the session key files.
        """
        import socket

        listener = yield self.mountReadWrite("ssh")
        self.assertGreater(listener.port, 0)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", listener.port)), 0)
        self.assertTrue(self.sessionKeyDirectory.startswith("/"))
        self.assertFalse(os.path.lexists(self.sessionKeyDirectory))

    @defer.inlineCallbacks
    def test_rawTcp(self) -> Any:
        """
        The mount works through a loopback TCP forward (sshfs -o
        directport); unmounting closes the remote port.
        """
        import socket

        listener = yield self.mountReadWrite("raw-tcp")
        self.assertGreater(listener.port, 0)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", listener.port)), 0)


class RemoteToolsTests(MountTestsMixin, unittest.TestCase):
    """
    A remote host without sshfs, or whose sshfs never answers: one clear
    sentence, nothing left behind.
    """

    timeout = 30

    def pathWithout(self, tool: str, replacement: str | None = None) -> str:
        """
        A directory with every command of this machine but C{tool}, for the
        remote sshd's PATH; C{replacement} is a shell script put in its
        place.
        """
        binDir = os.path.abspath(self.mktemp())
        os.makedirs(binDir)
        for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                target = os.path.join(binDir, name)
                if name != tool and not os.path.lexists(target):
                    os.symlink(os.path.join(directory, name), target)
        if replacement is not None:
            path = os.path.join(binDir, tool)
            writeFile(path, replacement.encode())
            os.chmod(path, 0o755)
        return binDir

    @defer.inlineCallbacks
    def test_noSSHFS(self) -> Any:
        """
        With sshfs missing from the remote PATH, mount fails with
        L{MountFailed} naming sshfs and how to install it, and creates no
        mount point.
        """
        binDir = self.pathWithout("sshfs")
        connection = yield self.setUpSSHD([f"SetEnv PATH={binDir}"])
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "never")
        mount = self.remoteMount(connection, [local], mountPoint)
        failure = yield self.assertFailure(mount.mount(), MountFailed)
        self.assertEqual(
            str(failure), "the remote host has no sshfs: install it (apt-get install sshfs)"
        )
        self.assertEqual(failure.exitCode, 7)
        self.assertFalse(os.path.exists(mountPoint))
        self.assertEqual(self.events, [])

    @defer.inlineCallbacks
    def test_noSocat(self) -> Any:
        """
        C{--via socket} needs socat on the remote host: without it, one
        sentence saying so, and no forward is left.
        """
        binDir = self.pathWithout("socat")
        connection = yield self.setUpSSHD([f"SetEnv PATH={binDir}"])
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "never")
        mount = self.remoteMount(connection, [local], mountPoint, via="socket")
        failure = yield self.assertFailure(mount.mount(), MountFailed)
        self.assertEqual(
            str(failure), "the remote host has no socat: install it (apt-get install socat)"
        )
        self.assertFalse(os.path.exists(mountPoint))
        self.assertEqual(connection.listeners, [])

    @defer.inlineCallbacks
    def test_mountNeverAnswers(self) -> Any:
        """
        An sshfs that never mounts: after the timeout, L{MountFailed} says
        so, the mount point is removed and sshfs's channel is closed.
        """
        # Claims -o passive, then just reads its stdin until it is closed.
        fake = '#!/bin/sh\ncase "$1" in --help) echo "-o passive";; *) exec cat >/dev/null;; esac\n'
        binDir = self.pathWithout("sshfs", fake)
        connection = yield self.setUpSSHD([f"SetEnv PATH={binDir}"])
        local = self.share("s", {})
        mountPoint = os.path.join(self.base, "slow")
        mount = self.remoteMount(connection, [local], mountPoint, mountTimeout=1.0)
        failure = yield self.assertFailure(mount.mount(), MountFailed)
        self.assertEqual(
            str(failure),
            f"the remote mount at {mountPoint} did not answer within 1 s",
        )
        self.assertFalse(os.path.exists(mountPoint))
        self.assertEqual(mount.state, "idle")
        self.assertEqual(self.events, [])
