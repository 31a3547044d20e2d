"""
The C{[user@]host[:port]} destination of the command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from conchshare.errors import UsageError


@dataclass
class Destination:
    """
    Where to connect, as the user wrote it.

    @ivar host: a host name, an IP address (IPv6 without brackets) or a
        C{Host} alias of the ssh config.
    @ivar port: the port, or L{None} when not given.
    @ivar user: the user name, or L{None} when not given.
    """

    host: str
    port: int | None = None
    user: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port is None else f"{host}:{self.port}"
        return text if self.user is None else f"{self.user}@{text}"


def _parsePort(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"Bad port {text!r} in destination {whole!r}.")
    return int(text)


def parseDestination(text: str) -> Destination:
    """
    Parse C{[user@]host[:port]}; an IPv6 address takes brackets when a port
    follows (C{[::1]:2222}, C{user@[::1]:2222}); a bare IPv6 address
    (C{::1}) is accepted without a port.  C{ssh://[user@]host[:port]} is
    accepted too.

    @raise UsageError: the text is not a destination.
    """
    whole = text
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            raise UsageError(f"Empty user name in destination {whole!r}.")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UsageError(f"Missing ']' in destination {whole!r}.")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"Unexpected {rest!r} after ']' in destination {whole!r}.")
            port = _parsePort(rest[1:], whole)
    elif text.count(":") == 1:
        host, _, portText = text.partition(":")
        port = _parsePort(portText, whole)
    else:
        # No colon, or a bare IPv6 address.
        host = text
    if not host or any(c.isspace() for c in host) or host.startswith("-"):
        raise UsageError(f"Bad host name in destination {whole!r}.")
    return Destination(host=host, port=port, user=user)
