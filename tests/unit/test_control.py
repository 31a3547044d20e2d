"""
Tests for L{conchshare.control}: the control socket and C{conchshare ctl}.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from conchshare.control import (
    ControlError,
    ControlService,
    chooseControlPath,
    ctlMain,
    defaultControlDirectory,
    defaultControlPath,
    findControlSocket,
    request,
)


class Target:
    """
    A controllable thing that counts what it was asked (the same methods as
    L{conchshare.service.ShareService}).
    """

    def __init__(self) -> None:
        self.pausedNow = False
        self.channels = 3

    def pause(self) -> int:
        self.pausedNow = True
        return self.channels

    def resume(self) -> int:
        self.pausedNow = False
        return self.channels

    def status(self) -> dict[str, Any]:
        return {
            "state": "forwarding",
            "paused": self.pausedNow,
            "channels": self.channels,
            "bytes_in": 10,
            "bytes_out": 20,
            "listeners": [{"mode": "raw", "address": "127.0.0.1", "port": 4321}],
        }


def shortDir(testCase: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="cs-", dir="/tmp")
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


class DefaultPathTests(SynchronousTestCase):
    def test_xdgRuntimeDir(self) -> None:
        runtime = shortDir(self)
        path = defaultControlPath(123, {"XDG_RUNTIME_DIR": runtime})
        self.assertEqual(path, os.path.join(runtime, "conchshare", "123.sock"))

    def test_withoutXdg(self) -> None:
        self.assertEqual(
            defaultControlDirectory({}), os.path.join("/tmp", f"conchshare-{os.getuid()}")
        )


#: A user id that is not ours, for directories another local user made.
STRANGER = 4242


class ControlDirectoryTests(SynchronousTestCase):
    """
    Without C{XDG_RUNTIME_DIR}, what another local user puts at
    C{/tmp/conchshare-UID} first cannot stop conchshare from starting, nor
    make C{ctl} talk to someone else's socket.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise SkipTest("making a directory of another user needs root")
        self.tmp = shortDir(self)
        self.home = os.path.join(shortDir(self), "home")
        os.mkdir(self.home)
        self.environ = {"HOME": self.home}
        self.uid = os.getuid()
        self.usual = os.path.join(self.tmp, f"conchshare-{self.uid}")
        self.cache = os.path.join(self.home, ".cache", "conchshare")

    def choose(self) -> str:
        return chooseControlPath(77, self.environ, tmp=self.tmp, uid=self.uid)

    def assertPrivate(self, path: str) -> None:
        info = os.lstat(path)
        self.assertTrue(stat.S_ISDIR(info.st_mode))
        self.assertEqual((info.st_uid, stat.S_IMODE(info.st_mode)), (self.uid, 0o700))

    def test_usualPlace(self) -> None:
        self.assertEqual(self.choose(), os.path.join(self.usual, "77.sock"))
        self.assertPrivate(self.usual)

    def test_strangersDirectory(self) -> None:
        """
        A directory another user made: skipped (left alone) for
        C{$HOME/.cache/conchshare}, made 0700.
        """
        os.mkdir(self.usual, 0o700)
        os.chown(self.usual, STRANGER, STRANGER)
        self.assertEqual(self.choose(), os.path.join(self.cache, "77.sock"))
        self.assertPrivate(self.cache)
        self.assertEqual(os.lstat(self.usual).st_uid, STRANGER)

    def test_symlink(self) -> None:
        """
        A symlink, even to a private directory of ours: skipped.
        """
        target = shortDir(self)
        os.chmod(target, 0o700)
        os.symlink(target, self.usual)
        self.assertEqual(self.choose(), os.path.join(self.cache, "77.sock"))

    def test_openDirectory(self) -> None:
        """
        Our own directory, open to others (0777): skipped, not repaired
        (another user may have put a socket in it).
        """
        os.mkdir(self.usual)
        os.chmod(self.usual, 0o777)
        self.assertEqual(self.choose(), os.path.join(self.cache, "77.sock"))
        self.assertEqual(stat.S_IMODE(os.lstat(self.usual).st_mode), 0o777)

    def test_freshTemporaryDirectory(self) -> None:
        """
        No usable place (the cache cannot be made, or its socket path would
        be too long): a fresh private temporary directory.
        """
        os.mkdir(self.usual, 0o700)
        os.chown(self.usual, STRANGER, STRANGER)
        for home in [os.path.join(self.home, "x" * 100), os.path.join(self.home, "file")]:
            self.environ["HOME"] = home
            if home.endswith("file"):
                open(home, "w").close()
            path = self.choose()
            directory = os.path.dirname(path)
            self.assertEqual(os.path.basename(path), "77.sock")
            self.assertEqual(os.path.dirname(directory), self.tmp)
            self.assertTrue(os.path.basename(directory).startswith(f"conchshare-{self.uid}-"))
            self.assertPrivate(directory)

    def test_ctlSkipsStrangers(self) -> None:
        """
        C{ctl} searches the same places in the same order and never uses a
        socket in a directory that fails the check.
        """
        os.mkdir(self.usual, 0o700)
        with socket.socket(socket.AF_UNIX) as planted, socket.socket(socket.AF_UNIX) as ours:
            planted.bind(os.path.join(self.usual, "1.sock"))
            planted.listen()
            os.chown(self.usual, STRANGER, STRANGER)
            self.assertRaises(
                ControlError, findControlSocket, self.environ, tmp=self.tmp, uid=self.uid
            )
            path = self.choose()
            ours.bind(path)
            ours.listen()
            found = findControlSocket(self.environ, tmp=self.tmp, uid=self.uid)
            self.assertEqual(found, path)


class ControlServiceTests(TestCase):
    def setUp(self) -> None:
        self.directory = shortDir(self)
        self.path = os.path.join(self.directory, "ctl.sock")
        self.target = Target()
        self.service = ControlService(self.target, self.path, reactor=reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    async def test_requests(self) -> None:
        """
        pause, resume and status over the socket act on the target and answer
        one JSON object each.
        """
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        reply = await deferToThread(request, self.path, "pause")
        self.assertEqual(reply, {"ok": True, "command": "pause", "channels": 3})
        self.assertTrue(self.target.pausedNow)
        reply = await deferToThread(request, self.path, "status")
        self.assertEqual(reply["status"]["paused"], True)
        self.assertEqual(reply["status"]["listeners"][0]["port"], 4321)
        reply = await deferToThread(request, self.path, "resume")
        self.assertEqual(reply["channels"], 3)
        self.assertFalse(self.target.pausedNow)

    async def test_unknownAndPlainWords(self) -> None:
        """
        A bare word works like the JSON form; an unknown command or bad JSON
        gets C{ok: false} and a sentence, and the connection stays usable.
        """

        def talk() -> list[dict[str, Any]]:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(self.path)
                s.sendall(b'status\n{"command": "explode"}\n{nope\n')
                data = b""
                while data.count(b"\n") < 3:
                    data += s.recv(4096)
            return [json.loads(line) for line in data.splitlines()]

        replies = await deferToThread(talk)
        self.assertEqual(replies[0]["status"]["state"], "forwarding")
        self.assertEqual(replies[1]["ok"], False)
        self.assertIn("Unknown command", replies[1]["error"])
        self.assertEqual(replies[2], {"ok": False, "error": "The request is not valid JSON."})

    async def test_ctlMain(self) -> None:
        """
        C{conchshare ctl} prints a sentence (or C{--json} the reply) and
        exits 0; an unreachable socket: one sentence, exit 1.
        """
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(ctlMain, ["--control", self.path, "pause"], out, err)
        self.assertEqual((code, out.getvalue(), err.getvalue()), (0, "Paused (3 channels).\n", ""))
        out = io.StringIO()
        code = await deferToThread(ctlMain, ["--control", self.path, "--json", "status"], out, err)
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out.getvalue())["status"]["channels"], 3)
        out = io.StringIO()
        code = await deferToThread(ctlMain, ["--control", self.path, "status"], out, err)
        self.assertIn("127.0.0.1:4321", out.getvalue())
        self.assertIn("PAUSED", out.getvalue())
        missing = os.path.join(self.directory, "nothing.sock")
        err = io.StringIO()
        code = await deferToThread(ctlMain, ["--control", missing, "status"], io.StringIO(), err)
        self.assertEqual(code, 1)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        self.assertIn(missing, err.getvalue())

    async def test_stopRemovesSocket(self) -> None:
        await self.service.stopService()
        self.assertFalse(os.path.exists(self.path))

    def test_secondListenerRefused(self) -> None:
        """
        A second service on a live socket path is refused; a stale socket
        file (nobody listening) is replaced.
        """
        other = ControlService(Target(), self.path, reactor=reactor)
        self.assertRaises(ControlError, other.listen)


class LongPathTests(SynchronousTestCase):
    def test_tooLong(self) -> None:
        """
        A control socket path too long for a Unix socket: listening and
        C{ctl} both fail with a sentence that says so and names the path.
        """
        path = os.path.join(shortDir(self), "x" * 110, "ctl.sock")
        error = self.assertRaises(ControlError, ControlService(Target(), path).listen)
        self.assertIn("longer than 107 bytes", str(error))
        self.assertIn(path, str(error))
        self.assertFalse(os.path.exists(os.path.dirname(path)))
        err = io.StringIO()
        self.assertEqual(ctlMain(["--control", path, "status"], io.StringIO(), err), 1)
        self.assertIn("longer than 107 bytes", err.getvalue())


class StaleSocketTests(TestCase):
    async def test_stale(self) -> None:
        directory = shortDir(self)
        path = os.path.join(directory, "ctl.sock")
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)  # bound, never listening: stale
        service = ControlService(Target(), path, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        reply = await deferToThread(request, path, "status")
        self.assertTrue(reply["ok"])


class FindControlSocketTests(TestCase):
    async def test_findOne(self) -> None:
        """
        Without C{--control}, ctl finds the one live socket in the default
        directory; none or several: a sentence saying so.
        """
        runtime = shortDir(self)
        environ = {"XDG_RUNTIME_DIR": runtime}
        tmp = shortDir(self)
        self.assertRaises(ControlError, findControlSocket, environ, tmp=tmp)
        first = ControlService(Target(), defaultControlPath(1, environ), reactor=reactor)
        first.startService()
        self.addCleanup(first.stopService)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(first.path)).st_mode), 0o700)
        found = await deferToThread(findControlSocket, environ, tmp=tmp)
        self.assertEqual(found, first.path)
        second = ControlService(Target(), defaultControlPath(2, environ), reactor=reactor)
        second.startService()
        self.addCleanup(second.stopService)
        error = await deferToThread(
            lambda: self.assertRaises(ControlError, findControlSocket, environ, tmp=tmp)
        )
        self.assertIn("--control", str(error))


class CtlUsageTests(SynchronousTestCase):
    def test_badCommand(self) -> None:
        err = io.StringIO()
        self.assertEqual(ctlMain(["explode"], io.StringIO(), err), 2)
        self.assertEqual(len(err.getvalue().splitlines()), 1)
