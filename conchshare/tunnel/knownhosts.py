"""
Host key verification against OpenSSH known_hosts files.

Read: plain entries (comma-separated patterns with C{*}, C{?} and C{!}),
hashed entries (C{|1|salt|hash}), the C{[host]:port} form for ports other
than 22, C{@revoked} lines; C{@cert-authority} lines are skipped (no
certificates here).  Lines are matched as text; only the keys Conch
parses are parsed (never C{ssh-dss}: see L{TEXT_ONLY_KEY_TYPES}).

Policy (C{StrictHostKeyChecking}):
  - a known key: accepted;
  - a changed key (the host is known, by any key of any type, and none of
    its keys matches): refused under I{every} setting, the prompt included,
    with both fingerprints, the known keys and the way out
    (L{HostKeyChanged}) -- stricter than OpenSSH on purpose.  A line of a
    type conchshare does not parse (C{ssh-dss}, C{sk-*}) makes its host
    known all the same;
  - a revoked key: refused (L{HostKeyError});
  - an unknown key: C{accept-new} and C{no} record it (C{no} warns),
    C{ask} asks on a terminal (or the injected prompt) unless C{BatchMode},
    anything else refuses with the fingerprint (L{HostKeyUnknown}).
"""

# Conch is untyped: its calls are checked by the tests, not by mypy.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh.keys import Key
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from conchshare.errors import HostKeyChanged, HostKeyError, HostKeyUnknown
from conchshare.tunnel.prompt import Prompt, blobFingerprint, callPrompt, fingerprint, keyTypeName
from conchshare.tunnel.sshconfig import ConnectOptions, _matchPatternList, isTerminal

_log = Logger()


def knownHostsName(hostname: str, port: int) -> str:
    """
    The known_hosts host field: C{hostname} on port 22, else
    C{[hostname]:port}.
    """
    return hostname if port == 22 else f"[{hostname}]:{port}"


#: Key types whose known_hosts lines are read as text only, never given to
#: Conch: DSA (conchshare neither offers nor checks it; cryptography warns on
#: every DSA key).  Lines Conch cannot parse (C{sk-*}, certificates) are
#: read as text too.
TEXT_ONLY_KEY_TYPES = frozenset({b"ssh-dss"})


@dataclass
class KnownHostEntry:
    """
    One key line of a known_hosts file that applies to a host.

    @ivar keyType: the line's key type field, e.g. C{b"ssh-ed25519"}.
    @ivar blob: the key blob the line records.
    @ivar key: the parsed key, or L{None} for a type conchshare cannot (or
        does not) parse: such a line still makes the host known.
    """

    keyType: bytes
    blob: bytes
    key: Key | None
    path: str
    line: int
    revoked: bool

    @property
    def fingerprint(self) -> str:
        """
        The OpenSSH C{SHA256:...} fingerprint of the recorded key.
        """
        return blobFingerprint(self.blob)

    @property
    def typeName(self) -> str:
        """
        The key type as C{ssh-keygen -l} names it (C{ED25519}, C{DSA}, ...).
        """
        return sshTypeName(self.keyType)


def sshTypeName(keyType: bytes) -> str:
    """
    The name C{ssh-keygen -l} gives an SSH key type: C{ssh-ed25519} is
    C{ED25519}, C{ecdsa-sha2-*} C{ECDSA}, C{ssh-rsa} C{RSA}, C{ssh-dss}
    C{DSA}, C{sk-ssh-ed25519@openssh.com} C{ED25519-SK}.
    """
    text = keyType.decode("ascii", "replace")
    sk = text.startswith("sk-")
    base = text.removeprefix("sk-").split("@", 1)[0]
    if base.startswith("ecdsa-sha2-"):
        name = "ECDSA"
    else:
        name = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}.get(base, text)
    return name + "-SK" if sk else name


def _hostMatches(hostField: bytes, name: str) -> bool:
    if hostField.startswith(b"|1|"):
        # A hashed entry: |1|base64(salt)|base64(HMAC-SHA1(salt, name)).
        try:
            salt64, digest64 = hostField[3:].split(b"|")
            salt, digest = base64.b64decode(salt64), base64.b64decode(digest64)
        except ValueError:
            return False
        mine = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
        return hmac.compare_digest(mine, digest)
    return _matchPatternList(name, hostField.decode("utf-8", "replace").split(","))


def _parseKey(keyType: bytes, blob: bytes) -> Key | None:
    """
    The key of a line, or L{None} when it is read as text only.

    @raise ValueError: the blob does not hold a key of type C{keyType}.
    """
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")] != keyType:
        raise ValueError("the key blob does not match the key type")
    if keyType in TEXT_ONLY_KEY_TYPES:
        return None
    try:
        key: Key = Key.fromString(blob)
        return key
    except Exception:
        return None  # a type Conch does not know (sk-*, certificates)


def readEntries(path: str, name: str) -> list[KnownHostEntry]:
    """
    The entries of one known_hosts file for the host field C{name}
    (C{host} or C{[host]:port}); unreadable files and bad lines are
    skipped.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    found = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        revoked = False
        if line.startswith(b"@"):
            marker, _, line = line.partition(b" ")
            line = line.strip()
            if marker == b"@revoked":
                revoked = True
            else:
                continue  # @cert-authority: no certificates here
        fields = line.split(None, 3)
        if len(fields) < 3:
            continue
        hostField, keyType = fields[0], fields[1]
        if not _hostMatches(hostField, name):
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
            key = _parseKey(keyType, blob)
        except Exception as e:
            # A corrupt line must not stop the check of the others.
            _log.debug("skipping bad known_hosts line {path}:{n}: {e}", path=path, n=number, e=e)
            continue
        found.append(
            KnownHostEntry(
                keyType=keyType, blob=blob, key=key, path=path, line=number, revoked=revoked
            )
        )
    return found


def formatEntry(name: str, key: Key, hashed: bool) -> str:
    """
    A known_hosts line (without newline) for C{name} and C{key}.
    """
    blob = base64.b64encode(key.blob()).decode("ascii")
    keyType = key.sshType().decode("ascii")
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
        hostField = "|1|{}|{}".format(
            base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii")
        )
    else:
        hostField = name
    return f"{hostField} {keyType} {blob}"


def appendEntry(path: str, line: str) -> None:
    """
    Append a line to a known_hosts file, creating the file 0600 and its
    directory 0700 if needed.
    """
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")


class HostKeyVerifier:
    """
    Decide whether a server's host key is acceptable, by the known_hosts
    files and the C{StrictHostKeyChecking} setting of L{ConnectOptions}.

    @ivar warnings: sentences shown to the user (also logged at warn level).
    """

    def __init__(
        self,
        options: ConnectOptions,
        *,
        prompt: Prompt | None = None,
        terminal: Callable[[], bool] = isTerminal,
        reactor: Any = None,
    ) -> None:
        """
        @param prompt: asks a person (C{prompt(text, echo)}); L{None} means
            asking is possible only on a terminal, through
            L{conchshare.tunnel.auth.terminalPrompt}.
        @param terminal: whether a terminal is there to ask on.
        @param reactor: whose thread pool asks on the terminal, so that the
            reactor runs while a person answers (L{None}, or a reactor
            without a thread pool: asked in the calling thread).
        """
        self.options = options
        self.prompt = prompt
        self.terminal = terminal
        self.reactor = reactor
        self.warnings: list[str] = []

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        _log.warn("{text}", text=text)

    def _prompt(self) -> Prompt | None:
        if self.options.batchMode:
            return None
        if self.prompt is not None:
            return self.prompt
        if self.terminal():
            from conchshare.tunnel.auth import terminalPrompt

            getThreadPool = getattr(self.reactor, "getThreadPool", None)
            if getThreadPool is None:
                return terminalPrompt
            reactor = self.reactor

            def inThread(text: str, echo: bool) -> Deferred[str]:
                return deferToThreadPool(reactor, getThreadPool(), terminalPrompt, text, echo)

            return inThread
        return None

    def verify(self, hostname: str, port: int, hostKey: Key) -> Deferred[None]:
        """
        Check a host key.

        @param hostname: the host as connected to (C{HostKeyAlias} of the
            options wins).
        @param port: the port connected to.
        @return: a Deferred firing with L{None} when the key is accepted
            (maybe after recording it), or failing with L{HostKeyChanged},
            L{HostKeyUnknown} or L{HostKeyError} (revoked key).
        """
        try:
            return self._verify(hostname, port, hostKey)
        except HostKeyError as e:
            d: Deferred[None] = Deferred()
            d.errback(e)
            return d

    def _verify(self, hostname: str, port: int, hostKey: Key) -> Deferred[None]:
        options = self.options
        name = knownHostsName(options.hostKeyAlias or hostname, port)
        shown = options.displayName() if hostname == options.host else name
        entries: list[KnownHostEntry] = []
        for path in options.userKnownHostsFiles + options.globalKnownHostsFiles:
            entries.extend(readEntries(path, name))
        presented = fingerprint(hostKey)
        typeName = keyTypeName(hostKey)
        blob = hostKey.blob()
        if any(e.revoked and e.blob == blob for e in entries):
            raise HostKeyError(
                f"The {typeName} host key of {shown} ({presented}) is marked as revoked;"
                " refusing to connect."
            )
        current = [e for e in entries if not e.revoked]
        if any(e.blob == blob for e in current):
            return succeed(None)
        if current:
            raise self._changed(name, shown, hostKey, current)
        mode = options.strictHostKeyChecking
        if mode in ("accept-new", "no"):
            self._record(name, shown, hostKey)
            if mode == "no":
                self._warn(
                    f"Warning: accepted the unknown {typeName} host key {presented} of {shown}"
                    " without checking (StrictHostKeyChecking=no)."
                )
            return succeed(None)
        unknown = HostKeyUnknown(
            f"The authenticity of host {shown} can't be established: its {typeName} key"
            f" {presented} is not in known_hosts; check the fingerprint, then connect with --accept-new"
            " (-o StrictHostKeyChecking=accept-new) or add the key to"
            f" {options.userKnownHostsFiles[0] if options.userKnownHostsFiles else 'known_hosts'}.",
            fingerprint=presented,
        )
        prompt = self._prompt() if mode == "ask" else None
        if prompt is None:
            raise unknown
        question = (
            f"The authenticity of host '{shown}' can't be established.\n"
            f"{typeName} key fingerprint is {presented}.\n"
            "This key is not known by any other names.\n"
            "Are you sure you want to continue connecting (yes/no/[fingerprint])? "
        )

        def answered(answer: str) -> None:
            answer = answer.strip()
            if answer.lower() == "yes" or answer == presented:
                self._record(name, shown, hostKey)
                return None
            raise unknown

        return callPrompt(prompt, question, True).addCallback(answered)

    def _changed(
        self, name: str, shown: str, hostKey: Key, known: list[KnownHostEntry]
    ) -> HostKeyChanged:
        """
        The refusal of a host known by other keys than C{hostKey}: one
        sentence with both fingerprints, every known key (type, file, line)
        and the way out.
        """
        presented = fingerprint(hostKey)
        sameType = [e for e in known if e.keyType == hostKey.sshType()]
        first = (sameType or known)[0]
        records = ", ".join(
            f"{e.typeName} key {e.fingerprint} ({e.path} line {e.line})" for e in known
        )
        default = os.path.expanduser("~/.ssh/known_hosts")
        files = list(dict.fromkeys(e.path for e in known))
        removes = " and ".join(
            f"ssh-keygen -R '{name}'" + ("" if path == default else f" -f '{path}'")
            for path in files
        )
        return HostKeyChanged(
            f"WARNING: THE HOST KEY OF {shown} HAS CHANGED -- someone could be"
            f" eavesdropping on you right now: the server sent {keyTypeName(hostKey)} key"
            f" {presented}, but known_hosts records {records}; refusing to connect"
            f" (if the change is expected, remove the old {'keys' if len(known) > 1 else 'key'}"
            f" with {removes}, then connect with --accept-new"
            " (-o StrictHostKeyChecking=accept-new)).",
            fingerprint=presented,
            knownFingerprint=first.fingerprint,
        )

    def _record(self, name: str, shown: str, hostKey: Key) -> None:
        files = self.options.userKnownHostsFiles
        if not files:
            return
        try:
            appendEntry(files[0], formatEntry(name, hostKey, self.options.hashKnownHosts))
        except OSError as e:
            self._warn(f"Failed to add the host key of {shown} to {files[0]}: {e.strerror}.")
            return
        self._warn(
            f"Permanently added '{name}' ({keyTypeName(hostKey)}) to the list of known hosts."
        )

    def preferredKeyTypes(self, hostname: str, port: int) -> list[bytes]:
        """
        The SSH key types recorded for this host, so the transport can ask
        for them first (as OpenSSH does) and not for a type it cannot check.
        """
        name = knownHostsName(self.options.hostKeyAlias or hostname, port)
        types: list[bytes] = []
        for path in self.options.userKnownHostsFiles + self.options.globalKnownHostsFiles:
            for entry in readEntries(path, name):
                t = entry.keyType
                if not entry.revoked and t not in types:
                    types.append(t)
        return types
