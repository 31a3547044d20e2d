"""
The C{conchshare share} and C{conchshare mount} commands, and the same
subcommands under C{twistd conchshare}.

Both parse their options into L{conchshare.service.ShareOptions}, build a
L{conchshare.service.ShareService} and a control socket, and run until
stopped:

  - SIGINT, SIGTERM: clean stop (unmount, remove the session key, cancel the
    forwards, disconnect), exit 0;
  - SIGUSR1 pauses every channel, SIGUSR2 resumes (the command only: twistd
    owns SIGUSR1; use C{conchshare ctl});
  - a fatal error: one sentence on standard error (an C{error} event with
    C{--json}) and the exit code of its L{conchshare.errors.ConchShareError};
  - bad usage: one sentence, exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.application.service import MultiService, Service
from twisted.python import usage

from conchshare.errors import ConchShareError, UsageError, sentence

__all__ = [
    "TwistdOptions",
    "buildService",
    "makeParser",
    "makeTwistdService",
    "mountMain",
    "parseArguments",
    "shareMain",
]

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

    def error(self, message: str) -> Any:  # type: ignore[override]
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


def makeParser(kind: str, prog: str | None = None) -> argparse.ArgumentParser:
    """
    The argument parser of C{conchshare share} or C{conchshare mount}.

    @param kind: C{"share"} or C{"mount"}.
    """
    parser = _Parser(
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
            choices=("passive", "ssh", "socket", "raw-tcp"),
            default="passive",
            help="how the remote sshfs reaches the shares (default: passive)",
        )
    else:
        parser.add_argument(
            "--mode",
            choices=("ssh", "raw"),
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
        " given too); 'auto': a fresh path in a private directory",
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


def shareOptions(args: argparse.Namespace) -> Any:
    """
    The L{conchshare.service.ShareOptions} for parsed arguments.
    """
    from conchshare.service import ShareOptions

    options = ShareOptions(
        mode=getattr(args, "mode", "ssh"),
        remoteListen=args.remoteListen,
        remoteSocket=args.remoteSocket,
        identities=list(args.identities),
        knownHosts=args.knownHosts,
        acceptNew=args.acceptNew,
        authorizedKeys=args.authorizedKeys,
        hostKey=args.hostKey,
        sessionKey=args.sessionKey,
        readOnly=args.readOnly,
        umask=args.umask,
        verbose=args.verbose,
        configFile=args.configFile,
        port=args.port,
        jump=args.jump,
        sshOptions=list(args.sshOptions),
    )
    if args.kind == "mount":
        options.mountAt = args.at
        options.mountVia = args.via
        if args.via == "ssh":
            options.mode = "ssh"
    options.check()
    return options


def buildService(args: argparse.Namespace, reactor: Any = None) -> Any:
    """
    The L{conchshare.service.ShareService} for parsed arguments.

    @raise UsageError: bad shares or options.
    """
    from conchshare.service import ShareService

    return ShareService(args.destination, args.allShares, shareOptions(args), reactor=reactor)


def _setUpLogging(verbose: bool, stream: IO[str]) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    if verbose:
        # The audit trail of SFTP requests (see service.AuditingAvatar).
        predicate.setLogLevelForNamespace("conchshare.audit", LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(stream), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _run(kind: str, argv: Sequence[str], stdout: IO[str], stderr: IO[str]) -> int:
    from twisted.internet import reactor as globalReactor

    from conchshare.control import ControlService
    from conchshare.events import ConsoleRenderer, JSONLinesRenderer
    from conchshare.fdlimit import raiseFileLimit
    from conchshare.spin import spinBeforeSleeping

    reactor: Any = globalReactor
    try:
        args = parseArguments(kind, argv)
        # As many SFTP handles as the system allows (before any is opened).
        raiseFileLimit()
        service = buildService(args, reactor)
        control = ControlService(service, args.control, reactor=reactor)
        control.listen()
    except ConchShareError as e:
        stderr.write(f"conchshare {kind}: {e}\n")
        return e.exitCode
    _setUpLogging(args.verbose, stderr)
    renderer: Any
    if args.json:
        renderer = JSONLinesRenderer(stdout)
        # stdout carries only events: the control socket path goes to stderr.
        stderr.write(f"conchshare: control socket {control.path}\n")
        stderr.flush()
    else:
        renderer = ConsoleRenderer(stdout, stderr, status=service.status, clock=reactor)
        stdout.write(
            f"Control socket: {control.path} (conchshare ctl --control {control.path} pause|resume|status).\n"
        )
        stdout.flush()
    service.addObserver(renderer)
    # This program owns its reactor: it may poll before sleeping.
    spinBeforeSleeping(reactor, service.callsRunning)
    exitCode = [0]
    stopping = [False]

    def finish(_: object = None) -> None:
        if isinstance(renderer, ConsoleRenderer):
            renderer.stop()
        d = control.stopService()
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)

    def failed(reason: Any) -> None:
        error = reason.value
        exitCode[0] = error.exitCode if isinstance(error, ConchShareError) else 1
        finish()

    def stop(reason: str) -> None:
        if stopping[0]:
            return
        stopping[0] = True
        # Never hang: whatever happens, the reactor stops in a while.
        reactor.callLater(60, lambda: reactor.stop() if reactor.running else None)
        service.stop(reason)

    def onSignal(number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if number in (signal.SIGINT, signal.SIGTERM):
            reactor.callFromThread(stop, f"{name} received")
        elif number == signal.SIGUSR1:
            reactor.callFromThread(service.pause)
        elif number == signal.SIGUSR2:
            reactor.callFromThread(service.resume)

    def started() -> None:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(number, onSignal)
        service.whenStopped().addCallbacks(finish, failed)
        service.startService()
        if isinstance(renderer, ConsoleRenderer) and service.running:
            renderer.start()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: service.stop("the reactor stopped"))
    reactor.run()
    stdout.flush()
    return exitCode[0]


def shareMain(argv: Sequence[str]) -> int:
    """
    C{conchshare share [options] DESTINATION SHARE...}: run until stopped.

    @return: the exit code.
    """
    return _run("share", argv, sys.stdout, sys.stderr)


def mountMain(argv: Sequence[str]) -> int:
    """
    C{conchshare mount [options] DESTINATION SHARE... --at REMOTE_DIR}: run
    until stopped, with the shares mounted on the remote host.

    @return: the exit code.
    """
    return _run("mount", argv, sys.stdout, sys.stderr)


# -- twistd -----------------------------------------------------------------


class _SubcommandOptions(usage.Options):
    """
    A twistd subcommand whose options are those of the command (parsed by
    the same argparse parser).
    """

    kind = "share"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        if "-h" in argv or "--help" in argv:
            makeParser(self.kind, prog=f"twistd conchshare {self.kind}").print_help()
            sys.exit(0)
        try:
            self["args"] = parseArguments(self.kind, argv, prog=f"twistd conchshare {self.kind}")
        except UsageError as e:
            raise usage.UsageError(str(e))

    def getUsage(self, width: int | None = None) -> str:
        return makeParser(self.kind, prog=f"twistd conchshare {self.kind}").format_help()


class _ShareSubcommand(_SubcommandOptions):
    kind = "share"


class _MountSubcommand(_SubcommandOptions):
    kind = "mount"


class TwistdOptions(usage.Options):
    """
    C{twistd conchshare share|mount [options] ...}: the subcommands and
    options of the C{conchshare} command.  Pause and resume with
    C{conchshare ctl} (twistd owns SIGUSR1).
    """

    synopsis = "share|mount [options] DESTINATION SHARE..."
    subCommands = [
        ["share", None, _ShareSubcommand, "share folders through a remote port or socket"],
        ["mount", None, _MountSubcommand, "share folders and mount them on the remote host"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("Give a subcommand: share or mount.")


class _StopReactorOnFailure(Service):
    """
    Under twistd: when the share service stops on its own (a fatal error),
    stop the reactor too.
    """

    def __init__(self, share: Any, reactor: Any = None) -> None:
        self._share = share
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._share.whenStopped().addBoth(self._stopped)

    def _stopped(self, result: object) -> None:
        if not self.running:
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        if reactor.running:
            reactor.stop()


class _SpinWhileRunning(Service):
    """
    While running, the reactor polls before it sleeps (see
    L{conchshare.spin}).
    """

    def __init__(self, share: Any, reactor: Any = None) -> None:
        self._share = share
        self._reactor = reactor

    def _getReactor(self) -> Any:
        if self._reactor is not None:
            return self._reactor
        from twisted.internet import reactor

        return reactor

    def startService(self) -> None:
        from conchshare.spin import spinBeforeSleeping

        super().startService()  # type: ignore[no-untyped-call]
        spinBeforeSleeping(self._getReactor(), self._share.callsRunning)

    def stopService(self) -> Any:
        from conchshare.spin import stopSpinning

        stopSpinning(self._getReactor())
        return super().stopService()  # type: ignore[no-untyped-call]


def makeTwistdService(
    options: TwistdOptions, reactor: Any = None, *, spin: bool = False
) -> MultiService:
    """
    The service twistd runs: the share service, its control socket and its
    events logged through C{twisted.logger}.  Builds, never starts, nothing
    (testable without a reactor).

    @param spin: make the reactor poll before it sleeps (see
        L{conchshare.spin}): only where this service is all it runs.
    @raise usage.UsageError: bad shares or options.
    """
    from conchshare.control import ControlService
    from conchshare.events import LoggerRenderer

    args = options.subOptions["args"]
    try:
        share = buildService(args, reactor)
    except ConchShareError as e:
        raise usage.UsageError(str(e))
    share.addObserver(LoggerRenderer())
    top = MultiService()  # type: ignore[no-untyped-call]
    # Control first: it starts before the share and stops after it.
    ControlService(share, args.control, reactor=reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    share.setServiceParent(top)  # type: ignore[no-untyped-call]
    _StopReactorOnFailure(share, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    if spin:
        _SpinWhileRunning(share, reactor).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top


#: What C{twisted/plugins/conchshare_plugin.py}'s C{ServiceMaker} looks up.
Options = TwistdOptions


def makeService(options: TwistdOptions) -> MultiService:
    """
    twistd's entry point: L{makeTwistdService} with the global reactor,
    which polls before it sleeps as the command's does (twistd runs this
    service alone).
    """
    return makeTwistdService(options, spin=True)
