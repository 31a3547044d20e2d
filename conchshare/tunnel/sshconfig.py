"""
OpenSSH client configuration: C{~/.ssh/config} (or C{-F FILE}), C{-o
Key=Value}, C{-p}, C{-i}, C{-J} and the destination, resolved into one
L{ConnectOptions} the way C{ssh} does it.

Rules (as in C{ssh_config(5)}):
  - the first value obtained for a keyword wins; the command line is read
    first, so it wins over the file; C{IdentityFile} accumulates;
  - C{Host} patterns are matched against the host as typed (the alias),
    C{Match host} against the C{HostName} set so far (or the alias),
    C{Match originalhost} against the alias; C{Match all}, C{user},
    C{localuser} are supported; C{Match exec}, C{canonical}, C{final},
    C{tagged}, C{localnetwork} never match (they are logged);
  - C{Include} takes globs, relative to C{~/.ssh}; included lines apply only
    where the C{Include} line applies;
  - tokens: C{%h %p %r %u %d %n %%} (and C{%l %L %i %k %j %C}) in C{IdentityFile},
    C{ProxyCommand}, C{UserKnownHostsFile}, C{IdentityAgent}; C{%h %%} in
    C{HostName}.

Keywords honoured: L{SUPPORTED_KEYWORDS}.  Every other keyword met in an
applicable block is recorded in L{ConnectOptions.ignoredKeywords} and
logged at debug level; it changes nothing.

Differences from OpenSSH on purpose: a changed host key is refused under
every C{StrictHostKeyChecking} setting; C{ServerAliveInterval} defaults to
15 s and C{ConnectTimeout} to 15 s.
"""

from __future__ import annotations

import getpass
import glob
import hashlib
import os
import re
import shlex
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.logger import Logger

from conchshare.errors import UsageError
from conchshare.tunnel.destination import parseDestination

_log = Logger()

#: Keywords that change what conchshare does (lower case).
SUPPORTED_KEYWORDS = frozenset(
    {
        "host",
        "match",
        "include",
        "hostname",
        "user",
        "port",
        "identityfile",
        "identitiesonly",
        "identityagent",
        "userknownhostsfile",
        "globalknownhostsfile",
        "stricthostkeychecking",
        "hostkeyalias",
        "serveraliveinterval",
        "serveralivecountmax",
        "proxyjump",
        "proxycommand",
        "connecttimeout",
        "batchmode",
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "challengeresponseauthentication",
        "pubkeyauthentication",
        "hashknownhosts",
    }
)

_DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
_DEFAULT_USER_KNOWN_HOSTS = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
_DEFAULT_GLOBAL_KNOWN_HOSTS = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
_MAX_INCLUDE_DEPTH = 16

_STRICT = {
    "yes": "yes",
    "true": "yes",
    "accept-new": "accept-new",
    "ask": "ask",
    "no": "no",
    "off": "no",
    "false": "no",
}
_BOOL = {"yes": True, "true": True, "no": False, "false": False}


@dataclass
class ConnectOptions:
    """
    Everything needed to make one SSH connection, resolved.

    @ivar host: the real host name or address to connect to (C{HostName}).
    @ivar port: the TCP port.
    @ivar user: the remote user name.
    @ivar originalHost: the host as typed (a C{Host} alias, maybe).
    @ivar hostKeyAlias: the name to look the host key up under, or L{None}
        (then C{host} is used).
    @ivar identityFiles: private key files to try, in order (expanded;
        missing default files are already left out).
    @ivar identitiesOnly: use only C{identityFiles}, even if the agent has
        other keys.
    @ivar identityAgent: the agent socket path, or L{None} for none.
    @ivar userKnownHostsFiles: expanded paths; new keys go to the first.
    @ivar globalKnownHostsFiles: expanded paths, read only.
    @ivar strictHostKeyChecking: C{"yes"}, C{"accept-new"}, C{"ask"} or
        C{"no"}; a changed key is refused under every setting.
    @ivar hashKnownHosts: record new host keys hashed.
    @ivar serverAliveInterval: seconds between keep-alives; 0 disables.
    @ivar serverAliveCountMax: unanswered keep-alives before giving up.
    @ivar proxyJump: jump hosts (C{[user@]host[:port]}), first hop first.
    @ivar proxyCommand: a command whose stdio is the connection (tokens
        expanded), or L{None}.
    @ivar connectTimeout: seconds for the TCP connection and the SSH
        handshake up to authentication.
    @ivar batchMode: never ask anything.
    @ivar useAgent: try keys from the agent.
    @ivar allowPublicKey: try public-key authentication.
    @ivar allowPassword: try password authentication (if it can be asked).
    @ivar allowKeyboardInteractive: try keyboard-interactive (if it can be
        asked).
    @ivar configFile: the config file read (for the jump hosts), or L{None}.
    @ivar commandLineOptions: the C{-o} values given (jump hosts get them
        too, so C{--known-hosts} and C{--accept-new} apply to every hop).
    @ivar commandLineIdentities: the C{-i} values given (also for hops).
    @ivar ignoredKeywords: keywords met in applicable blocks that
        conchshare ignores (lower case, in order, without duplicates).
    """

    host: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    originalHost: str = ""
    hostKeyAlias: str | None = None
    identityFiles: list[str] = field(default_factory=list)
    identitiesOnly: bool = False
    identityAgent: str | None = None
    userKnownHostsFiles: list[str] = field(default_factory=list)
    globalKnownHostsFiles: list[str] = field(default_factory=list)
    strictHostKeyChecking: str = "ask"
    hashKnownHosts: bool = False
    serverAliveInterval: float = 15.0
    serverAliveCountMax: int = 3
    proxyJump: list[str] = field(default_factory=list)
    proxyCommand: str | None = None
    connectTimeout: float = 15.0
    batchMode: bool = False
    useAgent: bool = True
    allowPublicKey: bool = True
    allowPassword: bool = True
    allowKeyboardInteractive: bool = True
    configFile: str | None = None
    commandLineOptions: list[str] = field(default_factory=list)
    commandLineIdentities: list[str] = field(default_factory=list)
    ignoredKeywords: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.originalHost:
            self.originalHost = self.host

    def knownHostsName(self) -> str:
        """
        The host field used in known_hosts for this host and port:
        C{name}, or C{[name]:port} when the port is not 22.
        """
        name = self.hostKeyAlias or self.host
        return name if self.port == 22 else f"[{name}]:{self.port}"

    def displayName(self) -> str:
        """
        C{host} or C{host:port} (IPv6 in brackets) for messages.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 22 else f"{host}:{self.port}"


def _splitLine(line: str) -> tuple[str, list[str]] | None:
    """
    Split a config line into its lower-case keyword and its arguments
    (quotes honoured), or L{None} for blank and comment lines.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    # "Keyword Value", "Keyword=Value", "Keyword = Value".
    keyword, rest = line, ""
    for i, c in enumerate(line):
        if c.isspace() or c == "=":
            keyword, rest = line[:i], line[i:].strip()
            if rest.startswith("="):
                rest = rest[1:].strip()
            break
    try:
        args = shlex.split(rest, comments=False, posix=True)
    except ValueError as e:
        raise UsageError(f"Bad quoting in ssh config line {line!r}: {e}.")
    return keyword.lower(), args


def _wildcard(pattern: str) -> re.Pattern[str]:
    """
    An OpenSSH wildcard pattern (only C{*} and C{?} are special; brackets
    are literal, as in C{[host]:port}) as a case-insensitive regex.
    """
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _matchPatternList(name: str, patterns: Sequence[str]) -> bool:
    """
    OpenSSH pattern-list matching: true when some pattern matches and no
    negated (C{!}) pattern does; case-insensitive.
    """
    name = name.lower()
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if _wildcard(pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


class _Resolver:
    """
    Reads config lines and keeps the first value of each keyword.
    """

    def __init__(self, originalHost: str, localUser: str, home: str) -> None:
        self.originalHost = originalHost
        self.localUser = localUser
        self.home = home
        self.values: dict[str, list[str]] = {}
        self.identityFiles: list[str] = []
        self.ignored: list[str] = []

    def _currentHost(self) -> str:
        hostName = self.values.get("hostname")
        if hostName:
            return hostName[0].replace("%h", self.originalHost)
        return self.originalHost

    def _matches(self, args: list[str], where: str) -> bool:
        if not args:
            raise UsageError(f"Missing criteria after 'Match' in {where}.")
        i = 0
        result = True
        while i < len(args):
            criterion = args[i].lower()
            negate = criterion.startswith("!")
            if negate:
                criterion = criterion[1:]
            if criterion == "all":
                ok = True
                i += 1
            elif criterion in ("canonical", "final"):
                ok = False
                i += 1
                _log.debug("ssh config: 'Match {c}' is not supported, never matches", c=criterion)
            else:
                if i + 1 >= len(args):
                    raise UsageError(f"Missing argument after 'Match {criterion}' in {where}.")
                value = args[i + 1]
                i += 2
                patterns = value.split(",")
                if criterion == "host":
                    ok = _matchPatternList(self._currentHost(), patterns)
                elif criterion == "originalhost":
                    ok = _matchPatternList(self.originalHost, patterns)
                elif criterion == "user":
                    user = self.values.get("user", [self.localUser])[0]
                    ok = _matchPatternList(user, patterns)
                elif criterion == "localuser":
                    ok = _matchPatternList(self.localUser, patterns)
                else:
                    _log.debug(
                        "ssh config: 'Match {c}' is not supported, never matches", c=criterion
                    )
                    ok = False
            if negate:
                ok = not ok
            result = result and ok
        return result

    def readLines(self, lines: Sequence[str], where: str, active: bool, depth: int) -> None:
        """
        Apply config lines; C{active} tells whether the lines before the
        first C{Host}/C{Match} apply.
        """
        for number, raw in enumerate(lines, 1):
            parsed = _splitLine(raw)
            if parsed is None:
                continue
            keyword, args = parsed
            place = f"{where} line {number}"
            if keyword == "host":
                active = _matchPatternList(self.originalHost, args)
                continue
            if keyword == "match":
                active = self._matches(args, place)
                continue
            if not active:
                continue
            if keyword == "include":
                self._include(args, place, depth)
                continue
            self.apply(keyword, args, place)

    def readFile(self, path: str, active: bool, depth: int) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise UsageError(f"Cannot read ssh config file {path}: {e.strerror}.")
        self.readLines(lines, path, active, depth)

    def _include(self, args: list[str], where: str, depth: int) -> None:
        if depth >= _MAX_INCLUDE_DEPTH:
            raise UsageError(f"Include nested too deeply at {where}.")
        for pattern in args:
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(self.home, ".ssh", pattern)
            for path in sorted(glob.glob(pattern)):
                if os.path.isfile(path):
                    # Included lines start active: the Include line applied.
                    self.readFile(path, True, depth + 1)

    def apply(self, keyword: str, args: list[str], where: str) -> None:
        if keyword not in SUPPORTED_KEYWORDS:
            if keyword not in self.ignored:
                self.ignored.append(keyword)
                _log.debug(
                    "ssh config: ignoring {keyword!r} ({where})", keyword=keyword, where=where
                )
            return
        if not args:
            raise UsageError(f"Missing value for {keyword!r} in {where}.")
        if keyword == "identityfile":
            self.identityFiles.append(args[0])
            return
        if keyword in ("proxyjump", "proxycommand"):
            # ProxyJump and ProxyCommand exclude each other: the first wins.
            if "proxyjump" in self.values or "proxycommand" in self.values:
                return
        if keyword == "challengeresponseauthentication":
            keyword = "kbdinteractiveauthentication"
        self.values.setdefault(keyword, args)


def _flag(values: dict[str, list[str]], keyword: str, default: bool) -> bool:
    if keyword not in values:
        return default
    text = values[keyword][0].lower()
    if text not in _BOOL:
        raise UsageError(f"Bad yes/no value {values[keyword][0]!r} for {keyword!r}.")
    return _BOOL[text]


def _number(values: dict[str, list[str]], keyword: str, default: float) -> float:
    if keyword not in values:
        return default
    text = values[keyword][0]
    if text.lower() == "none":
        return default
    try:
        result = float(text.rstrip("sS"))
    except ValueError:
        raise UsageError(f"Bad number {text!r} for {keyword!r}.")
    if result < 0:
        raise UsageError(f"Bad number {text!r} for {keyword!r}.")
    return result


def _parsePort(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"Bad port {text!r} ({where}).")
    return int(text)


def resolve(
    destination: str,
    *,
    configFile: str | None = None,
    options: Sequence[str] = (),
    port: int | None = None,
    identities: Sequence[str] = (),
    jump: str | None = None,
    home: str | None = None,
    localUser: str | None = None,
) -> ConnectOptions:
    """
    Resolve a destination the way C{ssh} does.

    @param destination: C{[user@]host[:port]} or a C{Host} alias.
    @param configFile: C{-F FILE}; L{None} reads C{~/.ssh/config} if it
        exists; C{"none"} reads no file.
    @param options: C{-o} values, C{Key=Value} or C{Key Value} each.
    @param port: C{-p PORT}.
    @param identities: C{-i FILE} values, tried before the config's.
    @param jump: C{-J} value (comma-separated hops, or C{none}).
    @param home: the home directory (for C{~}); default C{$HOME}.
    @param localUser: the local user name; default the current user.
    @raise UsageError: bad destination, option or config file; or a
        C{:port} in the destination and a different C{port}.
    """
    home = home or os.path.expanduser("~")
    localUser = localUser or getpass.getuser()
    dest = parseDestination(destination)
    if dest.port is not None and port is not None and dest.port != port:
        raise UsageError(
            f"The destination {destination!r} names port {dest.port} but -p names port {port}."
        )
    cmdlinePort = dest.port if dest.port is not None else port
    resolver = _Resolver(dest.host, localUser, home)
    # The command line first: the first value wins.
    optionLines = []
    for option in options:
        parsed = _splitLine(option)
        if parsed is None:
            raise UsageError(f"Bad -o option {option!r}.")
        if parsed[0] in ("host", "match", "include"):
            raise UsageError(f"-o {parsed[0]!r} is not allowed.")
        optionLines.append(option)
    resolver.readLines(optionLines, "command line", True, 0)
    if jump is not None:
        resolver.values.setdefault("proxyjump", [jump])
        resolver.values.pop("proxycommand", None)
    if configFile is None:
        default = os.path.join(home, ".ssh", "config")
        if os.path.isfile(default):
            configFile = default
    if configFile is not None and configFile.lower() != "none":
        resolver.readFile(os.path.expanduser(configFile), True, 0)
    values = resolver.values

    host = resolver._currentHost()
    user = dest.user or values.get("user", [localUser])[0]
    if cmdlinePort is not None:
        finalPort = cmdlinePort
    elif "port" in values:
        finalPort = _parsePort(values["port"][0], "Port")
    else:
        finalPort = 22

    tokens = {
        "%": "%",
        "h": host,
        "p": str(finalPort),
        "r": user,
        "u": localUser,
        "d": home,
        "n": dest.host,
        "l": socket.gethostname().split(".")[0],
        "L": socket.gethostname(),
        "i": str(os.getuid()),
        "k": values.get("hostkeyalias", [host])[0],
        "j": ",".join(values.get("proxyjump", [""])),
    }
    # %C: OpenSSH's hash of %l%h%p%r (ControlPath and friends).
    connectionHash = hashlib.sha1(
        (tokens["l"] + host + tokens["p"] + user).encode("utf-8")
    ).hexdigest()
    tokens["C"] = connectionHash

    def expand(text: str, *, tilde: bool = True) -> str:
        out = []
        i = 0
        while i < len(text):
            c = text[i]
            if c == "%" and i + 1 < len(text):
                token = text[i + 1]
                if token not in tokens:
                    raise UsageError(f"Unknown token %{token} in {text!r}.")
                out.append(tokens[token])
                i += 2
            else:
                out.append(c)
                i += 1
        result = "".join(out)
        if tilde and result.startswith("~"):
            result = os.path.join(home, result[2:]) if result.startswith("~/") else result
            if result == "~":
                result = home
        return result

    identityFiles = [expand(p) for p in list(identities) + resolver.identityFiles]
    if not identityFiles:
        identityFiles = [p for p in (expand(d) for d in _DEFAULT_IDENTITIES) if os.path.exists(p)]

    def pathList(keyword: str, default: list[str]) -> list[str]:
        given = values.get(keyword)
        if given is None:
            return [expand(p) for p in default]
        if len(given) == 1 and given[0].lower() == "none":
            return []
        return [expand(p) for p in given]

    strictText = values.get("stricthostkeychecking", ["ask"])[0].lower()
    if strictText not in _STRICT:
        raise UsageError(f"Bad StrictHostKeyChecking value {strictText!r}.")

    proxyJump: list[str] = []
    proxyCommand: str | None = None
    if "proxyjump" in values and values["proxyjump"][0].lower() != "none":
        proxyJump = [h for h in ",".join(values["proxyjump"]).split(",") if h]
        for hop in proxyJump:
            parseDestination(hop)
    if "proxycommand" in values and values["proxycommand"][0].lower() != "none":
        proxyCommand = expand(" ".join(values["proxycommand"]), tilde=False)

    agent: str | None = os.environ.get("SSH_AUTH_SOCK")
    if "identityagent" in values:
        text = values["identityagent"][0]
        if text.lower() == "none":
            agent = None
        elif text != "SSH_AUTH_SOCK":
            agent = os.environ.get(text[1:]) if text.startswith("$") else expand(text)

    batchMode = _flag(values, "batchmode", False)
    interval = _number(values, "serveraliveinterval", 15.0)
    countMax = int(_number(values, "serveralivecountmax", 3))
    return ConnectOptions(
        host=host,
        port=finalPort,
        user=user,
        originalHost=dest.host,
        hostKeyAlias=values.get("hostkeyalias", [None])[0],
        identityFiles=identityFiles,
        identitiesOnly=_flag(values, "identitiesonly", False),
        identityAgent=agent,
        userKnownHostsFiles=pathList("userknownhostsfile", _DEFAULT_USER_KNOWN_HOSTS),
        globalKnownHostsFiles=pathList("globalknownhostsfile", _DEFAULT_GLOBAL_KNOWN_HOSTS),
        strictHostKeyChecking=_STRICT[strictText],
        hashKnownHosts=_flag(values, "hashknownhosts", False),
        serverAliveInterval=interval,
        serverAliveCountMax=max(countMax, 1),
        proxyJump=proxyJump,
        proxyCommand=proxyCommand,
        connectTimeout=_number(values, "connecttimeout", 15.0) or 15.0,
        batchMode=batchMode,
        useAgent=agent is not None,
        allowPublicKey=_flag(values, "pubkeyauthentication", True),
        allowPassword=_flag(values, "passwordauthentication", True) and not batchMode,
        allowKeyboardInteractive=(
            _flag(values, "kbdinteractiveauthentication", True) and not batchMode
        ),
        configFile=configFile,
        commandLineOptions=list(options),
        commandLineIdentities=list(identities),
        ignoredKeywords=list(resolver.ignored),
    )


def isTerminal() -> bool:
    """
    Whether a person can be asked: stdin is a terminal.
    """
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False
