"""
L{conchshare.depwarnings}: which dependency warnings are kept off the
user's terminal, and that every other one still shows.
"""

from __future__ import annotations

import warnings

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.utils import CryptographyDeprecationWarning
from twisted.conch.ssh.keys import Key
from twisted.trial.unittest import SynchronousTestCase

from conchshare.depwarnings import ignoreConchDSANames

DSA = "DSA is deprecated and support will be removed in a future release."


class IgnoreConchDSANamesTests(SynchronousTestCase):
    def emitted(self, module: str, message: str = DSA) -> list[str]:
        """
        What is shown of a warning raised in C{module}, with the filter
        installed in front of "always show".
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignoreConchDSANames()
            warnings.warn_explicit(
                message, CryptographyDeprecationWarning, module.replace(".", "/") + ".py", 1, module
            )
        return [str(w.message) for w in caught]

    def test_conchKeysIgnored(self) -> None:
        self.assertEqual(self.emitted("twisted.conch.ssh.keys"), [])

    def test_reEmittedByTrialIgnored(self) -> None:
        """
        trial re-emits a test's warnings with the file path as module.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignoreConchDSANames()
            warnings.warn_explicit(
                DSA, CryptographyDeprecationWarning, "/venv/lib/twisted/conch/ssh/keys.py", 979
            )
        self.assertEqual(caught, [])

    def test_othersShown(self) -> None:
        """
        The same warning from another module (a program's own DSA use), and
        other warnings from Conch's key module, still show.
        """
        self.assertEqual(self.emitted("myprogram.keys"), [DSA])
        self.assertEqual(
            self.emitted("twisted.conch.ssh.keys", "Blowfish has been deprecated"),
            ["Blowfish has been deprecated"],
        )

    def test_ed25519KeyQuiet(self) -> None:
        """
        Conch's key code names the DSA classes for every key: with the
        filter, an Ed25519 key's type, blob and public key show no warning.
        """
        key = Key(ed25519.Ed25519PrivateKey.generate())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ignoreConchDSANames()
            self.assertEqual((key.type(), key.public().isPublic()), ("Ed25519", True))
            key.public().blob()
        self.assertEqual([str(w.message) for w in caught], [])
