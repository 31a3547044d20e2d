"""
Warnings that conchshare's dependencies emit for code conchshare does not
run, kept off the user's terminal.

Conch's L{twisted.conch.ssh.keys.Key} names cryptography's DSA classes in
the C{isinstance} chains of C{type()}, C{isPublic()} and C{data()}, and
cryptography >= 51 warns ("DSA is deprecated") on every such name lookup:
so every Ed25519 or ECDSA key warns, though no DSA key is in play
(twisted/twisted#12684).  conchshare neither offers nor loads DSA keys
(no C{ssh-dss} host key algorithm, no DSA identity files or agent keys,
C{ssh-dss} known_hosts lines read as text only), so this warning, from that
module, never concerns DSA use of ours and is ignored; every other warning
is left alone.
"""

from __future__ import annotations

import warnings

# Matches the module name ("twisted.conch.ssh.keys") and also the file path
# without ".py", which warnings.warn_explicit uses when given no module (as
# twisted.trial does when it re-emits a test's warnings).
_CONCH_KEYS = r"(.*[/\\])?twisted[./\\]conch[./\\]ssh[./\\]keys\Z"


def ignoreConchDSANames() -> None:
    """
    Ignore cryptography's C{DSA is deprecated} warning when it is raised by
    Conch's key module; idempotent.
    """
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # pragma: no cover - cryptography is a dependency
        return
    warnings.filterwarnings(
        "ignore",
        message=r"DSA is deprecated",
        category=CryptographyDeprecationWarning,
        module=_CONCH_KEYS,
    )
