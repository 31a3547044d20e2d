"""
Asking a person, and how a key is named to one: the L{Prompt} type,
L{callPrompt}, and OpenSSH's fingerprint and key type names.

Shared by host key checking (L{conchshare.tunnel.knownhosts}) and user
authentication (L{conchshare.tunnel.auth}); it imports neither.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred, fail, succeed

__all__ = ["Prompt", "blobFingerprint", "callPrompt", "fingerprint", "keyTypeName"]

#: Ask a person: C{prompt(text, echo)} returns the answer (or a Deferred
#: firing with it).  Used for host keys, passphrases and passwords.
Prompt = Callable[[str, bool], "Deferred[str] | str"]


def callPrompt(prompt: Prompt, text: str, echo: bool) -> Deferred[str]:
    """
    Call a L{Prompt}; a Deferred firing with its answer or failing with
    its exception.
    """
    try:
        answer = prompt(text, echo)
    except Exception:
        return fail()
    if isinstance(answer, Deferred):
        return answer
    return succeed(answer)


def fingerprint(key: Key) -> str:
    """
    The OpenSSH C{SHA256:...} fingerprint of a public key.
    """
    return blobFingerprint(key.blob())


def keyTypeName(key: Key) -> str:
    """
    The key type as C{ssh-keygen -l} names it: C{ED25519}, C{ECDSA}, C{RSA}.
    """
    name: str = key.type()
    return {"EC": "ECDSA", "Ed25519": "ED25519"}.get(name, name.upper())


def blobFingerprint(blob: bytes) -> str:
    """
    The OpenSSH C{SHA256:...} fingerprint of a public key blob.
    """
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
