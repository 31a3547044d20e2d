"""
The command line of every C{conchshare} subcommand, defined once.

L{makeParser} makes the C{argparse} parser of C{share}, C{mount}, C{ctl} and
C{sftp-server}; the console command parses with it, and C{twistd
conchshare share|mount} wraps the same parser in C{usage.Options}
(L{conchshare.command.TwistdOptions}), so an option added here is on every
front end, in every C{--help}.

Only the standard library and L{conchshare.errors}: C{conchshare
sftp-server} imports this before anything else and must start fast.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from conchshare.errors import UsageError, sentence
from conchshare.modes import MODES, MOUNT_VIAS

__all__ = [
    "CTL_COMMANDS",
    "LEVELS",
    "SFTP_SERVER",
    "Parser",
    "makeParser",
    "parseArguments",
    "parseSFTPServerArguments",
]


class Parser(argparse.ArgumentParser):
    """
    An argument parser that raises L{UsageError} (one sentence) instead of
    printing usage and exiting.
    """

    def error(self, message: str) -> Any:
        raise UsageError(sentence(message.rstrip("."), empty="Bad usage."))


def makeParser(command: str, prog: str | None = None) -> argparse.ArgumentParser:
    """
    The argument parser of a subcommand.

    @param command: C{"share"}, C{"mount"}, C{"ctl"} or C{"sftp-server"}.
    @param prog: the program name in usage and help (default:
        C{conchshare COMMAND}).
    @raise ValueError: no such subcommand.
    """
    if command in ("share", "mount"):
        return _shareParser(command, prog)
    if command == "ctl":
        return _ctlParser(prog or "conchshare ctl")
    if command == "sftp-server":
        return _sftpServerParser(prog or SFTP_SERVER)
    raise ValueError(f"No subcommand {command!r}.")


# -- share, mount --------------------------------------------------------------

_SHARE_DESCRIPTION = (
    "Share local folders with a remote host: connect out to DESTINATION over SSH,"
    " ask its sshd to listen on a port (or Unix socket) there, and serve every"
    " connection that arrives with conchshare's own SFTP server, confined to the shares."
)
_MOUNT_DESCRIPTION = (
    "Share local folders and mount them on the remote host with its sshfs, started"
    " over the same outbound SSH connection."
)
_EPILOG = (
    "SHARE is FOLDER or NAME=FOLDER (':ro' at the end makes it read-only). "
    "Signals: SIGINT/SIGTERM stop cleanly, SIGUSR1 pauses, SIGUSR2 resumes. "
    "Exit codes: 0 stopped, 1 other error, 2 bad usage, 3 connection failed, "
    "4 authentication failed, 5 host key unknown or changed, 6 forward refused, "
    "7 remote mount failed."
)


class _Parser(argparse.ArgumentParser):
    """
    An argument parser that raises L{UsageError} (one sentence) instead of
    printing usage and exiting.
    """

    def error(self, message: str) -> Any:
        raise UsageError(sentence(message, empty="Bad usage."))


def _listenAddress(text: str) -> tuple[str, int]:
    """
    Parse C{--remote-listen}: C{ADDR:PORT}, C{[IPV6]:PORT} or C{PORT}.
    """
    address, port = "127.0.0.1", text
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"bad --remote-listen {text!r}; use ADDR:PORT")
        address, port = inside, rest[1:]
    elif ":" in text:
        address, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535 or not address:
        raise argparse.ArgumentTypeError(f"bad --remote-listen {text!r}; use ADDR:PORT")
    return address, int(port)


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --umask {text!r}; use an octal number such as 022")
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"bad --umask {text!r}; use an octal number such as 022")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"bad port {text!r}")
    return int(text)


def _shareParser(kind: str, prog: str | None) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog or f"conchshare {kind}",
        description=_SHARE_DESCRIPTION if kind == "share" else _MOUNT_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument(
        "destination",
        metavar="DESTINATION",
        help="[user@]host[:port] or a Host alias of the ssh config",
    )
    parser.add_argument("shares", metavar="SHARE", nargs="*", help="a folder to share")
    parser.add_argument(
        "--share",
        dest="moreShares",
        metavar="SHARE",
        action="append",
        default=[],
        help="a folder to share (repeatable)",
    )
    if kind == "mount":
        parser.add_argument(
            "--at",
            required=True,
            metavar="REMOTE_DIR",
            help="the mount point on the remote host (created if missing)",
        )
        parser.add_argument(
            "--via",
            choices=MOUNT_VIAS,
            default="passive",
            help="how the remote sshfs reaches the shares (default: passive)",
        )
    else:
        parser.add_argument(
            "--mode",
            choices=MODES,
            default="ssh",
            help="endpoint mode of the forward (default: ssh)",
        )
    parser.add_argument(
        "--remote-listen",
        dest="remoteListen",
        metavar="ADDR:PORT",
        type=_listenAddress,
        action="append",
        help="where the remote sshd listens (default 127.0.0.1:0; repeatable)",
    )
    parser.add_argument(
        "--remote-socket",
        dest="remoteSocket",
        metavar="PATH",
        help="forward a remote Unix socket (no TCP forward unless --remote-listen is"
        " given too); a relative PATH is in the remote home directory; 'auto': a"
        " fresh path in a private directory",
    )
    parser.add_argument(
        "-i",
        "--identity",
        dest="identities",
        metavar="FILE",
        action="append",
        default=[],
        help="a private key file (repeatable)",
    )
    parser.add_argument(
        "--known-hosts", dest="knownHosts", metavar="FILE", help="= -o UserKnownHostsFile=FILE"
    )
    parser.add_argument(
        "--accept-new",
        dest="acceptNew",
        action="store_true",
        help="= -o StrictHostKeyChecking=accept-new",
    )
    parser.add_argument(
        "--authorized-keys",
        dest="authorizedKeys",
        metavar="FILE",
        help="keys the nested SSH server accepts (ssh mode; for mount --via ssh, besides"
        " the session key its own sshfs uses)",
    )
    parser.add_argument(
        "--host-key",
        dest="hostKey",
        metavar="FILE",
        help="the nested SSH server's host key (created if missing)",
    )
    parser.add_argument(
        "--session-key",
        dest="sessionKey",
        action="store_true",
        default=None,
        help="install a session key on the remote host (default in ssh mode without --authorized-keys)",
    )
    parser.add_argument(
        "--no-session-key",
        dest="sessionKey",
        action="store_false",
        help="do not install a session key (share only: a mount's sshfs needs one)",
    )
    parser.add_argument(
        "--read-only",
        dest="readOnly",
        action="store_true",
        help="refuse every change to the shares",
    )
    parser.add_argument(
        "--umask",
        type=_umask,
        default=0o022,
        metavar="OCTAL",
        help="umask for created files (default 022)",
    )
    parser.add_argument("--json", action="store_true", help="print events as JSON lines on stdout")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every SFTP request (an audit trail) on stderr",
    )
    parser.add_argument("-F", dest="configFile", metavar="FILE", help="ssh config file (as ssh -F)")
    parser.add_argument("-p", dest="port", metavar="PORT", type=_port, help="SSH port (as ssh -p)")
    parser.add_argument("-J", dest="jump", metavar="JUMP", help="jump hosts (as ssh -J)")
    parser.add_argument(
        "-o",
        dest="sshOptions",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="an ssh config option (as ssh -o)",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="the control socket (default: in the first private directory of"
        " $XDG_RUNTIME_DIR/conchshare, /tmp/conchshare-UID, ~/.cache/conchshare)",
    )
    return parser


def parseArguments(kind: str, argv: Sequence[str], prog: str | None = None) -> argparse.Namespace:
    """
    Parse a C{share}/C{mount} command line (options and positional
    arguments may be mixed).

    @raise UsageError: bad usage (one sentence).
    """
    args = makeParser(kind, prog).parse_intermixed_args(list(argv))
    args.kind = kind
    if args.remoteSocket == "auto":
        args.remoteSocket = ""
    args.allShares = list(args.shares) + list(args.moreShares)
    if not args.allShares:
        raise UsageError("Give at least one folder to share.")
    return args


# -- ctl -------------------------------------------------------------------------

#: The requests the control socket understands (C{conchshare ctl}'s).
CTL_COMMANDS = ("pause", "resume", "status")


def _ctlParser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description="Pause, resume or query a running conchshare through its control socket.",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="the control socket (default: the only live one in the private directories"
        " among $XDG_RUNTIME_DIR/conchshare, /tmp/conchshare-UID, ~/.cache/conchshare,"
        " /tmp/conchshare-UID-*)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("command", choices=CTL_COMMANDS, metavar="pause|resume|status")
    return parser


# -- sftp-server -----------------------------------------------------------------

SFTP_SERVER = "conchshare sftp-server"

#: OpenSSH's sftp-server C{-l} levels, each with the C{twisted.logger} level
#: name it logs at (L{None}: QUIET, nothing).
LEVELS: dict[str, str | None] = {
    "QUIET": None,
    "FATAL": "critical",
    "ERROR": "error",
    "INFO": "info",
    "VERBOSE": "info",
    "DEBUG": "debug",
    "DEBUG1": "debug",
    "DEBUG2": "debug",
    "DEBUG3": "debug",
}


def _sftpUmask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"The umask {text!r} is not an octal number.")
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"The umask {text!r} is out of range (000 to 777).")
    return value


def _level(text: str) -> str:
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"Unknown log level {text!r}; use one of {', '.join(LEVELS)}."
        )
    return text.upper()


class _SFTPServerParser(Parser):
    """
    The parser of C{conchshare sftp-server}, whose errors keep the
    sentences this command has always printed ("Option --bogus not
    recognized.").
    """

    _argv: list[str] = []

    def parse_intermixed_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = list(args or ())
        return super().parse_intermixed_args(args, namespace)

    def _typed(self, names: str) -> str:
        """
        Of an option's names (C{-u/--umask}), the one on the command line.
        """
        spellings = names.split("/")
        for token in self._argv:
            for name in spellings:
                if token == name or (name.startswith("--") and token.startswith(name + "=")):
                    return name
        return spellings[-1]

    def error(self, message: str) -> Any:
        found = re.fullmatch(r"unrecognized arguments: (\S+).*", message)
        if found:
            message = f"Option {found[1]} not recognized."
        elif found := re.fullmatch(r"ambiguous option: (--[^=\s]+).*", message):
            message = f"Option {found[1]} not a unique prefix."
        elif found := re.fullmatch(r"argument (\S+): expected one argument", message):
            message = f"Option {self._typed(found[1])} requires argument."
        elif found := re.fullmatch(r"argument (\S+): ignored explicit argument '(.*)'", message):
            names = found[1].split("/")
            if any(t.startswith(names[-1] + "=") for t in self._argv):
                message = f"Option {names[-1]} must not have an argument."
            else:
                message = f"Option -{found[2][:1]} not recognized."
        elif found := re.fullmatch(r"argument \S+: (.*)", message):
            message = found[1]
        raise UsageError(f"{sentence(message)} See '{self.prog} --help'.")


def _sftpServerParser(prog: str) -> argparse.ArgumentParser:
    from conchshare import __version__

    parser = _SFTPServerParser(
        prog=prog,
        usage="%(prog)s [--share SHARE]... [SHARE...] [--read-only] [--umask UMASK] [-l LEVEL]",
        description="Speak SFTP version 3 on standard input and output, serving the shares "
        "(NAME=PATH, NAME=PATH:ro, or PATH; the current directory when none is given).",
    )
    parser.add_argument("shares", metavar="SHARE", nargs="*", help="a folder to share (as --share)")
    parser.add_argument(
        "-s",
        "--share",
        dest="moreShares",
        metavar="SHARE",
        action="append",
        default=[],
        help="share a folder: NAME=PATH, NAME=PATH:ro or PATH (repeatable)",
    )
    parser.add_argument(
        "-R", "--read-only", dest="readOnly", action="store_true", help="make every share read-only"
    )
    parser.add_argument(
        "-u",
        "--umask",
        type=_sftpUmask,
        default=0o022,
        metavar="UMASK",
        help="removed from the permissions of created files (octal; default 022)",
    )
    parser.add_argument(
        "-l",
        "--log-level",
        dest="logLevel",
        type=_level,
        default="QUIET",
        metavar="LEVEL",
        help="log to stderr at this level: " + ", ".join(LEVELS) + " (default QUIET)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"conchshare {__version__}",
        help="print conchshare's version and exit",
    )
    return parser


def parseSFTPServerArguments(argv: Sequence[str], prog: str = SFTP_SERVER) -> argparse.Namespace:
    """
    Parse a C{sftp-server} command line; C{allShares} is every share, those
    given with C{--share} first.

    @raise UsageError: bad usage (one sentence, ending with where to get
        help).
    @raise SystemExit: after printing C{--help} or C{--version}.
    """
    args = makeParser("sftp-server", prog).parse_intermixed_args(list(argv))
    args.allShares = list(args.moreShares) + list(args.shares)
    return args
