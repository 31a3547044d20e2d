"""
ssh_config resolution: Host, Match, Include, first value wins, the command
line wins, tokens, errors.  The agreement with OpenSSH's C{ssh -G} is tested
in L{tests.e2e.test_sshconfig}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from conchshare.errors import UsageError
from conchshare.tunnel.sshconfig import SUPPORTED_KEYWORDS, resolve


class ResolveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.home, ".ssh", "conf.d"))
        self.env = dict(os.environ)
        os.environ.pop("SSH_AUTH_SOCK", None)
        self.addCleanup(self._restoreEnv)

    def _restoreEnv(self) -> None:
        os.environ.clear()
        os.environ.update(self.env)

    def write(self, relative: str, text: str) -> str:
        path = os.path.join(self.home, ".ssh", relative)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """
        Without a config: port 22, the local user, the default known_hosts
        files, "ask", keep-alive every 15 s, no proxy.
        """
        o = resolve("example.org", home=self.home, localUser="me")
        self.assertEqual((o.host, o.port, o.user), ("example.org", 22, "me"))
        self.assertEqual(
            o.userKnownHostsFiles,
            [f"{self.home}/.ssh/known_hosts", f"{self.home}/.ssh/known_hosts2"],
        )
        self.assertEqual(o.strictHostKeyChecking, "ask")
        self.assertEqual((o.serverAliveInterval, o.serverAliveCountMax), (15.0, 3))
        self.assertEqual((o.proxyJump, o.proxyCommand), ([], None))
        self.assertEqual(o.identityFiles, [])
        self.assertFalse(o.useAgent)

    def test_defaultIdentitiesThatExist(self) -> None:
        self.write("id_rsa", "x")
        self.write("id_ed25519", "x")
        o = resolve("h", home=self.home, localUser="me")
        self.assertEqual(
            o.identityFiles, [f"{self.home}/.ssh/id_ed25519", f"{self.home}/.ssh/id_rsa"]
        )

    def test_hostAliasAndFirstWins(self) -> None:
        self.write(
            "config",
            "Host box\n"
            "    HostName 192.0.2.7\n"
            "    User alice\n"
            "    Port 2222\n"
            "Host *\n"
            "    User nobody\n"
            "    Port 22\n"
            "    ServerAliveInterval 30\n",
        )
        o = resolve("box", home=self.home, localUser="me")
        self.assertEqual(
            (o.host, o.port, o.user, o.originalHost), ("192.0.2.7", 2222, "alice", "box")
        )
        self.assertEqual(o.serverAliveInterval, 30.0)
        other = resolve("elsewhere", home=self.home, localUser="me")
        self.assertEqual((other.host, other.port, other.user), ("elsewhere", 22, "nobody"))

    def test_patternsAndNegation(self) -> None:
        self.write("config", "Host web* !web9\n    User webber\n")
        self.assertEqual(resolve("web1", home=self.home, localUser="me").user, "webber")
        self.assertEqual(resolve("WEB2", home=self.home, localUser="me").user, "webber")
        self.assertEqual(resolve("web9", home=self.home, localUser="me").user, "me")
        self.assertEqual(resolve("db1", home=self.home, localUser="me").user, "me")

    def test_matchHostUsesHostName(self) -> None:
        """
        Match host sees the HostName set so far; Match originalhost the
        alias; Match all everything.
        """
        self.write(
            "config",
            "Host short\n  HostName %h.example.com\n"
            "Match host *.example.com\n  User viamatch\n"
            "Match originalhost short\n  Port 2022\n"
            "Match all\n  ConnectTimeout 7\n",
        )
        o = resolve("short", home=self.home, localUser="me")
        self.assertEqual(
            (o.host, o.user, o.port, o.connectTimeout), ("short.example.com", "viamatch", 2022, 7.0)
        )

    def test_matchUnsupportedNeverMatches(self) -> None:
        self.write("config", 'Match exec "true"\n  User execd\n')
        self.assertEqual(resolve("h", home=self.home, localUser="me").user, "me")

    def test_include(self) -> None:
        """
        Include globs relative to ~/.ssh; included lines apply where the
        Include applies.
        """
        self.write("conf.d/10-a", "Host alpha\n  HostName alpha.example\n")
        self.write("conf.d/20-b", "Host beta\n  HostName beta.example\n")
        self.write("only-for-gamma", "User gammauser\n")
        self.write(
            "config",
            "Include conf.d/*\nHost gamma\n  Include only-for-gamma\nHost *\n  Compression yes\n",
        )
        self.assertEqual(resolve("alpha", home=self.home, localUser="me").host, "alpha.example")
        self.assertEqual(resolve("beta", home=self.home, localUser="me").host, "beta.example")
        self.assertEqual(resolve("gamma", home=self.home, localUser="me").user, "gammauser")
        self.assertEqual(resolve("alpha", home=self.home, localUser="me").user, "me")

    def test_commandLineWins(self) -> None:
        """
        -o, -p, -i, -J and user@ win over the config file.
        """
        self.write(
            "config",
            "Host box\n  User fromfile\n  Port 2200\n  IdentityFile ~/.ssh/filekey\n"
            "  StrictHostKeyChecking yes\n  ProxyJump jumpfile\n",
        )
        o = resolve(
            "cli@box",
            home=self.home,
            localUser="me",
            options=["StrictHostKeyChecking=accept-new", "UserKnownHostsFile /tmp/kh"],
            port=2300,
            identities=["/keys/cli"],
            jump="jumpcli",
        )
        self.assertEqual((o.user, o.port, o.strictHostKeyChecking), ("cli", 2300, "accept-new"))
        self.assertEqual(o.identityFiles, ["/keys/cli", f"{self.home}/.ssh/filekey"])
        self.assertEqual(o.userKnownHostsFiles, ["/tmp/kh"])
        self.assertEqual(o.proxyJump, ["jumpcli"])

    def test_tokens(self) -> None:
        self.write(
            "config",
            "Host tok\n  HostName real.example\n  User bob\n  Port 2201\n"
            "  IdentityFile %d/keys/%r@%h-%p_%u_%n_%%\n"
            "  ProxyCommand socat - TCP:%h:%p\n"
            "  UserKnownHostsFile ~/kh/%h\n",
        )
        o = resolve("tok", home=self.home, localUser="me")
        self.assertEqual(o.identityFiles, [f"{self.home}/keys/bob@real.example-2201_me_tok_%"])
        self.assertEqual(o.proxyCommand, "socat - TCP:real.example:2201")
        self.assertEqual(o.userKnownHostsFiles, [f"{self.home}/kh/real.example"])

    def test_proxyJumpAndCommandFirstWins(self) -> None:
        self.write("config", "Host a\n  ProxyJump j1,u@j2:2022\n  ProxyCommand nc %h %p\n")
        o = resolve("a", home=self.home, localUser="me")
        self.assertEqual((o.proxyJump, o.proxyCommand), (["j1", "u@j2:2022"], None))
        self.write("config", "Host a\n  ProxyCommand nc %h %p\n  ProxyJump j1\n")
        o = resolve("a", home=self.home, localUser="me")
        self.assertEqual((o.proxyJump, o.proxyCommand), ([], "nc a 22"))

    def test_strictValues(self) -> None:
        for given, expected in [
            ("yes", "yes"),
            ("accept-new", "accept-new"),
            ("ask", "ask"),
            ("no", "no"),
            ("off", "no"),
        ]:
            o = resolve(
                "h", home=self.home, localUser="me", options=[f"StrictHostKeyChecking={given}"]
            )
            self.assertEqual(o.strictHostKeyChecking, expected)
        with self.assertRaises(UsageError):
            resolve("h", home=self.home, localUser="me", options=["StrictHostKeyChecking=maybe"])

    def test_batchModeForbidsAsking(self) -> None:
        o = resolve("h", home=self.home, localUser="me", options=["BatchMode yes"])
        self.assertTrue(o.batchMode)
        self.assertFalse(o.allowPassword)
        self.assertFalse(o.allowKeyboardInteractive)

    def test_ignoredKeywordsRecorded(self) -> None:
        self.write("config", "Host *\n  ForwardAgent yes\n  Compression yes\n  ForwardAgent no\n")
        o = resolve("h", home=self.home, localUser="me")
        self.assertEqual(o.ignoredKeywords, ["forwardagent", "compression"])
        self.assertNotIn("forwardagent", SUPPORTED_KEYWORDS)

    def test_knownHostsNameAndAlias(self) -> None:
        self.assertEqual(resolve("h", home=self.home, localUser="me").knownHostsName(), "h")
        o = resolve("h:2222", home=self.home, localUser="me", options=["HostKeyAlias=alias"])
        self.assertEqual(o.knownHostsName(), "[alias]:2222")

    def test_portConflict(self) -> None:
        """
        A :port in the destination and a different -p: an error; the same
        port twice is fine.
        """
        with self.assertRaises(UsageError) as e:
            resolve("h:2222", home=self.home, localUser="me", port=2223)
        self.assertEqual(e.exception.exitCode, 2)
        self.assertEqual(resolve("h:2222", home=self.home, localUser="me", port=2222).port, 2222)

    def test_explicitConfigFileAndNone(self) -> None:
        self.write("config", "Host *\n  User fromdefault\n")
        other = self.write("other", "Host *\n  User fromother\n")
        self.assertEqual(
            resolve("h", home=self.home, localUser="me", configFile=other).user, "fromother"
        )
        self.assertEqual(resolve("h", home=self.home, localUser="me", configFile="none").user, "me")
        with self.assertRaises(UsageError):
            resolve("h", home=self.home, localUser="me", configFile="/nonexistent/config")

    def test_badValues(self) -> None:
        for option in ["Port=abc", "ServerAliveInterval=x", "BatchMode=perhaps", "Host=x"]:
            with self.assertRaises(UsageError):
                resolve("h", home=self.home, localUser="me", options=[option])

    def test_identityAgent(self) -> None:
        os.environ["SSH_AUTH_SOCK"] = "/run/agent.sock"
        self.assertEqual(
            resolve("h", home=self.home, localUser="me").identityAgent, "/run/agent.sock"
        )
        o = resolve("h", home=self.home, localUser="me", options=["IdentityAgent none"])
        self.assertEqual((o.identityAgent, o.useAgent), (None, False))
