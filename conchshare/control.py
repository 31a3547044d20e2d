"""
The control socket: pause, resume and query a running conchshare from
outside (C{conchshare ctl}), for the command and for twistd alike.

A Unix-domain stream socket, mode 0600, in a directory only its owner can
enter (0700): by default C{PID.sock} in the first private directory of
C{$XDG_RUNTIME_DIR/conchshare}, C{/tmp/conchshare-UID},
C{$HOME/.cache/conchshare}, else in a fresh C{/tmp/conchshare-UID-XXXXXXXX}
(L{chooseControlPath}); a directory another local user made there is
skipped, not trusted.

The protocol is line based.  A client sends one request per line, a JSON
object C{{"command": "pause"}} (or just the word C{pause}); the server
answers each with one JSON object on one line:

  - C{pause}, C{resume}: C{{"ok": true, "command": "pause", "channels": N}};
  - C{status}: C{{"ok": true, "command": "status", "status": {...}}} with
    the L{conchshare.service.ShareService.status} snapshot;
  - anything else: C{{"ok": false, "error": "one sentence"}}.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from conchshare.errors import ConchShareError
from conchshare.options import CTL_COMMANDS as COMMANDS
from conchshare.options import makeParser
from conchshare.reactors import orGlobalReactor

__all__ = [
    "COMMANDS",
    "ControlError",
    "ControlService",
    "Controllable",
    "MAX_SOCKET_PATH",
    "chooseControlPath",
    "controlDirectories",
    "ctlMain",
    "defaultControlDirectory",
    "defaultControlPath",
    "findControlSocket",
    "isPrivateDirectory",
    "request",
]

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


def _tmpDirectory(uid: int, tmp: str) -> str:
    return os.path.join(tmp, f"conchshare-{uid}")


def controlDirectories(
    environ: Mapping[str, str] | None = None, *, tmp: str = "/tmp", uid: int | None = None
) -> list[str]:
    """
    Where this user's control sockets go, in the order they are tried:
    C{$XDG_RUNTIME_DIR/conchshare} (if C{XDG_RUNTIME_DIR} is a directory),
    C{/tmp/conchshare-UID}, C{$HOME/.cache/conchshare} (if C{HOME} is set).
    A directory is used only if it is private (L{isPrivateDirectory}); when
    none is, a fresh C{/tmp/conchshare-UID-XXXXXXXX} (L{tempfile.mkdtemp}).
    """
    environ = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    places = []
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        places.append(os.path.join(runtime, "conchshare"))
    places.append(_tmpDirectory(uid, tmp))
    home = environ.get("HOME")
    if home and os.path.isabs(home):
        places.append(os.path.join(home, ".cache", "conchshare"))
    return places


def defaultControlDirectory(environ: Mapping[str, str] | None = None) -> str:
    """
    The first place of L{controlDirectories}: C{$XDG_RUNTIME_DIR/conchshare},
    or C{/tmp/conchshare-UID}.  Nothing is created or checked.
    """
    return controlDirectories(environ)[0]


def defaultControlPath(pid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """
    The control socket path of the process C{pid} (this one by default)
    in L{defaultControlDirectory}; L{ControlService} may choose a later
    place when listening (L{chooseControlPath}).
    """
    pid = os.getpid() if pid is None else pid
    return os.path.join(defaultControlDirectory(environ), f"{pid}.sock")


def isPrivateDirectory(path: str, uid: int | None = None) -> bool:
    """
    Whether C{path} itself (not a symlink to it) is a directory owned by
    C{uid} (this user) with mode 0700: one no other local user can have
    made, entered or filled.
    """
    uid = os.getuid() if uid is None else uid
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700


def chooseControlPath(
    pid: int | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    tmp: str = "/tmp",
    uid: int | None = None,
) -> str:
    """
    The default control socket path, C{PID.sock} in the first of
    L{controlDirectories} that is private (created 0700 if missing) and
    short enough for a Unix socket path; else in a fresh private temporary
    directory.  A directory another local user made (or a symlink there)
    is skipped, so it cannot stop conchshare from starting.

    @raise ControlError: not even a temporary directory could be made.
    """
    pid = os.getpid() if pid is None else pid
    uid = os.getuid() if uid is None else uid
    name = f"{pid}.sock"
    for directory in controlDirectories(environ, tmp=tmp, uid=uid):
        path = os.path.join(directory, name)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            continue
        try:
            # Only the last component is ours to create: the parents (the
            # runtime directory, /tmp, $HOME) must exist, except ~/.cache.
            if directory.endswith(os.path.join(".cache", "conchshare")):
                os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            _log.debug("control directory {d} not usable: {e}", d=directory, e=e)
            continue
        if isPrivateDirectory(directory, uid):
            return path
        _log.warn(
            "Not using {directory} for the control socket: it is not a private directory"
            " of this user.",
            directory=directory,
        )
    try:
        directory = tempfile.mkdtemp(prefix=f"conchshare-{uid}-", dir=tmp)
    except OSError as e:
        raise ControlError(f"Cannot create a private directory for the control socket: {e}.")
    return os.path.join(directory, name)


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
        @param path: the socket path; if L{None}, L{chooseControlPath}
            chooses it when listening (until then, L{defaultControlPath}).
        @param reactor: an C{IReactorUNIX}; the global reactor if L{None}.
        """
        self.target = target
        self._chosen = path is None
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
        if self._chosen:
            # Checked private and short enough; an explicit path's directory
            # is left alone (nothing is created in the default places).
            self.path = chooseControlPath()
        _checkLength(self.path)
        self._reactor = orGlobalReactor(self._reactor)
        directory = os.path.dirname(self.path)
        if not self._chosen and (
            not os.path.isdir(directory) or directory == defaultControlDirectory()
        ):
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
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        d: Deferred[Any] = maybeDeferred(port.stopListening)

        def removed(_: object) -> None:
            try:
                os.unlink(self.path)
            except OSError:
                pass

        return d.addBoth(removed)


def findControlSocket(
    environ: Mapping[str, str] | None = None, *, tmp: str = "/tmp", uid: int | None = None
) -> str:
    """
    The control socket of the one running conchshare of this user: searched
    in the places L{chooseControlPath} uses, in its order (the fresh
    temporary directories last), skipping every directory that is not
    private (L{isPrivateDirectory}).

    @raise ControlError: none, or several, are running.
    """
    uid = os.getuid() if uid is None else uid
    places = controlDirectories(environ, tmp=tmp, uid=uid)
    try:
        prefix = f"conchshare-{uid}-"
        places += sorted(os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith(prefix))
    except OSError:
        pass
    live = []
    for directory in places:
        if not isPrivateDirectory(directory, uid):
            continue
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".sock"))
        except OSError:
            continue
        live += [os.path.join(directory, n) for n in names if _alive(os.path.join(directory, n))]
    if not live:
        searched = ", ".join(places[:3])
        raise ControlError(f"No running conchshare found in {searched}; give --control PATH.")
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
    parser = makeParser("ctl")
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
