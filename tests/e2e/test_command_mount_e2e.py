"""
End to end: C{conchshare mount} as a real process (C{--json}) against a
throwaway OpenSSH sshd on loopback.  The remote host is this machine, so the
remote mount point is a local path too, and what a user of the remote host
would see can be checked directly (through child processes with timeouts,
so a hung mount fails the test instead of hanging it).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.command import WAIT, Running, holdOpen
from tests.support.mounting import (
    _MountBase,
    forceUnmount,
    listRemote,
    readLocal,
    readRemote,
    remote,
    writeLocal,
    writeRemote,
)
from tests.support.workload import inMountTable, mountedPaths


class MountReconnectTests(_MountBase):
    def test_reconnectRemounts(self) -> None:
        """
        The sshd side of the connection killed: C{reconnecting}, then
        C{mounted} again at the same place, and the mount reads and writes
        again (one mount there, not a stale one beneath); SIGTERM unmounts,
        stops (exit 0) and removes the mount point it created.
        """
        at = os.path.join(self.tmp, "mnt")
        running = self.mount(at)
        self.assertEqual(running.event("mounted")["remote_path"], at)
        self.assertTrue(inMountTable(at))
        self.assertEqual(readRemote(os.path.join(at, "hello.txt")), "hello from the local side\n")

        self.sshd.killSessions()
        reconnecting = running.event("reconnecting")
        self.assertEqual(reconnecting["attempt"], 1)
        self.assertGreater(reconnecting["delay"], 0)
        self.assertTrue(reconnecting["reason"])
        self.assertEqual(running.event("mounted")["remote_path"], at)
        self.assertEqual(mountedPaths().count(at), 1)

        self.assertEqual(readRemote(os.path.join(at, "hello.txt")), "hello from the local side\n")
        writeRemote(os.path.join(at, "after reconnect.txt"), "written on the remote side\n")
        self.assertEqual(
            readLocal(os.path.join(self.share, "after reconnect.txt")),
            "written on the remote side\n",
        )
        writeLocal(os.path.join(self.share, "new.txt"), "new on the local side\n")
        self.assertIn("new.txt", listRemote(at))

        self.stopped(running, at)
        self.assertFalse(inMountTable(at))
        self.assertFalse(os.path.exists(at))
        self.assertEqual(
            readLocal(os.path.join(self.share, "after reconnect.txt")),
            "written on the remote side\n",
        )


class MountBusyTests(_MountBase):
    def test_stopWhileAFileIsOpen(self) -> None:
        """
        A remote process holds a file on the mount open: SIGTERM still
        stops cleanly (exit 0), the C{unmounted} event says the mount was
        detached lazily, and once the holder is gone nothing is mounted
        there any more.
        """
        at = os.path.join(self.tmp, "busy")
        running = self.mount(at)
        running.event("mounted")
        holder = holdOpen(self, os.path.join(at, "hello.txt"))

        unmounted = self.stopped(running, at)
        self.assertIs(unmounted.get("lazy"), True, unmounted)
        self.assertIn("lazily", unmounted["message"])
        self.assertFalse(inMountTable(at))
        self.assertIsNone(holder.poll())
        holder.kill()
        holder.wait(WAIT)
        self.assertFalse(inMountTable(at))
        self.assertNotEqual(remote("mountpoint", "-q", "--", at).returncode, 0)
        self.assertFalse(os.path.exists(at))


#: A remote program: open a file, write "foo", unlink it (then check that
#: its name is gone, as sshfs's own test_open_unlink does), write "bar",
#: read it back from the start; N times.  Prints how many times something
#: was wrong (a read other than "foobar") and the first.
UNLINKED_LOOP = """
import errno, os, sys
path, count = sys.argv[1], int(sys.argv[2])
stale = []
for n in range(count):
    with open(path, "wb+", buffering=0) as f:
        f.write(b"foo")
        os.unlink(path)
        try:
            os.stat(path)
        except FileNotFoundError:
            pass
        else:
            stale.append("still there")
        if os.path.basename(path) in os.listdir(os.path.dirname(path)):
            stale.append("still listed")
        f.write(b"bar")
        f.seek(0)
        data = f.read()
    if data != b"foobar":
        stale.append(data)
print(len(stale), stale[:1])
"""


class MountOrderTests(_MountBase):
    def test_unlinkedWhileOpen(self) -> None:
        """
        A file unlinked while open (sshfs renames it to C{.fuse_hidden...},
        then sends a WRITE on its handle and an LSTAT of the new name
        together) reads back everything written to it, every time: 500
        times open, write "foo", unlink, write "bar", seek 0, read.  (Before
        requests were ordered per connection, 35 to 51 reads of 500 were
        stale.)
        """
        at = os.path.join(self.tmp, "mnt")
        running = self.mount(at)
        running.event("mounted")
        result = subprocess.run(
            [sys.executable, "-c", UNLINKED_LOOP, os.path.join(at, "unlinked"), "500"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10 * WAIT,
        )
        self.assertEqual((result.returncode, result.stdout), (0, "0 []\n"), result.stderr)
        self.stopped(running, at)


#: What a user is told when the remote host has no sshfs.
NO_SSHFS = "The remote host has no sshfs: install it (apt-get install sshfs)."


class NoSSHFSTests(_MountBase):
    def configure(self) -> list[str]:
        """
        The remote sshd's PATH: every command of this machine but sshfs.
        """
        binDir = os.path.join(self.tmp, "bin")
        os.mkdir(binDir)
        for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                target = os.path.join(binDir, name)
                if name != "sshfs" and not os.path.lexists(target):
                    os.symlink(os.path.join(directory, name), target)
        return [f"SetEnv PATH={binDir}"]

    def test_noSSHFS(self) -> None:
        """
        No sshfs on the remote host: exit 7 and one sentence saying so on
        stderr (no traceback); with C{--json} the same sentence as an
        C{error} event; no mount point (nor its parent) is created.
        """
        at = os.path.join(self.tmp, "parent", "never")
        self.addCleanup(forceUnmount, at)
        result = subprocess.run(
            [sys.executable, "-m", "conchshare", *self.mountArgs(at, json_=False)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 7, (result.stdout, result.stderr))
        self.assertEqual(result.stderr, NO_SSHFS + "\n")
        self.assertFalse(os.path.lexists(os.path.dirname(at)))
        self.assertFalse(os.path.lexists(self.control))

        running = Running(self, self.mountArgs(at))
        self.assertEqual(running.event("error")["message"], NO_SSHFS)
        running.event("stopped")
        self.assertEqual(running.wait(), 7)
        self.assertNotIn("mounted", [e["event"] for e in running.events])
        self.assertNotIn("Traceback", running.stderr)
        self.assertFalse(os.path.lexists(os.path.dirname(at)))


class AwkwardPathTests(_MountBase):
    def test_spacesAndQuotes(self) -> None:
        """
        Spaces, quotes and shell metacharacters in C{--at} and in the shared
        folders' names: with one share its contents appear at the mount
        point; the mount point is created and removed again, its parent is
        left alone.
        """
        parent = os.path.join(self.tmp, 'it\'s "a" $HOME `x`')
        os.mkdir(parent)
        at = os.path.join(parent, "mnt dir; rm -rf ü")
        folder = os.path.join(self.tmp, 'my "quoted" folder\'s $(docs)')
        os.mkdir(folder)
        writeLocal(os.path.join(folder, "a file.txt"), "awkward\n")
        running = self.mount(at, folder)
        self.assertEqual(running.event("mounted")["remote_path"], at)
        self.assertEqual(listRemote(at), ["a file.txt"])
        self.assertEqual(readRemote(os.path.join(at, "a file.txt")), "awkward\n")
        writeRemote(os.path.join(at, "it's new.txt"), "from remote\n")
        self.assertEqual(readLocal(os.path.join(folder, "it's new.txt")), "from remote\n")
        self.stopped(running, at)
        self.assertFalse(inMountTable(at))
        self.assertFalse(os.path.exists(at))
        self.assertEqual(os.listdir(parent), [])

    def test_severalSharesWithAwkwardNames(self) -> None:
        """
        With several shares, the mount point shows one folder per share,
        named as given (a folder's own name, or NAME=), quotes and spaces
        included.
        """
        at = os.path.join(self.tmp, "two 'shares'")
        folder = os.path.join(self.tmp, 'say "cheese"')
        os.mkdir(folder)
        writeLocal(os.path.join(folder, "c.txt"), "cheese\n")
        running = self.mount(at, folder, f"it's mine={self.share}")
        self.assertEqual(running.event("mounted")["remote_path"], at)
        self.assertEqual(listRemote(at), ["it's mine", 'say "cheese"'])
        self.assertEqual(readRemote(os.path.join(at, 'say "cheese"', "c.txt")), "cheese\n")
        self.assertEqual(
            readRemote(os.path.join(at, "it's mine", "hello.txt")), "hello from the local side\n"
        )
        self.stopped(running, at)
        self.assertFalse(os.path.exists(at))
