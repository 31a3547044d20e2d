"""
Parsing C{[user@]host[:port]}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from conchshare.errors import UsageError
from conchshare.tunnel.destination import Destination, parseDestination


class ParseDestinationTests(SynchronousTestCase):
    def test_forms(self) -> None:
        cases = {
            "host": Destination("host", None, None),
            "alice@host": Destination("host", None, "alice"),
            "host:2222": Destination("host", 2222, None),
            "alice@host:2222": Destination("host", 2222, "alice"),
            "[::1]:2222": Destination("::1", 2222, None),
            "alice@[::1]:2222": Destination("::1", 2222, "alice"),
            "[::1]": Destination("::1", None, None),
            "::1": Destination("::1", None, None),
            "fe80::1%eth0": Destination("fe80::1%eth0", None, None),
            "a@b@host": Destination("host", None, "a@b"),
            "ssh://alice@host:2022": Destination("host", 2022, "alice"),
            "192.0.2.1:22": Destination("192.0.2.1", 22, None),
        }
        for text, expected in cases.items():
            self.assertEqual(parseDestination(text), expected, text)

    def test_roundTrip(self) -> None:
        for text in ["host", "alice@host:2222", "alice@[::1]:2222", "[::1]"]:
            self.assertEqual(str(parseDestination(text)), text)

    def test_errors(self) -> None:
        for text in [
            "",
            "@host",
            "host:",
            "host:0",
            "host:65536",
            "host:x",
            "[::1",
            "[::1]x",
            "[::1]:",
            "alice@",
            "-oProxyCommand=x",
            "a b",
        ]:
            with self.assertRaises(UsageError, msg=text) as e:
                parseDestination(text)
            self.assertEqual(e.exception.exitCode, 2)
            self.assertIn(repr(text), str(e.exception))
