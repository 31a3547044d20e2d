"""
User authentication of the outbound SSH client.

Methods, in OpenSSH's order: public key (agent keys, then identity files),
keyboard-interactive, password.  The last two, and passphrases of key
files, need someone to ask: an injected L{Prompt} or a terminal.

Interop fixes over Conch's L{SSHUserAuthClient}:
  - RSA keys are offered and signed as C{rsa-sha2-512}/C{rsa-sha2-256},
    chosen from the server's C{server-sig-algs}; Conch uses C{ssh-rsa}
    (SHA-1), which OpenSSH >= 8.8 refuses.  The same for agent keys: the
    sign request carries C{SSH_AGENT_RSA_SHA2_256}/C{_512}.
  - A failure is one sentence naming what was tried
    (L{AuthenticationFailed}), not a bare disconnect.
"""

# Conch is untyped: its calls are checked by the tests, not by mypy.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import base64
import getpass
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh import keys, transport, userauth
from twisted.conch.ssh.agent import SSHAgentClient
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.service import SSHService
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchshare.errors import AuthenticationFailed
from conchshare.reactors import orGlobalReactor
from conchshare.tunnel.prompt import Prompt, callPrompt, fingerprint, keyTypeName
from conchshare.tunnel.sshconfig import ConnectOptions, isTerminal

_log = Logger()

SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4
_AGENTC_SIGN_REQUEST = 13

#: How often a passphrase, password or keyboard-interactive round is asked.
NUMBER_OF_PROMPTS = 3


def terminalPrompt(text: str, echo: bool) -> str:
    """
    Ask on the controlling terminal (blocks; only used before anything else
    runs on the connection).

    @return: the answer, without the newline.
    """
    if echo:
        try:
            with open("/dev/tty", "r+") as tty:
                tty.write(text)
                tty.flush()
                return tty.readline().rstrip("\n")
        except OSError:
            return input(text)
    return getpass.getpass(text)


#: The longest Unix socket path (C{sun_path} holds 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


class _SocketPathTooLong(OSError):
    """
    The agent socket path does not fit in a C{sockaddr_un}.
    """


class AgentClient(SSHAgentClient):
    """
    The agent protocol with the sign-request flags Conch leaves at 0.
    """

    def signWithFlags(self, blob: bytes, data: bytes, flags: int) -> Deferred[bytes]:
        """
        Ask the agent to sign.

        @param flags: C{SSH_AGENT_RSA_SHA2_256} or C{_512} for RSA keys.
        @return: a Deferred firing with the signature blob (algorithm name
            and signature, as sent in the userauth request), or failing with
            L{twisted.conch.error.ConchError} if the agent refuses.
        """
        req = NS(blob) + NS(data) + struct.pack("!L", flags)
        d: Deferred[bytes] = self.sendRequest(_AGENTC_SIGN_REQUEST, req)
        return d.addCallback(self._cbSignData)


@dataclass
class _Candidate:
    """
    One key to offer: from the agent (C{agentBlob}) or from a file (C{path}).
    """

    label: str
    publicKey: keys.Key | None
    path: str | None = None
    agentBlob: bytes | None = None
    privateKey: keys.Key | None = None


#: The key type conchshare neither offers nor loads (OpenSSH dropped it too).
DSA_KEY_TYPE = b"ssh-dss"


def _blobType(blob: bytes) -> bytes:
    """
    The key type named at the start of an SSH public key blob (C{b""} if
    the blob is too short to name one).
    """
    if len(blob) < 4:
        return b""
    (size,) = struct.unpack(">L", blob[:4])
    return blob[4 : 4 + size]


def isDSAKeyFile(path: str) -> bool:
    """
    Whether C{path} holds a DSA key, public (C{ssh-dss AAAA...}) or private
    (PEM C{DSA PRIVATE KEY} or an OpenSSH private key whose public part is
    C{ssh-dss}), judged from its text without parsing the key.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    text = head.strip()
    if text.startswith(DSA_KEY_TYPE + b" ") or b"-----BEGIN DSA PRIVATE KEY-----" in text:
        return True
    begin, end = b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----"
    if not text.startswith(begin) or end not in text:
        return False
    try:
        data = base64.b64decode(b"".join(text[len(begin) : text.index(end)].split()))
        magic = b"openssh-key-v1\x00"
        if not data.startswith(magic):
            return False
        rest = data[len(magic) :]
        for _ in range(3):  # cipher name, KDF name, KDF options
            _, rest = getNS(rest)
        rest = rest[4:]  # the number of keys
        publicBlob, _ = getNS(rest)
    except Exception:
        return False
    return _blobType(publicBlob) == DSA_KEY_TYPE


def _loadPublicKey(path: str) -> keys.Key | None:
    for candidate in (path + ".pub", path):
        if isDSAKeyFile(candidate):
            return None
        try:
            key = keys.Key.fromFile(candidate)
        except Exception:
            # Missing, encrypted without a .pub, or not a key: try the next.
            continue
        public: keys.Key = key.public()
        return public
    return None


def _readIdentityFiles(paths: list[str]) -> list[tuple[str, keys.Key | None, bool, str, bool]]:
    """
    For each identity file (in a thread: reading may wait): its path, its
    public key if readable without a passphrase, whether it exists, its
    label, and whether it is a DSA key (not offered).
    """
    found = []
    for path in paths:
        key = _loadPublicKey(path)
        exists = key is not None or os.path.exists(path)
        dsa = key is None and (isDSAKeyFile(path) or isDSAKeyFile(path + ".pub"))
        found.append((path, key, exists, _shortPath(path), dsa))
    return found


def _shortPath(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home != "/" and path.startswith(home + "/") else path


class ShareUserAuthClient(userauth.SSHUserAuthClient):
    """
    Authenticate as C{options.user}, then start C{instance}.

    @ivar failure: the L{AuthenticationFailed} once every method failed,
        else L{None}.
    @ivar tried: what was tried, for the failure message.
    @ivar succeeded: authentication succeeded.
    """

    preferredOrder = [b"publickey", b"keyboard-interactive", b"password"]

    def __init__(
        self,
        options: ConnectOptions,
        instance: SSHService,
        *,
        reactor: Any = None,
        prompt: Prompt | None = None,
        terminal: Callable[[], bool] = isTerminal,
        keyCache: dict[str, keys.Key] | None = None,
    ) -> None:
        """
        @param options: who to log in as, with what.
        @param instance: the service to start once authenticated.
        @param reactor: for connecting to the agent (an L{IReactorUNIX}).
        @param prompt: asks for passphrases and passwords; L{None} asks on
            a terminal if there is one, else nothing is asked.
        @param keyCache: decrypted key files by path, kept across the
            connections of one factory so a reconnect does not ask for a
            passphrase again (in memory only, like ssh-agent).
        """
        super().__init__(options.user.encode("utf-8"), instance)
        self.options = options
        self.reactor = orGlobalReactor(reactor)
        self.prompt = prompt
        self.terminal = terminal
        self.keyCache = keyCache if keyCache is not None else {}
        self.failure: AuthenticationFailed | None = None
        self.succeeded = False
        self.tried: list[str] = []
        self.serverMethods = b""
        self._candidates: list[_Candidate] | None = None
        self._prepared: Deferred[None] | None = None
        self._agent: AgentClient | None = None
        self._current: _Candidate | None = None
        self._algorithm = b""
        self._passwordTries = 0
        self._kbdTries = 0

    # -- asking

    def _prompter(self) -> Prompt | None:
        if self.options.batchMode:
            return None
        if self.prompt is not None:
            return self.prompt
        return terminalPrompt if self.terminal() else None

    def _ask(self, text: str, echo: bool) -> Deferred[str]:
        prompter = self._prompter()
        if prompter is None:
            return defer.fail(AuthenticationFailed("nobody to ask"))
        # A person may take longer than ConnectTimeout to answer.
        stopTimeout = getattr(self.transport, "cancelConnectTimeout", None)
        if stopTimeout is not None:
            stopTimeout()
        getThreadPool = getattr(self.reactor, "getThreadPool", None)
        if prompter is terminalPrompt and getThreadPool is not None:
            # Reading the terminal blocks: keep the reactor running meanwhile.
            return threads.deferToThreadPool(
                self.reactor, getThreadPool(), terminalPrompt, text, echo
            )
        return callPrompt(prompter, text, echo)

    # -- collecting keys

    def _prepare(self) -> Deferred[None]:
        if self._prepared is None:
            self._prepared = defer.ensureDeferred(self._collect())
        return self._prepared

    def _inThread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{function} in the reactor's thread pool: reading key files
        may wait (a home directory on NFS), and the reactor must not.  With
        a reactor that has no thread pool (a test's fake), call it here.

        @return: a Deferred firing with its result or failing with its
            exception.
        """
        getThreadPool = getattr(self.reactor, "getThreadPool", None)
        if getThreadPool is None:
            return defer.maybeDeferred(function, *args, **kwargs)
        return threads.deferToThreadPool(self.reactor, getThreadPool(), function, *args, **kwargs)

    async def _collect(self) -> None:
        candidates: list[_Candidate] = []
        fileKeys: list[tuple[str, keys.Key | None, bool, str, bool]] = await self._inThread(
            _readIdentityFiles, list(self.options.identityFiles)
        )
        fileBlobs = {k.blob() for _, k, _, _, _ in fileKeys if k is not None}
        seen: set[bytes] = set()
        if self.options.useAgent and self.options.identityAgent and self.options.allowPublicKey:
            identities: list[tuple[bytes, bytes]] = []
            try:
                self._agent = await self._connectAgent(self.options.identityAgent)
                identities = await self._agent.requestIdentities()
            except _SocketPathTooLong:
                self.tried.append(f"agent (socket path longer than {MAX_SOCKET_PATH} bytes)")
            except Exception as e:
                _log.debug("ssh-agent not usable: {e}", e=e)
                self.tried.append("agent (not reachable)")
            else:
                usable = 0
                for blob, comment in identities:
                    if self.options.identitiesOnly and blob not in fileBlobs:
                        continue
                    if _blobType(blob) == DSA_KEY_TYPE:
                        continue  # not offered: see DSA_KEY_TYPE
                    try:
                        key = keys.Key.fromString(blob)
                    except Exception:
                        continue  # certificates, sk keys: not for us
                    usable += 1
                    seen.add(blob)
                    label = comment.decode("utf-8", "replace") or fingerprint(key)
                    candidates.append(_Candidate(f"agent key {label}", key, agentBlob=blob))
                if not usable:
                    self.tried.append("agent (no keys)")
        for path, key, exists, label, dsa in fileKeys:
            if key is not None and key.blob() in seen:
                continue
            if key is None and dsa:
                self.tried.append(f"{label} (DSA keys are not supported)")
                continue
            if key is None and not exists:
                _log.debug("identity file {path} does not exist", path=path)
                continue
            candidates.append(_Candidate(label, key, path=path))
        self._candidates = candidates if self.options.allowPublicKey else []

    def _connectAgent(self, path: str) -> Deferred[AgentClient]:
        if not IReactorUNIX.providedBy(self.reactor):
            return defer.fail(OSError("no UNIX sockets"))
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            # Twisted would wait for its timeout and then fail with a
            # TypeError in doConnect (it passes the message to strerror).
            return defer.fail(_SocketPathTooLong(path))
        endpoint = UNIXClientEndpoint(self.reactor, path, timeout=5)
        d: Deferred[AgentClient] = endpoint.connect(Factory.forProtocol(AgentClient))
        return d

    def _loadPrivate(self, candidate: _Candidate) -> Deferred[keys.Key]:
        """
        Load a key file, asking for its passphrase if it has one.

        @return: a Deferred firing with the private key, or failing when it
            cannot be read or the passphrase is wrong or cannot be asked.
        """
        path = candidate.path
        assert path is not None  # only file candidates come here
        if path in self.keyCache:
            return defer.succeed(self.keyCache[path])
        tries = 0

        def attempt(_: object = None) -> Deferred[keys.Key]:
            nonlocal tries
            tries += 1
            d = self._ask(f"Enter passphrase for key '{path}': ", False)

            def load(passphrase: str) -> Deferred[keys.Key]:
                # The key derivation takes a while too (bcrypt).
                loading = self._inThread(
                    keys.Key.fromFile, path, passphrase=passphrase.encode("utf-8")
                )

                def loaded(key: keys.Key) -> keys.Key:
                    self.keyCache[path] = key
                    return key

                def wrong(f: Failure) -> Failure | Deferred[keys.Key]:
                    if tries >= NUMBER_OF_PROMPTS:
                        candidate.label += " (wrong passphrase)"
                        return f
                    return attempt()

                return loading.addCallbacks(loaded, wrong)

            def cannotAsk(f: Failure) -> Failure:
                if f.check(AuthenticationFailed):
                    candidate.label += " (passphrase not asked: no terminal)"
                return f

            return d.addCallbacks(load, cannotAsk)

        def unreadable(f: Failure) -> Any:
            if f.check(keys.EncryptedKeyError):
                return attempt()
            candidate.label += " (not readable)"
            return f

        loading: Deferred[keys.Key] = self._inThread(keys.Key.fromFile, path)
        loading.addErrback(unreadable)
        return loading

    def _nextCandidate(self) -> Deferred[_Candidate | None]:
        assert self._candidates is not None
        if not self._candidates:
            return defer.succeed(None)
        candidate = self._candidates.pop(0)
        self.tried.append(candidate.label)
        if candidate.publicKey is not None:
            return defer.succeed(candidate)
        # A key file without a readable public part: load it first.
        d = self._loadPrivate(candidate)

        def loaded(key: keys.Key) -> _Candidate:
            candidate.privateKey = key
            candidate.publicKey = key.public()
            return candidate

        def failed(f: Failure) -> Deferred[_Candidate | None]:
            self.tried[-1] = candidate.label
            _log.debug("cannot use {path}: {f}", path=candidate.path, f=f.getErrorMessage())
            return self._nextCandidate()

        return d.addCallbacks(loaded, failed)

    def _algorithmFor(self, key: keys.Key) -> bytes:
        if key.type() != "RSA":
            return bytes(key.sshType())
        extensions = getattr(self.transport, "peerExtensions", {})
        serverAlgs = extensions.get(b"server-sig-algs", b"").split(b",")
        for algorithm in (b"rsa-sha2-512", b"rsa-sha2-256"):
            if algorithm in serverAlgs:
                return algorithm
        # No server-sig-algs: OpenSSH falls back to ssh-rsa too.
        return b"ssh-rsa"

    # -- Conch hooks

    def ssh_USERAUTH_SUCCESS(self, packet: bytes) -> None:
        self.succeeded = True
        self._closeAgent()
        super().ssh_USERAUTH_SUCCESS(packet)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self.serverMethods = getNS(packet)[0]
        return super().ssh_USERAUTH_FAILURE(packet)

    def _cbUserauthFailure(self, result: Any, iterator: Any) -> Any:
        if result:
            return None
        try:
            method = next(iterator)
        except StopIteration:
            self.failure = AuthenticationFailed(self.failureMessage())
            self._closeAgent()
            if self.transport is None:
                return None
            self.transport.sendDisconnect(
                transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                b"no more authentication methods available",
            )
            return None
        d = defer.maybeDeferred(self.tryAuth, method)
        d.addCallback(self._cbUserauthFailure, iterator)
        return d

    def failureMessage(self) -> str:
        """
        The one sentence for a failed authentication.
        """
        methods = self.serverMethods.decode("ascii", "replace") or "none"
        tried = ", ".join(self.tried) if self.tried else "nothing (no keys, nobody to ask)"
        where = f"{self.options.user}@{self.options.displayName()}"
        return f"Permission denied ({methods}) for {where}; tried: {tried}."

    def serviceStopped(self) -> None:
        self._closeAgent()

    def _closeAgent(self) -> None:
        if self._agent is not None and self._agent.transport is not None:
            self._agent.transport.loseConnection()
        self._agent = None

    def auth_publickey(self) -> Deferred[bool]:
        d = self._prepare().addCallback(lambda _: self._nextCandidate())

        def offer(candidate: _Candidate | None) -> bool:
            if candidate is None or candidate.publicKey is None:
                return False
            self._current = candidate
            self.lastPublicKey = candidate.publicKey
            self._algorithm = self._algorithmFor(candidate.publicKey)
            _log.debug(
                "offering {kind} key {label} as {alg}",
                kind=keyTypeName(candidate.publicKey),
                label=candidate.label,
                alg=self._algorithm,
            )
            self.askForAuth(
                b"publickey",
                b"\x00" + NS(self._algorithm) + NS(candidate.publicKey.blob()),
            )
            return True

        return d.addCallback(offer)

    def ssh_USERAUTH_PK_OK_publickey(self, packet: bytes) -> None:
        candidate = self._current
        sessionID = getattr(self.transport, "sessionID", None)
        if candidate is None or candidate.publicKey is None or sessionID is None:
            self.askForAuth(b"none", b"")
            return
        blob = candidate.publicKey.blob()
        data = (
            NS(sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + NS(self.user)
            + NS(self.instance.name)
            + NS(b"publickey")
            + b"\x01"
            + NS(self._algorithm)
            + NS(blob)
        )
        algorithm = self._algorithm
        agent = self._agent

        async def sign() -> bytes:
            if candidate.agentBlob is not None and agent is not None:
                flags = {
                    b"rsa-sha2-256": SSH_AGENT_RSA_SHA2_256,
                    b"rsa-sha2-512": SSH_AGENT_RSA_SHA2_512,
                }.get(algorithm, 0)
                return await agent.signWithFlags(candidate.agentBlob, data, flags)
            if candidate.privateKey is None:
                candidate.privateKey = await self._loadPrivate(candidate)
            return bytes(candidate.privateKey.sign(data, signatureType=algorithm))

        d = defer.ensureDeferred(sign())

        def send(signature: bytes) -> None:
            self.askForAuth(b"publickey", b"\x01" + NS(algorithm) + NS(blob) + NS(signature))

        def failed(f: Failure) -> None:
            _log.debug(
                "signing with {label} failed: {f}", label=candidate.label, f=f.getErrorMessage()
            )
            if self.tried and self.tried[-1] != candidate.label:
                self.tried[-1] = candidate.label
            self.askForAuth(b"none", b"")

        d.addCallbacks(send, failed)

    def auth_password(self) -> bool:
        if not self.options.allowPassword or self._prompter() is None:
            return False
        if self._passwordTries >= NUMBER_OF_PROMPTS:
            return False
        self._passwordTries += 1
        if "password" not in self.tried:
            self.tried.append("password")
        host = self.options.host
        d = self._ask(f"{self.options.user}@{host}'s password: ", False)
        d.addCallbacks(lambda p: self._cbPassword(p.encode("utf-8")), self._ebAuth)
        return True

    def auth_keyboard_interactive(self) -> bool:
        if not self.options.allowKeyboardInteractive or self._prompter() is None:
            return False
        if self._kbdTries >= NUMBER_OF_PROMPTS:
            return False
        self._kbdTries += 1
        if "keyboard-interactive" not in self.tried:
            self.tried.append("keyboard-interactive")
        self.askForAuth(b"keyboard-interactive", NS(b"") + NS(b""))
        return True

    def getGenericAnswers(
        self, name: bytes, instruction: bytes, prompts: list[tuple[bytes, bool]]
    ) -> Deferred[list[str]]:
        """
        Ask each keyboard-interactive question in turn.

        @return: a Deferred firing with the answers.
        """

        async def ask() -> list[str]:
            answers = []
            header = "\n".join(t.decode("utf-8", "replace") for t in (name, instruction) if t)
            for i, (text, echo) in enumerate(prompts):
                question = text.decode("utf-8", "replace")
                if i == 0 and header:
                    question = header + "\n" + question
                answers.append(await self._ask(question, bool(echo)))
            return answers

        return defer.ensureDeferred(ask())
