"""
The C{conchshare share} and C{conchshare mount} commands, and the same
subcommands under C{twistd conchshare}.

Both parse their command line with the parser of L{conchshare.options}
(twistd's L{TwistdOptions} wraps the same one) into
L{conchshare.service.ShareOptions}, build a
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
from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.python import usage

from conchshare.errors import ConchShareError, UsageError
from conchshare.options import makeParser, parseArguments
from conchshare.reactors import orGlobalReactor

if TYPE_CHECKING:
    from conchshare.service import ShareOptions, ShareService

__all__ = [
    "TwistdOptions",
    "buildService",
    "makeParser",
    "makeTwistdService",
    "mountMain",
    "parseArguments",
    "shareMain",
]


def shareOptions(args: argparse.Namespace) -> ShareOptions:
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


def buildService(args: argparse.Namespace, reactor: Any = None) -> ShareService:
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


def commandReactor() -> Any:
    """
    The global reactor for a program that owns it (the C{conchshare}
    commands): first, if no reactor is installed yet, polling can pay
    here (L{conchshare.spin.worthSpinning}) and the switch
    C{CONCHSHARE_REACTOR_POLL} is on, conchshare's polling epoll reactor
    (L{conchshare.spinreactor}) is installed as the global one.  It polls
    only once L{conchshare.spin.spinBeforeSleeping} is called.
    """
    from conchshare.spin import SWITCH, worthSpinning
    from conchshare.switches import switchedOn

    if switchedOn(SWITCH) and worthSpinning() and "twisted.internet.reactor" not in sys.modules:
        try:
            from conchshare.spinreactor import install
        except ImportError:  # no epoll here: the default reactor
            pass
        else:
            install()
    return orGlobalReactor(None)


def _run(kind: str, argv: Sequence[str], stdout: IO[str], stderr: IO[str]) -> int:
    from conchshare.spin import spinBeforeSleeping

    # First: conchshare's polling reactor, before anything imports one.
    reactor: Any = commandReactor()

    from conchshare.control import ControlService
    from conchshare.events import ConsoleRenderer, JSONLinesRenderer
    from conchshare.fdlimit import raiseFileLimit

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

    def __init__(self, share: ShareService, reactor: Any = None) -> None:
        self._share = share
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._share.whenStopped().addBoth(self._stopped)

    def _stopped(self, result: object) -> None:
        if not self.running:
            return
        reactor = orGlobalReactor(self._reactor)
        if reactor.running:
            reactor.stop()


class _SpinWhileRunning(Service):
    """
    While running, the reactor polls before it sleeps, if it is
    conchshare's polling reactor (see L{conchshare.spin}).
    """

    def __init__(self, share: ShareService, reactor: Any = None) -> None:
        self._share = share
        self._reactor = reactor

    def _getReactor(self) -> Any:
        return orGlobalReactor(self._reactor)

    def startService(self) -> None:
        from conchshare.spin import isSpinningReactor, spinBeforeSleeping

        super().startService()
        # Only twistd --reactor=conchshare-epoll polls; its default reactor
        # is left as it is.
        if isSpinningReactor(self._getReactor()):
            spinBeforeSleeping(self._getReactor(), self._share.callsRunning)

    def stopService(self) -> Any:
        from conchshare.spin import stopSpinning

        stopSpinning(self._getReactor())
        return super().stopService()


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
    top = MultiService()
    # Control first: it starts before the share and stops after it.
    ControlService(share, args.control, reactor=reactor).setServiceParent(top)
    share.setServiceParent(top)
    _StopReactorOnFailure(share, reactor).setServiceParent(top)
    if spin:
        _SpinWhileRunning(share, reactor).setServiceParent(top)
    return top


#: What C{twisted/plugins/conchshare_plugin.py}'s C{ServiceMaker} looks up.
Options = TwistdOptions


def makeService(options: TwistdOptions) -> MultiService:
    """
    twistd's entry point: L{makeTwistdService} with the global reactor,
    which polls before it sleeps as the command's does if it is
    conchshare's (C{twistd --reactor=conchshare-epoll}; twistd runs this
    service alone).
    """
    return makeTwistdService(options, spin=True)
