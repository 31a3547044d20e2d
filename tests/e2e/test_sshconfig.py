"""
ssh_config resolution (L{conchshare.tunnel.sshconfig}) compared with what
OpenSSH's C{ssh -G} resolves from the same files.  The resolution on its own
is tested in L{tests.unit.test_sshconfig}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from conchshare.tunnel.sshconfig import resolve


class OpenSSHAgreementTests(SynchronousTestCase):
    """
    The same config read by OpenSSH's C{ssh -G} gives the same answers.
    """

    def test_agreesWithSshG(self) -> None:
        import getpass
        import shutil
        import subprocess

        if not shutil.which("ssh"):
            raise SkipTest("ssh is not installed")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        included = os.path.join(directory, "included")
        with open(included, "w") as f:
            f.write("Host inc*\n  HostName included.example\n  Port 2022\n")
        config = os.path.join(directory, "config")
        with open(config, "w") as f:
            f.write(
                f"Include {directory}/inc*ed\n"
                "Host web* !web9\n  HostName %h.example.com\n  User webber\n"
                "  ProxyJump bastion,u@b2:2200\n"
                "Match host *.example.com\n  Port 2201\n  ServerAliveInterval 7\n"
                "Match originalhost web9\n  StrictHostKeyChecking accept-new\n"
                "Host *\n  User everyone\n  ServerAliveCountMax 9\n"
            )
        for destination in ["web1", "web9", "incx", "other", "me@web2:2300"]:
            mine = resolve(destination, configFile=config, localUser=getpass.getuser())
            dest = destination.split("@")[-1]
            args = ["ssh", "-G", "-F", config]
            if "@" in destination:
                args += ["-l", destination.split("@")[0]]
            if ":" in dest:
                dest, port = dest.split(":")
                args += ["-p", port]
            out = subprocess.run(args + [dest], capture_output=True, text=True, check=True).stdout
            theirs = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
            self.assertEqual(mine.host, theirs["hostname"], destination)
            self.assertEqual(mine.user, theirs["user"], destination)
            self.assertEqual(str(mine.port), theirs["port"], destination)
            self.assertEqual(",".join(mine.proxyJump) or None, theirs.get("proxyjump"), destination)
            self.assertEqual(str(mine.serverAliveCountMax), theirs["serveralivecountmax"])
            strict = {"true": "yes", "false": "no"}.get(
                theirs["stricthostkeychecking"], theirs["stricthostkeychecking"]
            )
            self.assertEqual(mine.strictHostKeyChecking, strict, destination)
            if "serveraliveinterval" in theirs and theirs["serveraliveinterval"] != "0":
                self.assertEqual(
                    mine.serverAliveInterval, float(theirs["serveraliveinterval"]), destination
                )
