"""
The control socket: pause, resume and query a running conchshare from
outside (C{conchshare ctl}), for the command and for twistd alike.

A Unix-domain stream socket, mode 0600, in a directory only its owner can
enter (0700): C{$XDG_RUNTIME_DIR/conchshare/PID.sock}, or
C{/tmp/conchshare-UID/PID.sock} without C{XDG_RUNTIME_DIR}.

The protocol is line based.  A client sends one request per line, a JSON
object C{{"command": "pause"}} (or just the word C{pause}); the server
answers each with one JSON object on one line:

  - C{pause}, C{resume}: C{{"ok": true, "command": "pause", "channels": N}};
  - C{status}: C{{"ok": true, "command": "status", "status": {...}}} with
    the L{conchshare.service.ShareService.status} snapshot;
  - anything else: C{{"ok": false, "error": "one sentence"}}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from conchshare.errors import ConchShareError, UsageError, sentence

__all__ = [
    "COMMANDS",
    "ControlError",
    "ControlService",
    "Controllable",
    "MAX_SOCKET_PATH",
    "ctlMain",
    "defaultControlDirectory",
    "defaultControlPath",
    "findControlSocket",
    "request",
]

#: The requests the control socket understands.
COMMANDS = ("pause", "resume", "status")

_log = Logger()


class Controllable(Protocol):
    """
    What the control socket drives: a L{conchshare.service.ShareService}.
    """

    def pause(self) -> int: ...

    def resume(self) -> int: ...

    def status(self) -> dict[str, Any]: ...


class ControlError(ConchShareError):
    """
    The control socket could not be set up or reached (exit code 1).
    """


def defaultControlDirectory(environ: Mapping[str, str] | None = None) -> str:
    """
    The directory of the default control sockets of this user:
    C{$XDG_RUNTIME_DIR/conchshare}, or C{/tmp/conchshare-UID}.
    """
    environ = os.environ if environ is None else environ
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "conchshare")
    return os.path.join("/tmp", f"conchshare-{os.getuid()}")


def defaultControlPath(pid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """
    The default control socket path of the process C{pid} (this one by
    default).
    """
    pid = os.getpid() if pid is None else pid
    return os.path.join(defaultControlDirectory(environ), f"{pid}.sock")


def _privateDirectory(path: str) -> None:
    """
    Make sure C{path} is a directory owned by us that nobody else can enter.

    @raise ControlError: it is someone else's or open to others.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as e:
        raise ControlError(f"Cannot create the control directory {path}: {e.strerror}.")
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ControlError(f"The control directory {path} is not a directory of this user.")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


#: The longest Unix socket path (C{sun_path} holds 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


def _checkLength(path: str) -> None:
    """
    @raise ControlError: C{path} is too long for a Unix socket.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(
            f"The control socket path {path} is longer than {MAX_SOCKET_PATH} bytes,"
            " the limit of a Unix socket path; give a shorter --control PATH."
        )


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


class _ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self, target: Controllable) -> None:
        self._target = target

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if not text:
            return
        command: object = text
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                self._reply({"ok": False, "error": "The request is not valid JSON."})
                return
            command = parsed.get("command") if isinstance(parsed, dict) else None
        self._reply(self._handle(command))

    def _handle(self, command: object) -> dict[str, Any]:
        try:
            if command == "pause":
                return {"ok": True, "command": "pause", "channels": self._target.pause()}
            if command == "resume":
                return {"ok": True, "command": "resume", "channels": self._target.resume()}
            if command == "status":
                return {"ok": True, "command": "status", "status": self._target.status()}
        except Exception as e:
            _log.failure("Control request {command!r} failed", command=command)
            return {"ok": False, "error": str(e) or type(e).__name__}
        return {
            "ok": False,
            "error": f"Unknown command {command!r}; use one of {', '.join(COMMANDS)}.",
        }

    def _reply(self, reply: Mapping[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(reply, default=str).encode("utf-8") + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply({"ok": False, "error": "The request is too long."})
        if self.transport is not None:
            self.transport.loseConnection()


class _ControlFactory:
    """
    A minimal protocol factory (avoids Factory's start/stop log noise).
    """

    def __init__(self, target: Controllable) -> None:
        self._target = target

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: object) -> _ControlProtocol:
        proto = _ControlProtocol(self._target)
        proto.factory = self
        return proto


class ControlService(Service):
    """
    Listens on the control socket while running; removes it on stop.

    @ivar path: the socket path.
    """

    def __init__(self, target: Controllable, path: str | None = None, *, reactor: Any = None):
        """
        @param target: what the requests act on.
        @param path: the socket path; L{defaultControlPath} if L{None}.
        @param reactor: an C{IReactorUNIX}; the global reactor if L{None}.
        """
        self.target = target
        self.path = os.path.abspath(path) if path is not None else defaultControlPath()
        self._reactor = reactor
        self._port: IListeningPort | None = None

    def listen(self) -> None:
        """
        Create the socket now (idempotent).

        @raise ControlError: the directory is not private, or another live
            process owns the path, or listening failed.
        """
        if self._port is not None:
            return
        _checkLength(self.path)
        if self._reactor is None:
            from twisted.internet import reactor as globalReactor

            self._reactor = globalReactor
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory) or directory == defaultControlDirectory():
            _privateDirectory(directory)
        if os.path.exists(self.path):
            if _alive(self.path):
                raise ControlError(
                    f"Another process is listening on the control socket {self.path}."
                )
            os.unlink(self.path)
        # The umask closes the window between bind() and chmod(); this runs
        # at start-up, before any worker thread exists.
        previous = os.umask(0o177)
        try:
            self._port = self._reactor.listenUNIX(
                self.path, _ControlFactory(self.target), mode=0o600
            )
        except Exception as e:
            raise ControlError(f"Cannot listen on the control socket {self.path}: {e}.")
        finally:
            os.umask(previous)
        # listenUNIX's mode applies via chmod after bind; make sure.
        os.chmod(self.path, 0o600)

    def startService(self) -> None:
        self.listen()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]

        def removed(_: object) -> None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

        return d.addBoth(removed)


def findControlSocket(environ: Mapping[str, str] | None = None) -> str:
    """
    The control socket of the one running conchshare of this user.

    @raise ControlError: none, or several, are running.
    """
    directory = defaultControlDirectory(environ)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".sock"))
    except OSError:
        names = []
    live = [os.path.join(directory, n) for n in names if _alive(os.path.join(directory, n))]
    if not live:
        raise ControlError(f"No running conchshare found in {directory}; give --control PATH.")
    if len(live) > 1:
        raise ControlError(
            f"Several conchshare processes are running ({', '.join(live)}); choose one with --control PATH."
        )
    return live[0]


def request(path: str, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """
    Send one request to a control socket and return its answer (blocking).

    @raise ControlError: the socket cannot be reached or answered nonsense.
    """
    _checkLength(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise ControlError(f"Cannot reach the control socket {path}: {e.strerror or e}.")
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"The control socket {path} gave no valid answer.")
    if not isinstance(reply, dict):
        raise ControlError(f"The control socket {path} gave no valid answer.")
    return reply


def _describeStatus(status: Mapping[str, Any]) -> str:
    from conchshare.events import statusLine

    return statusLine(status)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(sentence(message.rstrip("."), empty="Bad usage."))


def ctlMain(
    argv: Sequence[str], stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """
    C{conchshare ctl [--control PATH] [--json] pause|resume|status}.

    @return: the exit code: 0 done, 1 the request failed or nothing to
        talk to, 2 bad usage.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    parser = _Parser(
        prog="conchshare ctl",
        description="Pause, resume or query a running conchshare through its control socket.",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        help=f"the control socket (default: the only one in {defaultControlDirectory()})",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    parser.add_argument("command", choices=COMMANDS, metavar="pause|resume|status")
    try:
        args = parser.parse_args(list(argv))
        path = args.control if args.control else findControlSocket()
        reply = request(path, args.command)
    except ConchShareError as e:
        err.write(f"conchshare ctl: {e}\n")
        return e.exitCode
    if args.json:
        out.write(json.dumps(reply) + "\n")
    if not reply.get("ok"):
        if not args.json:
            err.write(f"conchshare ctl: {reply.get('error', 'the request failed.')}\n")
        return 1
    if not args.json:
        if args.command == "status":
            out.write(_describeStatus(reply.get("status", {})) + "\n")
        else:
            count = int(reply.get("channels", 0))
            verb = "Paused" if args.command == "pause" else "Resumed"
            out.write(f"{verb} ({count} channel{'' if count == 1 else 's'}).\n")
    return 0
