"""
End to end: C{conchshare share} and C{conchshare mount} as real processes
against a throwaway OpenSSH sshd on loopback (the remote host is this
machine, so the remote side's files and ports can be checked directly).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.support.command import (
    WAIT,
    RawSFTPClient,
    Running,
    _Base,
    fingerprint,
    printedSftp,
    rawSftp,
    shortTempDir,
    sshArgs,
    startRawSftp,
)
from tests.support.sshd import ThrowawaySSHD, portOpen, startForTest


class ShareCommandTests(_Base):
    def test_rawModeEndToEnd(self) -> None:
        """
        C{share --json --mode raw}: C{connected} (with the host key
        fingerprint) and C{forwarding} events; sftp through the forward reads
        the share; channel events; SIGTERM stops cleanly (C{stopped}, exit 0)
        and the remote port is closed afterwards.
        """
        running = self.share_("--mode", "raw")
        connected = running.event("connected")
        self.assertEqual(connected["host"], "127.0.0.1")
        self.assertEqual(connected["port"], self.sshd.port)
        self.assertEqual(connected["user"], self.sshd.user)
        self.assertEqual(connected["host_key"], fingerprint(self.sshd.hostKeyPath + ".pub"))
        self.assertTrue(connected["time"].endswith("Z"))
        forwarding = running.event("forwarding")
        self.assertEqual(forwarding["mode"], "raw")
        self.assertEqual(forwarding["address"], "127.0.0.1")
        port = forwarding["port"]
        self.assertGreater(port, 0)
        got = os.path.join(self.tmp, "got.txt")
        result = rawSftp(port, f"ls /\nget /docs/hello.txt {got}\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(got) as f:
            self.assertEqual(f.read(), "hello from the local side\n")
        opened = running.event("channel-opened")
        self.assertIn(str(port), opened["listener"])
        closed = running.event("channel-closed")
        self.assertEqual(closed["channel"], opened["channel"])
        self.assertGreater(closed["bytes_out"], len("hello from the local side\n"))
        running.signal(signal.SIGTERM)
        stopped = running.event("stopped")
        self.assertIn("SIGTERM", stopped["reason"])
        self.assertEqual(running.wait(), 0)
        self.assertFalse(portOpen(port))
        self.assertNotIn("Traceback", running.stderr)

    def test_shareFolderSwappedForSymlink(self) -> None:
        """
        A share folder renamed away and replaced by a symlink to C{/}:
        below that share C{sftp} finds nothing (not the root's files), the
        share is still listed, the other share is served, and one C{error}
        event says so however many requests fail; the process keeps
        running and stops cleanly.
        """
        other = os.path.join(self.tmp, "other")
        os.mkdir(other)
        with open(os.path.join(other, "o.txt"), "w") as f:
            f.write("other\n")
        args = ["share", *sshArgs(self.sshd), "--control", self.control, "--json"]
        args += ["--mode", "raw", self.sshd.destination(), self.share, other]
        running = Running(self, args)
        port = running.event("forwarding")["port"]
        result = rawSftp(port, "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        os.rename(self.share, self.share + "-away")
        os.symlink("/", self.share)
        # Past the share path's re-check interval (50 ms): the next request
        # checks it.
        time.sleep(0.2)
        got = os.path.join(self.tmp, "got.txt")
        for _ in range(2):
            result = rawSftp(port, "get /docs/etc/passwd " + got + "\n")
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("not found", result.stderr)
        self.assertFalse(os.path.exists(got))
        result = rawSftp(port, f"ls -1 /\nget /other/o.txt {got}\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("docs", result.stdout)
        with open(got) as f:
            self.assertEqual(f.read(), "other\n")
        error = running.event("error")
        self.assertIn("'docs' is no longer at", error["message"])
        self.assertIsNone(running.process.poll())
        running.signal(signal.SIGTERM)
        lines = running.rest()
        names = [json.loads(line)["event"] for line in lines]
        self.assertNotIn("error", names)
        self.assertEqual(names[-1], "stopped")
        self.assertEqual(running.wait(), 0)

    def limitedShare(self, limits: str, *extra: str) -> Running:
        """
        C{share --mode raw} started by a shell that ran C{ulimit} C{limits}.
        """
        args = ["share", *sshArgs(self.sshd), "--control", self.control, "--json"]
        args += ["--mode", "raw", *extra, self.sshd.destination(), self.share]
        command = ["/bin/sh", "-c", f'{limits} && exec "$0" "$@"', sys.executable]
        return Running(self, args, command=[*command, "-m", "conchshare"])

    def test_clientAtItsMaxCannotStarveOthers(self) -> None:
        """
        With 256 descriptors (soft and hard): one client that opens 300
        handles gets 96 (half the budget, 256 - 64), not every descriptor;
        another connection then opens 64 files, and limits@openssh.com
        announces 96.
        """
        running = self.limitedShare("ulimit -n 256")
        port = running.event("forwarding")["port"]
        greedy = RawSFTPClient(self, port)
        replies = greedy.openMany(b"/docs/hello.txt", 300)
        self.assertEqual(sum(r[0] == 102 for r in replies), 96)
        self.assertEqual(sum(b"Too many open handles" in r for r in replies), 300 - 96)
        other = RawSFTPClient(self, port)
        self.assertEqual(other.limits()[3], 96)
        replies = other.openMany(b"/docs/hello.txt", 64)
        self.assertEqual([r[0] for r in replies], [102] * 64)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        self.assertNotIn("Traceback", running.stderr)

    def test_fileLimitRaised(self) -> None:
        """
        The command raises its soft descriptor limit to the hard one (the
        budget: 1024 - 64, half per client, as limits@openssh.com says); a
        ProxyCommand runs with the limit the command started with.
        """
        seen = os.path.join(self.tmp, "proxy-limit")
        proxy = f"ulimit -S -n > {seen}; exec socat STDIO TCP:127.0.0.1:%p"
        running = self.limitedShare(
            "ulimit -S -n 256 && ulimit -H -n 1024", "-o", f"ProxyCommand={proxy}"
        )
        port = running.event("forwarding")["port"]
        self.assertEqual(RawSFTPClient(self, port).limits()[3], 480)
        with open(seen) as f:
            self.assertEqual(f.read().strip(), "256")
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)

    def test_sshModeSessionKey(self) -> None:
        """
        The default mode is C{ssh} with a session key: the C{session-key}
        event's C{sftp} command works as printed; stopping removes the key.
        """
        running = self.share_()
        forwarding = running.event("forwarding")
        self.assertEqual(forwarding["mode"], "ssh")
        event = running.event("session-key")
        self.assertTrue(os.path.exists(event["key"]))
        self.assertEqual(os.stat(event["key"]).st_mode & 0o777, 0o600)
        self.assertIn(str(forwarding["port"]), event["sshfs"])
        result = printedSftp(event["sftp"], "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        running.signal(signal.SIGINT)
        running.event("stopped")
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(event["key"]))
        self.assertFalse(os.path.exists(os.path.dirname(event["key"])))

    def test_noDependencyWarnings(self) -> None:
        """
        A session (connect, host key, session key, an sftp client through the
        nested SSH server, stop) shows no warning of a dependency on the
        terminal: with cryptography >= 51 Conch's key code warned "DSA is
        deprecated" for every Ed25519 key.
        """
        running = self.share_()
        result = printedSftp(running.event("session-key")["sftp"], "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        running.signal(signal.SIGINT)
        self.assertEqual(running.wait(), 0)
        running.close()
        self.assertNotIn("Warning", running.stderr)
        self.assertNotIn(".py:", running.stderr)

    def test_controlDirectoryOfAStranger(self) -> None:
        """
        Without C{XDG_RUNTIME_DIR}, a C{/tmp/conchshare-UID} another local
        user made first does not stop C{share}: its socket goes to
        C{$HOME/.cache/conchshare}, where C{ctl} finds it.  With C{--control
        PATH}, nothing is made in C{/tmp/conchshare-UID}.  conchshare runs
        in a user namespace as a user id of its own (so the real
        C{/tmp/conchshare-0} of other tests is not in the way); the
        directory of "another user" is made by root outside.
        """
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise SkipTest("needs root and unshare(1)")
        uid = 50000 + os.getpid() % 10000
        usual = f"/tmp/conchshare-{uid}"
        self.addCleanup(shutil.rmtree, usual, True)
        home = shortTempDir(self)
        share = os.path.abspath(self.mktemp())
        os.mkdir(share)
        args = [*sshArgs(self.sshd), "--mode", "raw", self.sshd.destination(), share]
        script = f"""
import json, os, signal, subprocess, sys
assert os.getuid() == {uid}
# This user id has no passwd entry: the local user name comes from LOGNAME.
env = dict(os.environ, HOME={home!r}, LOGNAME="stranger-test")
env.pop("XDG_RUNTIME_DIR", None)
conchshare = [sys.executable, "-m", "conchshare"]
process = subprocess.Popen(
    conchshare + ["share"] + sys.argv[1:] + {args!r}, env=env, text=True,
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
)
line = process.stdout.readline()
status = subprocess.run(
    conchshare + ["ctl", "status"], env=env, capture_output=True, text=True, timeout=30
)
process.send_signal(signal.SIGTERM)
out, err = process.communicate(timeout=30)
print(json.dumps([line, status.returncode, status.stdout, process.returncode, err]))
"""

        def run(*extra: str) -> list[Any]:
            completed = subprocess.run(
                ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]
                + [sys.executable, "-c", script, *extra],
                capture_output=True,
                text=True,
                timeout=3 * WAIT,
            )
            if completed.returncode != 0 and "unshare" in completed.stderr:
                raise SkipTest(f"no user namespace: {completed.stderr.strip()}")
            self.assertEqual(completed.returncode, 0, completed.stderr)
            result: list[Any] = json.loads(completed.stdout.splitlines()[-1])
            return result

        os.mkdir(usual, 0o700)
        os.chown(usual, 4242, 4242)
        line, ctl, ctlOut, code, stderr = run()
        cache = os.path.join(home, ".cache", "conchshare")
        self.assertTrue(line.startswith(f"Control socket: {cache}/"), (line, stderr))
        self.assertEqual((ctl, code), (0, 0), (ctlOut, stderr))
        self.assertEqual(os.lstat(usual).st_uid, 4242)
        os.rmdir(usual)
        mine = os.path.join(shortTempDir(self), "ctl.sock")
        line, ctl, ctlOut, code, stderr = run("--control", mine)
        self.assertTrue(line.startswith(f"Control socket: {mine} "), (line, stderr))
        self.assertFalse(os.path.lexists(usual))

    def test_pauseResumeSignals(self) -> None:
        """
        SIGUSR1 during a download pauses it (C{paused} event, no progress);
        SIGUSR2 resumes it (C{resumed}) and it completes intact.
        """
        data = os.urandom(64 * 1024 * 1024)
        with open(os.path.join(self.share, "big"), "wb") as f:
            f.write(data)
        running = self.share_("--mode", "raw")
        port = running.event("forwarding")["port"]
        got = os.path.join(self.tmp, "got")
        client = startRawSftp(self, port, f"get /docs/big {got}\n", subprocess.DEVNULL)
        running.event("channel-opened")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the download has started
            if os.path.exists(got) and os.path.getsize(got) > 0:
                break
            time.sleep(0.005)
        running.signal(signal.SIGUSR1)
        self.assertEqual(running.event("paused")["channels"], 1)
        time.sleep(0.5)
        size = os.path.getsize(got) if os.path.exists(got) else 0
        time.sleep(1.0)
        self.assertEqual(os.path.getsize(got) if os.path.exists(got) else 0, size)
        self.assertIsNone(client.poll(), "sftp finished while paused")
        running.signal(signal.SIGUSR2)
        self.assertEqual(running.event("resumed")["channels"], 1)
        self.assertEqual(client.wait(WAIT), 0)
        with open(got, "rb") as f:
            self.assertEqual(f.read(), data)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)

    def test_sessionStartedWhilePaused(self) -> None:
        """
        A session that starts while paused waits (the channel opens, nothing
        is answered); after resume it completes.
        """
        running = self.share_("--mode", "raw")
        port = running.event("forwarding")["port"]
        running.signal(signal.SIGUSR1)
        self.assertEqual(running.event("paused")["channels"], 0)
        got = os.path.join(self.tmp, "got.txt")
        client = startRawSftp(self, port, f"get /docs/hello.txt {got}\n", subprocess.PIPE)
        running.event("channel-opened")
        time.sleep(1.0)
        self.assertIsNone(client.poll(), "sftp finished while paused")
        self.assertFalse(os.path.exists(got))
        running.signal(signal.SIGUSR2)
        self.assertEqual(running.event("resumed")["channels"], 1)
        self.assertEqual(client.wait(15), 0)
        self.assertTrue(os.path.exists(got))
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)

    def test_ctl(self) -> None:
        """
        C{conchshare ctl status|pause|resume} through the control socket
        (mode 0600) of a running share.
        """
        running = self.share_("--mode", "raw")
        port = running.event("forwarding")["port"]
        self.assertEqual(os.stat(self.control).st_mode & 0o777, 0o600)
        status = self.ctl("--json", "status")
        self.assertEqual(status.returncode, 0, status.stderr)
        snapshot = json.loads(status.stdout)["status"]
        self.assertEqual(snapshot["state"], "forwarding")
        self.assertFalse(snapshot["paused"])
        self.assertEqual(snapshot["listeners"][0]["port"], port)
        paused = self.ctl("pause")
        self.assertEqual((paused.returncode, paused.stdout), (0, "Paused (0 channels).\n"))
        running.event("paused")
        self.assertTrue(json.loads(self.ctl("--json", "status").stdout)["status"]["paused"])
        plain = self.ctl("status")
        self.assertIn(f"127.0.0.1:{port}", plain.stdout)
        self.assertIn("PAUSED", plain.stdout)
        resumed = self.ctl("resume")
        self.assertEqual(resumed.returncode, 0)
        running.event("resumed")
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(self.control))
        gone = self.ctl("status")
        self.assertEqual(gone.returncode, 1)
        self.assertIn(self.control, gone.stderr)

    def test_reconnect(self) -> None:
        """
        When the connection drops (sshd's session process killed), the
        command says C{reconnecting}, connects again, forwards the same port
        again, and sftp works through it.
        """
        running = self.share_("--mode", "raw")
        port = running.event("forwarding")["port"]
        self.sshd.killSessions()
        reconnecting = running.event("reconnecting")
        self.assertEqual(reconnecting["attempt"], 1)
        self.assertGreater(reconnecting["delay"], 0)
        self.assertTrue(reconnecting["reason"])
        running.event("connected")
        self.assertEqual(running.event("forwarding")["port"], port)
        result = rawSftp(port, "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)

    def test_plainSentences(self) -> None:
        """
        Without C{--json} the events are sentences, not JSON.
        """
        running = self.share_("--mode", "raw", json_=False)
        seen = []
        while not any(line.startswith("Forwarding ") for line in seen):
            line = running.line()
            self.assertIsNotNone(line, running.stderr)
            assert line is not None
            seen.append(line)
        self.assertTrue(any(line.startswith("Connected to ") for line in seen), seen)
        self.assertFalse(any(line.startswith("{") for line in seen), seen)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        running.rest()
        self.assertIn("Stopped (SIGTERM received).\n", running.lines)

    def test_sshConfigAlias(self) -> None:
        """
        An ssh config C{Host} alias (C{-F}) gives HostName, Port, User,
        IdentityFile and UserKnownHostsFile.
        """
        config = os.path.join(self.tmp, "config")
        with open(config, "w") as f:
            f.write(
                "Host shared-box\n"
                "  HostName 127.0.0.1\n"
                f"  Port {self.sshd.port}\n"
                f"  User {self.sshd.user}\n"
                f"  IdentityFile {self.sshd.clientKeyPath}\n"
                "  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.sshd.knownHostsPath}\n"
                "  BatchMode yes\n"
            )
        running = Running(
            self,
            [
                "share",
                "--json",
                "--mode",
                "raw",
                "-F",
                config,
                "--control",
                self.control,
                "shared-box",
                self.share,
            ],
        )
        connected = running.event("connected")
        self.assertEqual((connected["port"], connected["user"]), (self.sshd.port, self.sshd.user))
        port = running.event("forwarding")["port"]
        self.assertEqual(rawSftp(port, "ls /\n").returncode, 0)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)

    def test_sshModeReconnectReinstallsSessionKey(self) -> None:
        """
        ssh mode after a dropped connection: a new session key is installed
        (the old files are removed) and its sftp command works.
        """
        running = self.share_()
        first = running.event("session-key")
        self.sshd.killSessions()
        running.event("reconnecting")
        second = running.event("session-key")
        self.assertNotEqual(first["key"], second["key"])
        self.assertFalse(os.path.exists(os.path.dirname(first["key"])))
        result = printedSftp(second["sftp"], "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(os.path.dirname(second["key"])))

    def test_authorizedKeysAndHostKey(self) -> None:
        """
        C{--authorized-keys} and C{--host-key}: no session key; the host key
        file is created (0600) and the nested server accepts the listed key
        only, presenting that host key.
        """
        hostKey = os.path.join(self.tmp, "nested_host_key")
        running = self.share_(
            "--authorized-keys", self.sshd.authorizedKeysPath, "--host-key", hostKey
        )
        port = running.event("forwarding")["port"]
        self.assertEqual(os.stat(hostKey).st_mode & 0o777, 0o600)
        publicKey = subprocess.run(
            ["ssh-keygen", "-y", "-f", hostKey], capture_output=True, text=True, check=True
        ).stdout.strip()
        knownHosts = os.path.join(self.tmp, "nested_known_hosts")
        with open(knownHosts, "w") as f:
            f.write(f"[127.0.0.1]:{port} {publicKey}\n")
        base = ["sftp", "-P", str(port), "-o", f"UserKnownHostsFile={knownHosts}"]
        base += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-b", "-"]
        good = subprocess.run(
            base + ["-o", f"IdentityFile={self.sshd.clientKeyPath}", "anyone@127.0.0.1"],
            input="ls /docs\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(good.returncode, 0, good.stderr)
        self.assertIn("hello.txt", good.stdout)
        other = os.path.join(self.tmp, "other_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
        bad = subprocess.run(
            base + ["-o", f"IdentityFile={other}", "anyone@127.0.0.1"],
            input="ls /\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertNotEqual(bad.returncode, 0)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        self.assertNotIn("session-key", [e["event"] for e in running.events])

    def test_remoteSocket(self) -> None:
        """
        C{--remote-socket auto} in raw mode: a fresh owner-only socket on the
        remote host, reachable with sftp through socat; removed on stop.
        """
        running = self.share_("--mode", "raw", "--remote-socket", "auto")
        forwarding = running.event("forwarding")
        path = forwarding["socket"]
        self.assertNotIn("port", forwarding)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
        result = subprocess.run(
            ["sftp", "-b", "-", "-D", f"socat STDIO UNIX-CONNECT:{path}"],
            input="ls /docs\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(path))

    def test_remoteSocketRelative(self) -> None:
        """
        C{--remote-socket} with a relative path: the socket is made in the
        remote home directory, where conchshare removes a stale socket
        before and its own socket after (before, sshd bound it in its own
        working directory, C{/}, while the stale socket was looked for in
        the home); the forwarding event names the full path.
        """
        home = pwd.getpwnam(self.sshd.user).pw_dir
        directory = tempfile.mkdtemp(prefix=".conchshare-test-", dir=home)
        self.addCleanup(shutil.rmtree, directory, True)
        relative = os.path.basename(directory) + "/sftp.sock"
        path = os.path.join(home, relative)
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)
        running = self.share_("--mode", "raw", "--remote-socket", relative)
        self.assertEqual(running.event("forwarding")["socket"], path)
        result = subprocess.run(
            ["sftp", "-b", "-", "-D", f"socat STDIO UNIX-CONNECT:{path}"],
            input="ls /docs\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0, running.stderr)
        self.assertEqual(os.listdir(directory), [])
        self.assertFalse(os.path.lexists("/" + relative))

    def test_verboseAuditTrail(self) -> None:
        """
        C{-v}: every SFTP request naming a path is logged on stderr (session,
        operation, virtual path, result); stdout stays JSON; no key material.
        """
        running = self.share_("--mode", "raw", "-v")
        port = running.event("forwarding")["port"]
        result = rawSftp(port, "get /docs/hello.txt -\n-get /docs/missing.txt -\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)
        running.rest()
        self.assertIn("session 1: openFile /docs/hello.txt -> ok", running.stderr)
        self.assertRegex(running.stderr, r"session 1: \w+ /docs/missing.txt -> \w+")
        for line in running.lines:
            json.loads(line)
        self.assertNotIn("PRIVATE KEY", running.stderr)

    def test_proxyJump(self) -> None:
        """
        C{-J}: the connection goes through a second throwaway sshd (the jump
        host), configured like ssh's hops from the C{-F} file.
        """
        jump = ThrowawaySSHD.start(self.mktemp())
        self.addCleanup(jump.stop)
        knownHosts = os.path.join(self.tmp, "known_hosts")
        with open(knownHosts, "w") as out:
            for path in (self.sshd.knownHostsPath, jump.knownHostsPath):
                with open(path) as f:
                    out.write(f.read())
        config = os.path.join(self.tmp, "config")
        with open(config, "w") as f:
            f.write(
                "Host *\n"
                f"  IdentityFile {self.sshd.clientKeyPath}\n"
                f"  IdentityFile {jump.clientKeyPath}\n"
                "  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {knownHosts}\n"
                "  BatchMode yes\n"
            )
        running = Running(
            self,
            ["share", "--json", "--mode", "raw", "-F", config, "--control", self.control]
            + ["-J", jump.destination(), self.sshd.destination(), self.share],
        )
        self.assertEqual(running.event("connected")["port"], self.sshd.port)
        port = running.event("forwarding")["port"]
        result = rawSftp(port, "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        self.assertIn("Accepted publickey", jump.log())
        running.signal(signal.SIGTERM)
        self.assertEqual(running.wait(), 0)


class ShareCommandErrorTests(_Base):
    def test_unknownHostKey(self) -> None:
        """
        An unknown host key: exit 5, one sentence with the key's fingerprint
        on stderr, no traceback; with C{--json}, an C{error} event.
        """
        empty = os.path.join(self.tmp, "known_hosts")
        open(empty, "w").close()
        args = ["share", "-i", self.sshd.clientKeyPath, "--known-hosts", empty, "-F", "none"]
        args += ["--control", self.control, self.sshd.destination(), self.share]
        result = subprocess.run(
            [sys.executable, "-m", "conchshare", *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 5, result.stderr)
        expected = fingerprint(self.sshd.hostKeyPath + ".pub")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn(expected, result.stderr)
        running = Running(self, args + ["--json"])
        error = running.event("error")
        self.assertIn(expected, error["message"])
        running.event("stopped")
        self.assertEqual(running.wait(), 5)
        self.assertNotIn("Traceback", running.stderr)

    def test_hostKeyOfAnotherType(self) -> None:
        """
        known_hosts holds the host's Ed25519 key and the host presents only
        an ECDSA key: a changed key, refused even with C{--accept-new}: exit
        5, one sentence with both fingerprints, the known key's file and
        line and the way out; known_hosts is left alone.
        """
        keys = shortTempDir(self)
        ecdsa = os.path.join(keys, "host_ecdsa")
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", ecdsa],
            check=True,
            capture_output=True,
        )
        sshd = startForTest(
            self, [f"HostKey {ecdsa}", "HostKeyAlgorithms ecdsa-sha2-nistp256"], needs=("sftp",)
        )
        with open(sshd.knownHostsPath) as f:
            before = f.read()
        self.assertIn("ssh-ed25519", before)
        args = ["share", *sshArgs(sshd), "--accept-new", "--control", self.control]
        # First with --json: the first event is the error (not "connected").
        running = Running(self, args + ["--json", sshd.destination(), self.share])
        first = running.line()
        assert first is not None, running.stderr
        self.assertEqual(json.loads(first)["event"], "error", first)
        self.assertEqual(running.wait(), 5)
        result = subprocess.run(
            [sys.executable, "-m", "conchshare", *args, sshd.destination(), self.share],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 5, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("HAS CHANGED", result.stderr)
        self.assertIn(f"ECDSA key {fingerprint(ecdsa + '.pub')}", result.stderr)
        known = fingerprint(sshd.hostKeyPath + ".pub")
        self.assertIn(f"ED25519 key {known} ({sshd.knownHostsPath} line 1)", result.stderr)
        self.assertIn(
            f"ssh-keygen -R '{sshd.hostField()}' -f '{sshd.knownHostsPath}'", result.stderr
        )
        self.assertIn("--accept-new", result.stderr)
        with open(sshd.knownHostsPath) as f:
            self.assertEqual(f.read(), before)

    def test_authenticationFailed(self) -> None:
        """
        A key the server does not accept: exit 4, one sentence naming the
        methods tried.
        """
        other = os.path.join(self.tmp, "other_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
        args = ["share", "-F", "none", "-i", other, "--known-hosts", self.sshd.knownHostsPath]
        args += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "--control", self.control]
        result = subprocess.run(
            [sys.executable, "-m", "conchshare", *args, self.sshd.destination(), self.share],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 4, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("publickey", result.stderr)

    def test_connectionRefused(self) -> None:
        """
        Nothing listens: exit 3 with ssh's sentence.
        """
        from tests.support.sshd import freePort

        result = subprocess.run(
            [sys.executable, "-m", "conchshare", "share", "-F", "none", "--control", self.control]
            + [f"127.0.0.1:{freePort()}", self.share],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertRegex(
            result.stderr, r"(?m)^ssh: connect to host 127\.0\.0\.1 port \d+: Connection refused\.$"
        )
        self.assertNotIn("Traceback", result.stderr)

    def test_badUsage(self) -> None:
        """
        Bad usage: one sentence on stderr, exit 2, no traceback.
        """
        cases = [
            ["share"],
            ["share", "host"],
            ["share", "--mode", "bogus", "host", self.share],
            ["share", "--umask", "999", "host", self.share],
            ["share", "--remote-listen", "nonsense:x", "host", self.share],
            ["share", "host", os.path.join(self.tmp, "missing")],
            ["share", "user@host:22", "-p", "23", self.share],
            ["mount", "host", self.share],
            ["mount", "--via", "carrier-pigeon", "--at", "m", "host", self.share],
        ]
        for argv in cases:
            result = subprocess.run(
                [sys.executable, "-m", "conchshare", *argv, "--control", self.control],
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            self.assertEqual(result.returncode, 2, (argv, result.stdout, result.stderr))
            self.assertEqual(len(result.stderr.splitlines()), 1, (argv, result.stderr))
            self.assertTrue(result.stderr.rstrip().endswith("."), (argv, result.stderr))
            self.assertNotIn("Traceback", result.stderr)


class ForwardRefusedTests(_Base):
    sshdConfig = ["AllowTcpForwarding no"]

    def test_forwardRefused(self) -> None:
        """
        Forwarding disabled on the server: exit 6, an C{error} event saying
        so, and no C{forwarding} event.
        """
        running = self.share_("--mode", "raw")
        error = running.event("error")
        self.assertIn("refused", error["message"])
        running.event("stopped")
        self.assertEqual(running.wait(), 6)
        self.assertNotIn("forwarding", [e["event"] for e in running.events])


class MountCommandTests(_Base):
    def setUp(self) -> None:
        super().setUp()
        if not os.path.exists("/dev/fuse") or not shutil.which("sshfs"):
            raise SkipTest("sshfs and /dev/fuse are needed")

    def test_mountPassive(self) -> None:
        """
        C{conchshare mount} (passive): the share appears at the remote mount
        point (created), is mounted again after a reconnect, and is
        unmounted and removed on SIGTERM (exit 0).
        """
        at = os.path.join(self.tmp, "remote mount")
        running = Running(
            self,
            ["mount", "--json", *sshArgs(self.sshd), "--control", self.control]
            + [self.sshd.destination(), self.share, "--at", at],
        )
        mounted = running.event("mounted")
        self.assertEqual(mounted["remote_path"], at)
        with open(os.path.join(at, "hello.txt")) as f:
            self.assertEqual(f.read(), "hello from the local side\n")
        status = json.loads(self.ctl("--json", "status").stdout)["status"]
        self.assertEqual((status["state"], status["remote_path"]), ("forwarding", at))
        self.sshd.killSessions()
        running.event("reconnecting")
        self.assertEqual(running.event("mounted")["remote_path"], at)
        with open(os.path.join(at, "hello.txt")) as f:
            self.assertEqual(f.read(), "hello from the local side\n")
        running.signal(signal.SIGTERM)
        self.assertEqual(running.event("unmounted")["remote_path"], at)
        running.event("stopped")
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(at))

    def mountVia(self, via: str) -> None:
        at = os.path.join(self.tmp, f"mnt-{via}")
        running = Running(
            self,
            ["mount", "--json", "--via", via, *sshArgs(self.sshd), "--control", self.control]
            + [self.sshd.destination(), self.share, "--at", at],
        )
        mounted = running.event("mounted")
        self.assertEqual(mounted["remote_path"], at)
        with open(os.path.join(at, "hello.txt")) as f:
            self.assertEqual(f.read(), "hello from the local side\n")
        forwarding = [e for e in running.events if e["event"] == "forwarding"]
        self.assertEqual(len(forwarding), 1)
        reply = json.loads(self.ctl("--json", "status").stdout)
        self.assertTrue(reply["ok"], (reply, running.stderr))
        self.assertEqual(len(reply["status"]["listeners"]), 1)
        running.signal(signal.SIGTERM)
        running.event("unmounted")
        running.event("stopped")
        self.assertEqual(running.wait(), 0)
        self.assertFalse(os.path.exists(at))
        return forwarding[0]

    def test_mountViaSSH(self) -> None:
        """
        C{mount --via ssh}: a TCP forward to the nested SSH server (ssh
        mode); the mount works and is undone on SIGTERM.
        """
        self.assertEqual(self.mountVia("ssh")["mode"], "ssh")

    def test_mountViaSSHAuthorizedKeysAndHostKey(self) -> None:
        """
        C{mount --via ssh --authorized-keys F --host-key K}: the mount's
        sshfs works with its session key, the nested server presents K and
        also accepts the keys of F (sftp to the same forward), no others.
        """
        at = os.path.join(self.tmp, "mnt")
        other = os.path.join(self.tmp, "other_key")
        stranger = os.path.join(self.tmp, "stranger_key")
        for path in (other, stranger):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
        hostKey = os.path.join(self.tmp, "nested_host_key")
        running = Running(
            self,
            ["mount", "--json", "--via", "ssh", *sshArgs(self.sshd), "--control", self.control]
            + ["--authorized-keys", other + ".pub", "--host-key", hostKey]
            + [self.sshd.destination(), self.share, "--at", at],
        )
        port = running.event("forwarding")["port"]
        running.event("mounted")
        with open(os.path.join(at, "hello.txt")) as f:
            self.assertEqual(f.read(), "hello from the local side\n")
        publicKey = subprocess.run(
            ["ssh-keygen", "-y", "-f", hostKey], capture_output=True, text=True, check=True
        ).stdout.strip()
        knownHosts = os.path.join(self.tmp, "nested_known_hosts")
        with open(knownHosts, "w") as f:
            f.write(f"[127.0.0.1]:{port} {publicKey}\n")
        base = ["sftp", "-P", str(port), "-o", f"UserKnownHostsFile={knownHosts}"]
        base += ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-b", "-"]
        results = {}
        for key in (other, stranger):
            results[key] = subprocess.run(
                base + ["-o", f"IdentityFile={key}", "anyone@127.0.0.1"],
                input="ls /docs\n",
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
        self.assertEqual(results[other].returncode, 0, results[other].stderr)
        self.assertIn("hello.txt", results[other].stdout)
        self.assertNotEqual(results[stranger].returncode, 0)
        running.signal(signal.SIGTERM)
        running.event("unmounted")
        self.assertEqual(running.wait(), 0)

    def test_mountViaSocket(self) -> None:
        """
        C{mount --via socket}: an owner-only Unix socket forward (raw mode).
        """
        forwarding = self.mountVia("socket")
        self.assertEqual(forwarding["mode"], "raw")
        self.assertIn("socket", forwarding)

    def test_mountViaRawTCP(self) -> None:
        """
        C{mount --via raw-tcp}: a loopback TCP forward (raw mode).
        """
        forwarding = self.mountVia("raw-tcp")
        self.assertEqual((forwarding["mode"], forwarding["address"]), ("raw", "127.0.0.1"))
