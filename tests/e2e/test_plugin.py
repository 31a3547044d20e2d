"""
Tests for C{twistd conchshare}: twistd started as a real process against a
throwaway sshd.  The plugin and C{makeService} are tested in
L{tests.unit.test_plugin}.
"""

from __future__ import annotations

import json
import os
import signal
import time

from tests.support.command import TWISTD, WAIT, Running, _Base, rawSftp, sshArgs


class TwistdProcessTests(_Base):
    def test_twistd(self) -> None:
        """
        C{twistd -n conchshare share ...} as a real process: the forward comes
        up (seen through C{conchshare ctl status}), sftp works through it,
        ctl pauses, events are logged, SIGTERM stops it cleanly and removes
        the control socket.
        """
        running = Running(
            self,
            ["-n", "--pidfile=", "conchshare", "share", "--mode", "raw", *sshArgs(self.sshd)]
            + ["--control", self.control, self.sshd.destination(), self.share],
            command=TWISTD,
        )
        deadline = time.monotonic() + WAIT
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                self.fail(f"twistd exited {running.process.returncode}: {running.stderr}")
            if os.path.exists(self.control):
                reply = self.ctl("--json", "status")
                if reply.returncode == 0:
                    status = json.loads(reply.stdout)["status"]
                    if status["state"] == "forwarding":
                        break
            time.sleep(0.1)
        self.assertEqual(status.get("state"), "forwarding", status)
        port = status["listeners"][0]["port"]  # type: ignore[index]
        result = rawSftp(port, "ls /docs\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("hello.txt", result.stdout)
        self.assertEqual(self.ctl("pause").returncode, 0)
        self.assertTrue(json.loads(self.ctl("--json", "status").stdout)["status"]["paused"])
        self.assertEqual(self.ctl("resume").returncode, 0)
        running.signal(signal.SIGTERM)
        code = running.wait()
        log = "".join(running.rest())
        # twistd ends a clean SIGTERM shutdown by re-raising the signal.
        self.assertIn(code, (0, -signal.SIGTERM), log)
        self.assertIn("Server Shut Down.", log)
        self.assertIn(f"Forwarding 127.0.0.1:{port} on the remote host", log)
        self.assertIn("Paused (0 channels).", log)
        self.assertIn("Stopped", log)
        self.assertFalse(os.path.exists(self.control))
        # No dependency's warning in the log (cryptography >= 51 warned
        # "DSA is deprecated" from Conch's key code for every key).
        self.assertNotIn("Warning", log)

    def test_twistdFatalError(self) -> None:
        """
        A fatal error (unknown host key) under twistd: logged as one
        sentence, and twistd exits instead of running on.
        """
        empty = os.path.join(self.tmp, "known_hosts")
        open(empty, "w").close()
        running = Running(
            self,
            ["-n", "--pidfile=", "conchshare", "share", "--mode", "raw", "-F", "none"]
            + ["-i", self.sshd.clientKeyPath, "--known-hosts", empty]
            + ["--control", self.control, self.sshd.destination(), self.share],
            command=TWISTD,
        )
        running.wait()
        log = "".join(running.rest())
        self.assertIn("can't be established", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback (most recent call last)", log)
