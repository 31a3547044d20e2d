"""
Tests for what runs where: name lookups in workers, copy-data in steps, a
stop with calls in flight (end to end, with OpenSSH's C{sftp} and a real
stop, in L{tests.e2e.test_runtime}).  Each holds a call in a blocking fake (a real
implementation that waits for the test) so that what must not wait for it
is seen not to, every time.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from conchshare.sftp import avatar as avatarModule
from conchshare.sftp.avatar import MAX_NAME_LOOKUPS, ShareSFTPServer
from conchshare.sftp.engine import OrderedEngine
from conchshare.sftp.workers import Workers
from conchshare.shares import ShareSet
from tests.support.harness import Harness
from tests.support.sharetree import makeTree, read, write
from tests.support.wire import extended, packets, request, s, u32, u64, usersGroups

READ, WRITE, CREAT = 1, 2, 8
NO_ATTRS = u32(0)


#: Seconds any single wait of a test may take.
WAIT = 10.0


def handleOf(reply: bytes) -> bytes:
    """
    The handle of a HANDLE reply.
    """
    assert reply[4] == 102, reply
    (length,) = struct.unpack(">I", reply[9:13])
    return reply[13 : 13 + length]


def statusCode(reply: bytes) -> int:
    """
    The code of a STATUS reply.
    """
    assert reply[4] == 101, reply
    return int(struct.unpack(">I", reply[9:13])[0])


def requestId(reply: bytes) -> int:
    return int(struct.unpack(">I", reply[5:9])[0])


async def within(waiting: Deferred[Any], what: str) -> Any:
    """
    The result of C{waiting}, which the reactor keeps running for; fails
    after ten seconds.
    """
    try:
        return await waiting.addTimeout(WAIT, reactor)
    except TimeoutError:
        raise AssertionError(f"Timed out waiting for {what}")


async def entered(event: threading.Event, what: str) -> None:
    """
    Let the reactor run until a worker sets C{event} (a held call entered);
    fails after ten seconds.
    """
    if not await within(deferToThread(event.wait, WAIT), what):
        raise AssertionError(f"Timed out waiting for {what}")


class Client:
    """
    One SFTP connection (a core on the avatar) and the replies it got.
    """

    def __init__(self, avatar: ShareSFTPServer) -> None:
        self.harness = Harness(avatar)
        self.harness.init()
        self.replies: dict[int, bytes] = {}

    def send(self, data: bytes) -> None:
        self.harness.feed(data)

    def collect(self) -> dict[int, bytes]:
        for reply in packets(self.harness.take()):
            self.replies[requestId(reply)] = reply
        return self.replies

    async def reply(self, rid: int) -> bytes:
        """
        The reply to request C{rid}, once the core has written it (the
        reactor runs meanwhile).
        """
        while rid not in self.collect():
            await within(self.harness.whenWritten(), f"reply {rid}")
        return self.replies[rid]


class HeldLookup:
    """
    A name lookup (uid or gid to name) that waits until released: the
    blocking fake of a slow name service.  Called in the reactor thread,
    it does not wait (that would hang the test) but records it.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.inReactorThread = 0

    def __call__(self, number: int) -> bytes:
        if threading.current_thread() is threading.main_thread():
            self.inReactorThread += 1
            return b"inline%d" % number
        self.entered.set()
        self.released.wait(10)
        return b"name%d" % number


class _Base(TestCase):
    def setUp(self) -> None:
        self.base = os.path.realpath(self.mktemp())
        makeTree(self.base)
        self.shares = ShareSet.fromSpecs(["one", "two"], cwd=self.base)
        self.lookup = HeldLookup()
        self.addCleanup(self.lookup.released.set)

    def avatar(self, threads: int = 2, ring: bool = True) -> ShareSFTPServer:
        avatar = ShareSFTPServer(
            self.shares,
            reactor=reactor,
            threads=threads,
            ring=ring,
            lookUpUser=self.lookup,
            lookUpGroup=self.lookup,
        )
        assert isinstance(avatar.engine, Workers)
        self.addCleanup(avatar.engine.stop)
        return avatar


class NameLookupTests(_Base):
    """
    users-groups-by-id@openssh.com looks names up in a worker: a slow name
    service (LDAP, NIS) holds up no other request.
    """

    async def _otherConnectionAnswered(self) -> None:
        avatar = self.avatar()
        slow, other = Client(avatar.forConnection()), Client(avatar.forConnection())
        slow.send(usersGroups(1, [1000, 1001], [1000]))
        other.send(request(17, 2, s(b"/one/f")))  # STAT
        stat = await other.reply(2)
        self.assertEqual(stat[4], 105)  # ATTRS
        self.assertEqual(self.lookup.inReactorThread, 0)
        self.assertEqual(slow.collect(), {})  # nothing yet
        await entered(self.lookup.entered, "the lookup")
        self.lookup.released.set()
        names = await slow.reply(1)
        self.assertEqual(
            names[9:],
            s(s(b"name1000") + s(b"name1001")) + s(s(b"name1000")),
        )

    def test_otherConnectionAnswered(self) -> Deferred[None]:
        """
        While a lookup is held, another connection's STAT is answered; the
        names come once the lookup ends.
        """
        return Deferred.fromCoroutine(self._otherConnectionAnswered())


class NameLookupLimitTests(SynchronousTestCase):
    def test_firstIdsOnly(self) -> None:
        """
        Past the first L{MAX_NAME_LOOKUPS} ids of a list, names are empty
        without a lookup.
        """
        looked: list[int] = []

        def lookUp(number: int) -> bytes:
            looked.append(number)
            return b"n%d" % number

        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "one"))
        avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["one"], cwd=base),
            engine=OrderedEngine(),
            lookUpUser=lookUp,
            lookUpGroup=lookUp,
        )
        count = MAX_NAME_LOOKUPS + 500
        users, groups = self.successResultOf(avatar.usersGroupsById(list(range(count)), [7, 8]))
        self.assertEqual(MAX_NAME_LOOKUPS, 1024)
        self.assertEqual(len(users), count)
        self.assertEqual(users[:MAX_NAME_LOOKUPS], [b"n%d" % i for i in range(MAX_NAME_LOOKUPS)])
        self.assertEqual(users[MAX_NAME_LOOKUPS:], [b""] * 500)
        self.assertEqual(groups, [b"n7", b"n8"])
        self.assertEqual(len(looked), MAX_NAME_LOOKUPS + 2)


class StopTests(_Base):
    """
    A stop of the workers (the reactor's shutdown) with calls in flight:
    they end and are answered, later requests too, and the files are
    closed; nothing is logged as an error.
    """

    async def _stopWithCallsInFlight(self) -> None:
        avatar = self.avatar()
        assert isinstance(avatar.engine, Workers)
        client = Client(avatar)
        client.send(request(3, 1, s(b"/one/new") + u32(WRITE | CREAT) + NO_ATTRS))
        client.send(request(3, 2, s(b"/one/f") + u32(READ) + NO_ATTRS))
        written, kept = handleOf(await client.reply(1)), handleOf(await client.reply(2))
        client.send(usersGroups(3, [0], []))
        await entered(self.lookup.entered, "the held call")
        avatar.engine.stop()
        client.send(request(6, 4, s(written) + u64(0) + s(b"data")))  # WRITE
        client.send(request(4, 5, s(written)))  # CLOSE
        client.send(request(5, 6, s(kept) + u64(0) + u32(100)))  # READ
        self.lookup.released.set()
        for rid in (4, 5):
            self.assertEqual(statusCode(await client.reply(rid)), 0)
        self.assertEqual((await client.reply(6))[4], 103)  # DATA
        self.assertEqual((await client.reply(3))[4], 201)
        await client.harness.core.connectionLost()  # closes the READ handle
        self.assertEqual(read(os.path.join(self.base, "one", "new")), b"data")

    def test_stopWithCallsInFlight(self) -> Deferred[None]:
        """
        Requests made after the stop, while a call is held in a worker, are
        answered with success once it ends; the connection's end closes
        the files left open.
        """
        return Deferred.fromCoroutine(self._stopWithCallsInFlight())


class HeldCopy:
    """
    The filesystem's copy-data, each step held until the test releases
    it: the first step by C{first}, the others by C{rest}.
    """

    def __init__(self, copy: Callable[..., int]) -> None:
        self.copy = copy
        self.first = threading.Event()
        self.rest = threading.Event()
        self.entered: list[int] = []
        self.started = threading.Event()
        self.copied: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.append(len(self.entered))
        self.started.set()
        (self.rest if len(self.entered) > 1 else self.first).wait(10)
        result = self.copy(*args, **kwargs)
        self.copied.append(result if result is not None else -1)
        return result


class CopyDataTests(_Base):
    """
    copy-data runs in steps of at most L{avatarModule.COPY_STEP} bytes:
    other connections' calls run between them, and later requests on the
    destination wait for the last one.
    """

    async def _otherCallsBetweenSteps(self) -> None:
        self.patch(avatarModule, "COPY_STEP", 64 * 1024)
        source = os.urandom(3 * 64 * 1024 + 100)
        write(os.path.join(self.base, "one", "source"), source)
        # Every worker busy copying; the STAT goes to a worker too (not
        # answered from the kernel's caches, nor by io_uring).
        avatar = self.avatar(threads=1, ring=False)
        assert isinstance(avatar.engine, Workers)
        avatar.engine.inlineReads = False
        held = HeldCopy(avatar.filesystem.copyData)
        self.addCleanup(held.rest.set)
        self.addCleanup(held.first.set)
        avatar.filesystem.copyData = held  # type: ignore[method-assign]
        copier, other = Client(avatar.forConnection()), Client(avatar.forConnection())
        copier.send(request(3, 1, s(b"/one/source") + u32(READ) + NO_ATTRS))
        copier.send(request(3, 2, s(b"/two/copy") + u32(WRITE | CREAT) + NO_ATTRS))
        sourceHandle, copyHandle = handleOf(await copier.reply(1)), handleOf(await copier.reply(2))
        copier.send(
            extended(3, b"copy-data", s(sourceHandle) + u64(0) + u64(0) + s(copyHandle) + u64(0))
        )
        await entered(held.started, "the first step")
        other.send(request(17, 4, s(b"/one/f")))  # STAT, waiting for the worker
        copier.send(request(6, 5, s(copyHandle) + u64(0) + s(b"ZZ")))  # after the copy
        held.first.set()
        stat = await other.reply(4)
        self.assertEqual(stat[4], 105)
        # The STAT ran after the first step, before the second ended.
        self.assertEqual(held.copied, [64 * 1024])
        self.assertEqual(sorted(copier.collect()), [1, 2])
        held.rest.set()
        self.assertEqual(statusCode(await copier.reply(3)), 0)
        self.assertEqual(statusCode(await copier.reply(5)), 0)
        self.assertEqual(held.copied, [64 * 1024] * 3 + [100])
        copier.send(request(4, 6, s(copyHandle)))
        self.assertEqual(statusCode(await copier.reply(6)), 0)
        self.assertEqual(read(os.path.join(self.base, "two", "copy")), b"ZZ" + source[2:])

    def test_otherCallsBetweenSteps(self) -> Deferred[None]:
        """
        With the only worker copying, another connection's STAT runs after
        the copy's first step, before its next; a WRITE on the destination
        made meanwhile applies after the last step.
        """
        return Deferred.fromCoroutine(self._otherCallsBetweenSteps())


class CopyDataStepsTests(SynchronousTestCase):
    def test_stepsOfAtMostEightMiB(self) -> None:
        """
        A copy of 20 MiB (to the end, and by length) is made in calls of
        8 MiB at most, with a runner that answers at once (no recursion).
        """
        self.assertEqual(avatarModule.COPY_STEP, 8 * 1024 * 1024)
        base = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(base, "one"))
        data = os.urandom(1024) * (20 * 1024)
        write(os.path.join(base, "one", "source"), data)
        avatar = ShareSFTPServer(ShareSet.fromSpecs(["one"], cwd=base), engine=OrderedEngine())
        held = HeldCopy(avatar.filesystem.copyData)
        held.first.set()
        held.rest.set()
        avatar.filesystem.copyData = held  # type: ignore[method-assign]
        source = self.successResultOf(avatar.openFile(b"/one/source", READ, {}))
        copy = self.successResultOf(avatar.openFile(b"/one/copy", WRITE | CREAT, {}))
        self.successResultOf(avatar.copyData(source, 0, 0, copy, 0))
        step = 8 * 1024 * 1024
        self.assertEqual(held.copied, [step, step, 4 * 1024 * 1024])
        del held.copied[:]
        self.successResultOf(avatar.copyData(source, 1, 2 * step, copy, 1))
        self.assertEqual(held.copied, [step, step])
        self.successResultOf(copy.close())
        self.successResultOf(source.close())
        self.assertEqual(read(os.path.join(base, "one", "copy")), data)


class DirectoryCloseTests(SynchronousTestCase):
    """
    A directory's descriptor is closed in the reactor thread only if it is
    of a local filesystem (opened there from the kernel's caches, or found
    local by the worker that opened it): another filesystem's close may
    wait for its server.
    """

    def _openedInWorker(self, local: bool) -> tuple[Any, Any, Deferred[None]]:
        from conchshare.fs import syscalls
        from tests.support.engines import ManualRunner

        memory = syscalls.systemCalls().memory
        if memory is None:
            raise SkipTest("no openat2 here: nothing is opened from the kernel's caches")
        self.patch(memory, "isLocal", lambda fd: local)
        base = os.path.realpath(self.mktemp())
        makeTree(base)
        runner = ManualRunner()
        avatar = ShareSFTPServer(
            ShareSet.fromSpecs(["one"], cwd=base), engine=OrderedEngine(runner, inlineReads=True)
        )
        # Through a symlink: not from the kernel's caches, by a worker.
        opened = avatar.openDirectory(b"/one/in_rel")
        assert isinstance(opened, Deferred)
        runner.runNext()
        directory = self.successResultOf(opened)
        return runner, directory, directory.close()

    def test_openedInWorkerElsewhereClosedInWorker(self) -> None:
        """
        A directory a worker opened on a filesystem that is not local
        (CIFS, NFS: closing may wait for the server) is closed by a worker.
        """
        runner, directory, closed = self._openedInWorker(local=False)
        self.assertNoResult(closed)
        self.assertEqual(len(runner.calls), 1)
        runner.runNext()
        self.assertIsNone(self.successResultOf(closed))
        self.assertIsNone(directory.confined.directory._fd)

    def test_openedInWorkerLocalClosedAtOnce(self) -> None:
        """
        A directory a worker opened on a local filesystem is closed at once
        (no round trip to a worker for each directory sshfs lists).
        """
        runner, directory, closed = self._openedInWorker(local=True)
        self.assertIsNone(self.successResultOf(closed))
        self.assertEqual(runner.calls, [])
        self.assertIsNone(directory.confined.directory._fd)


class IdentityFileTests(TestCase):
    """
    Identity files are read in a thread: a home directory that makes reads
    wait (NFS) does not stop the reactor.
    """

    async def _readInThread(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from twisted.conch.ssh.connection import SSHConnection
        from twisted.conch.ssh.keys import Key

        from conchshare.tunnel import auth
        from conchshare.tunnel.sshconfig import ConnectOptions

        base = os.path.realpath(self.mktemp())
        os.makedirs(base)
        path = os.path.join(base, "id_ed25519")
        public = Key(Ed25519PrivateKey.generate()).public()
        write(path + ".pub", public.toString("openssh") + b"\n")
        reactorRan = threading.Event()
        inReactorThread: list[str] = []
        realLoad = auth._loadPublicKey

        def heldLoad(keyPath: str) -> Any:
            # The blocking fake of a slow read: it ends once the reactor ran.
            if threading.current_thread() is threading.main_thread():
                inReactorThread.append(keyPath)
            else:
                reactorRan.wait(10)
            return realLoad(keyPath)

        self.patch(auth, "_loadPublicKey", heldLoad)
        reactor.callLater(0, reactorRan.set)
        client = auth.ShareUserAuthClient(
            ConnectOptions(host="h.example", user="alice", identityFiles=[path], useAgent=False),
            SSHConnection(),
            reactor=reactor,
            terminal=lambda: False,
        )
        await client._prepare()
        self.assertEqual(inReactorThread, [])
        self.assertTrue(reactorRan.is_set())
        assert client._candidates is not None
        self.assertEqual([c.publicKey for c in client._candidates], [public])

    def test_readInThread(self) -> Deferred[None]:
        """
        While an identity file is read, the reactor runs.
        """
        return Deferred.fromCoroutine(self._readInThread())


class HostKeyQuestionTests(TestCase):
    """
    The question about an unknown host key, asked on the terminal, is asked
    in a thread: the reactor runs while a person answers (signals, the
    control socket).
    """

    async def _askedInThread(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from twisted.conch.ssh.keys import Key

        from conchshare.tunnel import auth
        from conchshare.tunnel.knownhosts import HostKeyVerifier
        from conchshare.tunnel.sshconfig import ConnectOptions

        base = os.path.realpath(self.mktemp())
        os.makedirs(base)
        knownHosts = os.path.join(base, "known_hosts")
        reactorRan = threading.Event()
        inReactorThread: list[str] = []

        def heldPrompt(text: str, echo: bool) -> str:
            # A person who answers once the reactor ran.
            if threading.current_thread() is threading.main_thread():
                inReactorThread.append(text)
            else:
                reactorRan.wait(10)
            return "yes"

        self.patch(auth, "terminalPrompt", heldPrompt)
        verifier = HostKeyVerifier(
            ConnectOptions(
                host="h.example",
                user="alice",
                userKnownHostsFiles=[knownHosts],
                strictHostKeyChecking="ask",
            ),
            terminal=lambda: True,
            reactor=reactor,
        )
        reactor.callLater(0, reactorRan.set)
        hostKey = Key(Ed25519PrivateKey.generate()).public()
        await verifier.verify("h.example", 22, hostKey)
        self.assertEqual(inReactorThread, [])
        self.assertTrue(reactorRan.is_set())
        self.assertIn(b"h.example ssh-ed25519 ", read(knownHosts))

    def test_askedInThread(self) -> Deferred[None]:
        """
        While the question waits for its answer, the reactor runs; the key
        accepted is recorded.
        """
        return Deferred.fromCoroutine(self._askedInThread())
