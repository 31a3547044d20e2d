"""
Tests for the option parsing of C{conchshare share} and C{conchshare mount}
(L{conchshare.command}), without any connection.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from conchshare.command import buildService, parseArguments, shareOptions
from conchshare.errors import UsageError
from conchshare.service import ForwardSpec


class ParseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.a = os.path.abspath(self.mktemp())
        self.b = os.path.abspath(self.mktemp())
        os.makedirs(self.a)
        os.makedirs(self.b)

    def test_defaults(self) -> None:
        """
        ssh mode, one forward on 127.0.0.1 port 0, a session key, no JSON.
        """
        args = parseArguments("share", ["me@host", self.a])
        options = shareOptions(args)
        self.assertEqual(options.mode, "ssh")
        self.assertEqual(options.forwards(), [ForwardSpec("127.0.0.1", 0)])
        self.assertTrue(options.wantsSessionKey())
        self.assertFalse(args.json)
        self.assertEqual(args.allShares, [self.a])

    def test_everything(self) -> None:
        """
        Options and positional arguments mix; repeatable options accumulate;
        C{--known-hosts} and C{--accept-new} become C{-o} options first.
        """
        args = parseArguments(
            "share",
            [
                "--mode", "raw", "me@host:2222", self.a, "--share", self.b,
                "--remote-listen", "0.0.0.0:4000", "--remote-listen", "[::1]:0",
                "--remote-socket", "/tmp/x.sock", "-i", "k1", "--identity", "k2",
                "--known-hosts", "kh", "--accept-new", "--read-only", "--umask", "077",
                "--json", "-v", "-F", "cfg", "-J", "jump", "-o", "ServerAliveInterval=5",
                "--control", "/tmp/c.sock",
            ],
        )  # fmt: skip
        options = shareOptions(args)
        self.assertEqual(args.allShares, [self.a, self.b])
        self.assertEqual(args.destination, "me@host:2222")
        self.assertEqual(options.mode, "raw")
        self.assertEqual(
            options.forwards(),
            [
                ForwardSpec("0.0.0.0", 4000),
                ForwardSpec("::1", 0),
                ForwardSpec(socket="/tmp/x.sock"),
            ],
        )
        self.assertEqual(options.identities, ["k1", "k2"])
        self.assertEqual(
            options.sshOptionList(),
            [
                f"UserKnownHostsFile={os.path.abspath('kh')}",
                "StrictHostKeyChecking=accept-new",
                "ServerAliveInterval=5",
            ],
        )
        self.assertEqual((options.readOnly, options.umask, options.verbose), (True, 0o077, True))
        self.assertEqual((options.configFile, options.jump), ("cfg", "jump"))
        self.assertFalse(options.wantsSessionKey())
        self.assertEqual(args.control, "/tmp/c.sock")

    def test_remoteSocketAlone(self) -> None:
        """
        C{--remote-socket auto}: a fresh socket, and no TCP forward.
        """
        argv = ["--mode", "raw", "--remote-socket", "auto", "h", self.a]
        options = shareOptions(parseArguments("share", argv))
        self.assertEqual(options.forwards(), [ForwardSpec(socket="")])
        argv = ["--remote-socket", "/s", "--remote-listen", "127.0.0.1:5", "h", self.a]
        options = shareOptions(parseArguments("share", argv))
        self.assertEqual(options.forwards(), [ForwardSpec(port=5), ForwardSpec(socket="/s")])

    def test_sessionKeyRules(self) -> None:
        """
        The session key is the default in ssh mode without
        C{--authorized-keys}; not with it unless asked for.
        """
        keys = os.path.join(self.a, "authorized_keys")
        with_ = shareOptions(parseArguments("share", ["--authorized-keys", keys, "h", self.a]))
        self.assertFalse(with_.wantsSessionKey())
        both = shareOptions(
            parseArguments("share", ["--authorized-keys", keys, "--session-key", "h", self.a])
        )
        self.assertTrue(both.wantsSessionKey())
        off = shareOptions(parseArguments("share", ["--no-session-key", "h", self.a]))
        self.assertFalse(off.wantsSessionKey())

    def test_mount(self) -> None:
        """
        C{mount}: C{--at} is required; C{--via} picks the mode; the service
        requests no forward and installs no session key itself (the remote
        mount requests what its transport needs).
        """
        passive = shareOptions(parseArguments("mount", ["h", self.a, "--at", "mnt"]))
        self.assertEqual(
            (passive.mountAt, passive.mountVia, passive.forwards()), ("mnt", "passive", [])
        )
        for via, mode in (("ssh", "ssh"), ("socket", "raw"), ("raw-tcp", "raw")):
            options = shareOptions(
                parseArguments("mount", ["--via", via, "h", self.a, "--at", "m"])
            )
            self.assertEqual((options.mountVia, options.effectiveMode()), (via, mode))
            self.assertEqual(options.forwards(), [])
            self.assertFalse(options.wantsSessionKey())

    def test_mountKeyOptions(self) -> None:
        """
        A mount always installs a session key for its own sshfs:
        C{--no-session-key} is refused; C{--authorized-keys} adds keys for
        C{--via ssh} only.
        """
        keys = os.path.join(self.a, "authorized_keys")
        error = self.assertRaises(
            UsageError,
            lambda: shareOptions(
                parseArguments(
                    "mount",
                    ["--via", "ssh", "--authorized-keys", keys, "--no-session-key"]
                    + ["h", self.a, "--at", "m"],
                )
            ),
        )
        self.assertIn("--no-session-key is for share", str(error))
        error = self.assertRaises(
            UsageError,
            lambda: shareOptions(
                parseArguments(
                    "mount",
                    ["--via", "socket", "--authorized-keys", keys, "h", self.a, "--at", "m"],
                )
            ),
        )
        self.assertEqual(str(error), "--authorized-keys needs --via ssh.")
        options = shareOptions(
            parseArguments(
                "mount", ["--via", "ssh", "--authorized-keys", keys, "h", self.a, "--at", "m"]
            )
        )
        self.assertEqual(options.authorizedKeys, keys)

    def test_usageErrors(self) -> None:
        """
        Bad usage raises L{UsageError}: one sentence, exit code 2.
        """
        cases = [
            ("share", []),
            ("share", ["host"]),
            ("share", ["--mode", "nope", "h", self.a]),
            ("share", ["--umask", "9", "h", self.a]),
            ("share", ["--remote-listen", "x:y", "h", self.a]),
            ("share", ["-p", "0", "h", self.a]),
            ("share", ["--bogus", "h", self.a]),
            ("mount", ["h", self.a]),
            ("mount", ["--via", "nope", "--at", "m", "h", self.a]),
        ]
        for kind, argv in cases:
            error = self.assertRaises(UsageError, parseArguments, kind, argv)
            self.assertEqual(error.exitCode, 2)
            text = str(error)
            self.assertTrue(text[0].isupper() and text.endswith("."), (argv, text))
            self.assertNotIn("\n", text)

    def test_authorizedKeysNeedsSSHMode(self) -> None:
        args = parseArguments("share", ["--mode", "raw", "--authorized-keys", "k", "h", self.a])
        self.assertRaises(UsageError, shareOptions, args)

    def test_badShareIsUsageError(self) -> None:
        """
        A share folder that does not exist is bad usage, said in a sentence
        naming it.
        """
        missing = os.path.join(self.a, "missing")
        args = parseArguments("share", ["h", missing])
        error = self.assertRaises(UsageError, buildService, args)
        self.assertIn("missing", str(error))
