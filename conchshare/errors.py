"""
The exception family of conchshare: every failure a person sees.

Each error is one sentence (C{str(error)}) and has the exit code the command
ends with.  The codes are an interface, documented here and in the README:

    ===  ===================================================================
    1    any other error (L{ConchShareError} itself)
    2    bad usage: options, destination, share paths (L{UsageError})
    3    connection failed: unknown host, refused, timeout, dead peer,
         dropped (L{ConnectionFailed})
    4    authentication failed (L{AuthenticationFailed})
    5    host key unknown or changed (L{HostKeyError}, L{HostKeyUnknown},
         L{HostKeyChanged})
    6    the server refused a forward (L{ForwardRefused})
    7    the remote mount failed (L{MountFailed})
    ===  ===================================================================
"""

from __future__ import annotations

# Names that open a sentence as ssh prints it ("ssh: connect to host ...",
# "sshfs ..."): kept in lower case.
_COMMAND_NAMES = frozenset({"ssh", "sshfs", "socat", "fusermount", "fusermount3"})


def sentence(text: str, empty: str = "Unknown error.") -> str:
    """
    C{text} as one sentence: a capital first letter (unless it is a
    command's name) and a final period; C{empty} when there is no text.
    """
    text = text.strip()
    if not text:
        return empty
    if text.split(":", 1)[0].split(" ", 1)[0] not in _COMMAND_NAMES:
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


class ConchShareError(Exception):
    """
    A failure to report to a person as one sentence, without a traceback.

    @ivar exitCode: the exit status of the command when this error ends it.
    """

    exitCode: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ConchShareError):
    """
    The command line or the configuration is wrong (exit code 2).
    """

    exitCode = 2


class ConnectionFailed(ConchShareError):
    """
    The SSH connection could not be made or was lost: unknown host, refused,
    timed out, dead peer, dropped (exit code 3).
    """

    exitCode = 3


class AuthenticationFailed(ConchShareError):
    """
    The server accepted none of the authentication methods tried; the
    message names them (exit code 4).
    """

    exitCode = 4


class HostKeyError(ConchShareError):
    """
    The server's host key could not be verified (exit code 5).
    """

    exitCode = 5


class HostKeyUnknown(HostKeyError):
    """
    The server's host key is not in any known_hosts file; the message gives
    its SHA256 fingerprint and what to do.

    @ivar fingerprint: the key's C{SHA256:...} fingerprint.
    """

    def __init__(self, message: str, fingerprint: str = "") -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class HostKeyChanged(HostKeyError):
    """
    The server presented a key other than the one recorded for it: possibly
    a man-in-the-middle attack.  Refused under every setting.

    @ivar fingerprint: the presented key's C{SHA256:...} fingerprint.
    @ivar knownFingerprint: the recorded key's C{SHA256:...} fingerprint.
    """

    def __init__(self, message: str, fingerprint: str = "", knownFingerprint: str = "") -> None:
        super().__init__(message)
        self.fingerprint = fingerprint
        self.knownFingerprint = knownFingerprint


class ForwardRefused(ConchShareError):
    """
    The server refused a C{tcpip-forward} or C{streamlocal-forward} request
    (exit code 6).
    """

    exitCode = 6


class MountFailed(ConchShareError):
    """
    Mounting the share on the remote host failed (exit code 7).
    """

    exitCode = 7
