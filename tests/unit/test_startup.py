"""
What C{conchshare sftp-server} loads and does before it answers: checked
in a fresh interpreter, as each C{sftp -D} starts one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import CHECKOUT

ROOT = CHECKOUT

# Run in a fresh interpreter: import what `conchshare sftp-server` imports
# (recording the C functions ctypes looks up and its errno reads meanwhile:
# a probe of the system), then serve a share until stdin closes; print what was loaded.
_SCRIPT = r"""
import json, sys

calls = []
imported = {}


def hook(event, args):
    # A probe looks a C function up (Python's own API aside) and reads errno.
    if event == "ctypes.get_errno" or (
        event == "ctypes.dlsym" and not str(args[1]).startswith("Py")
    ):
        calls.append(f"{event} {args[1] if len(args) > 1 else ''}")


sys.addaudithook(hook)
import conchshare.sftp.stdio

imported["entry"] = sorted(sys.modules)
from conchshare.sftp import avatar, threaded
from conchshare.fs import ring, syscalls

imported["imports"] = sorted(sys.modules)
imported["probedAtImport"] = [syscalls._found is not None, ring._usable is not None, list(calls)]
code = conchshare.sftp.stdio.main([sys.argv[1]])
imported["served"] = sorted(sys.modules)
imported["code"] = code
imported["probedAfterServing"] = syscalls._found is not None
print(json.dumps(imported))
"""


class StartupTests(SynchronousTestCase):
    def run_fresh(self) -> dict[str, object]:
        share = os.path.abspath(self.mktemp())
        os.makedirs(share)
        # The Linux calls on (the default): what is probed, and when, is
        # what these tests are about.
        env = dict(os.environ, PYTHONPATH=ROOT, CONCHSHARE_PORTABLE_FS="0")
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, share],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=ROOT,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        result: dict[str, object] = json.loads(done.stdout)
        return result

    def test_entryImportsNoTwisted(self) -> None:
        """
        The C{sftp-server} entry module (its command line, up to a usage
        error or C{--help}) loads no Twisted.
        """
        loaded = self.run_fresh()["entry"]
        assert isinstance(loaded, list)
        self.assertEqual([name for name in loaded if name.split(".")[0] == "twisted"], [])

    def test_nothingProbedAtImport(self) -> None:
        """
        Importing the server's modules probes nothing (no renameat2,
        openat2, statx or io_uring call: no C function looked up, no errno
        read); serving a share probes on first use.
        """
        result = self.run_fresh()
        self.assertEqual(result["probedAtImport"], [False, False, []])
        self.assertEqual((result["code"], result["probedAfterServing"]), (0, True))

    def test_onlyWhatServingUses(self) -> None:
        """
        Serving a share loads no SSH client or tunnel code, no reactor and
        no service.
        """
        result = self.run_fresh()
        for key in ("imports", "served"):
            loaded = result[key]
            assert isinstance(loaded, list)
            unused = [
                name
                for name in loaded
                if name.startswith(("conchshare.tunnel", "twisted.conch.ssh.transport"))
                or name
                in (
                    "twisted.internet.reactor",
                    "conchshare.service",
                    "conchshare.command",
                    "conchshare.control",
                    "conchshare.mount",
                    "twisted.python.usage",
                    "twisted.internet.threads",
                )
            ]
            self.assertEqual(unused, [], key)
