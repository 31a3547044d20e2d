"""
Events: what a running L{conchshare.service.ShareService} tells the world.

An event is a plain C{dict}: C{"event"} (its name), C{"time"} (ISO 8601,
UTC) and the fields of DESIGN.md's table.  The names and fields are an
interface (scripts parse C{--json}); L{EVENT_FIELDS} lists them.

Renderers, each an observer (a callable taking one event):
  - L{JSONLinesRenderer}: one JSON object per line (C{--json});
  - L{ConsoleRenderer}: plain sentences, and on a terminal a live status
    line (forward, mode, channels, bytes in/out and rate, paused) kept
    below them;
  - L{LoggerRenderer}: the sentences through C{twisted.logger} (twistd).

Key material never appears in an event: the C{session-key} event carries
remote I{paths} and commands, not keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = [
    "EVENT_FIELDS",
    "ConsoleRenderer",
    "Event",
    "EventObserver",
    "JSONLinesRenderer",
    "LoggerRenderer",
    "formatBytes",
    "isoTime",
    "makeEvent",
    "sentence",
    "statusLine",
]

#: An event: C{{"event": name, "time": iso8601, **fields}}.
Event = dict[str, Any]

#: Something that receives events.
EventObserver = Callable[[Event], None]

#: The events of DESIGN.md and their fields (the interface of C{--json}).
EVENT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "connected": ("host", "port", "user", "host_key"),
    "forwarding": ("mode", "address", "port", "socket"),
    "session-key": ("key", "known_hosts", "sshfs", "sftp"),
    "channel-opened": ("channel", "listener", "origin"),
    "channel-closed": ("channel", "bytes_in", "bytes_out"),
    "paused": ("channels",),
    "resumed": ("channels",),
    "reconnecting": ("attempt", "delay", "reason"),
    "mounted": ("remote_path",),
    "unmounted": ("remote_path",),
    "error": ("message",),
    "stopped": ("reason",),
}


def isoTime(seconds: float) -> str:
    """
    Format a POSIX time as ISO 8601 in UTC with millisecond precision and a
    C{Z} suffix, e.g. C{2026-11-26T09:52:51.123Z}.
    """
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def makeEvent(name: str, clock: IReactorTime | None = None, **fields: Any) -> Event:
    """
    Build an event stamped with the current time.

    @param name: the event name, one of L{EVENT_FIELDS}.
    @param clock: where the time comes from; the system clock if L{None}.
    @param fields: the event's fields.
    """
    import time

    now = clock.seconds() if clock is not None else time.time()
    event: Event = {"event": name, "time": isoTime(now)}
    event.update(fields)
    return event


def formatBytes(count: float) -> str:
    """
    A byte count for people: C{512 B}, C{1.5 kB}, C{12.0 MB} (powers of
    1000).
    """
    if count < 1000:
        return f"{int(count)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000.0
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _forwardText(event: Mapping[str, Any]) -> str:
    if event.get("socket"):
        return f"socket {event['socket']}"
    address = str(event.get("address", "?"))
    if ":" in address:
        address = f"[{address}]"
    return f"{address}:{event.get('port', '?')}"


def sentence(event: Mapping[str, Any]) -> str:
    """
    The plain-sentence form of an event, as printed without C{--json}.
    """
    name = event.get("event")
    if name == "connected":
        host = str(event.get("host"))
        host = f"[{host}]" if ":" in host else host
        return (
            f"Connected to {event.get('user')}@{host}:{event.get('port')}"
            f" (host key {event.get('host_key')})."
        )
    if name == "forwarding":
        return (
            f"Forwarding {_forwardText(event)} on the remote host to the shares"
            f" ({event.get('mode')} mode)."
        )
    if name == "session-key":
        return (
            f"Session key installed on the remote host as {event.get('key')};"
            f" mount with: {event.get('sshfs')}  or browse with: {event.get('sftp')}"
        )
    if name == "channel-opened":
        return (
            f"Channel {event.get('channel')} opened from {event.get('origin')}"
            f" on {event.get('listener')}."
        )
    if name == "channel-closed":
        return (
            f"Channel {event.get('channel')} closed"
            f" ({formatBytes(event.get('bytes_in', 0))} in,"
            f" {formatBytes(event.get('bytes_out', 0))} out)."
        )
    if name == "paused":
        return f"Paused ({_plural(int(event.get('channels', 0)), 'channel')})."
    if name == "resumed":
        return f"Resumed ({_plural(int(event.get('channels', 0)), 'channel')})."
    if name == "reconnecting":
        return (
            f"Connection lost ({event.get('reason')}); reconnecting in"
            f" {float(event.get('delay', 0)):.1f} s (attempt {event.get('attempt')})."
        )
    if name == "mounted":
        return f"Mounted the shares at {event.get('remote_path')} on the remote host."
    if name == "unmounted":
        message = str(event.get("message") or "")
        if not message:
            return f"Unmounted {event.get('remote_path')} on the remote host."
        # Lazily detached, could not unmount, or sshfs ended on its own: the
        # message says which ("sshfs", a command name, stays lower case).
        if not message.startswith("sshfs "):
            message = message[:1].upper() + message[1:]
        return message.rstrip(".") + "."
    if name == "error":
        return str(event.get("message"))
    if name == "stopped":
        return f"Stopped ({str(event.get('reason')).rstrip('.')})."
    fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
    return f"{name}: {fields}." if fields else f"{name}."


def statusLine(status: Mapping[str, Any], rates: tuple[float, float] | None = None) -> str:
    """
    The live status line for a L{conchshare.service.ShareService.status}
    snapshot.

    @param rates: bytes per second in and out, if known.
    """
    parts: list[str] = []
    state = status.get("state", "?")
    listeners = status.get("listeners") or []
    if state == "forwarding" and listeners:
        parts.append("forwarding " + ", ".join(_forwardText(item) for item in listeners))
    elif state == "reconnecting" and status.get("retry_in") is not None:
        parts.append(f"reconnecting in {float(status['retry_in']):.0f} s")
    else:
        parts.append(str(state))
    if status.get("mode"):
        parts.append(f"{status['mode']} mode")
    parts.append(_plural(int(status.get("channels", 0)), "channel"))
    bytesIn = formatBytes(status.get("bytes_in", 0))
    bytesOut = formatBytes(status.get("bytes_out", 0))
    if rates is not None:
        bytesIn += f" ({formatBytes(rates[0])}/s)"
        bytesOut += f" ({formatBytes(rates[1])}/s)"
    parts.append(f"in {bytesIn}")
    parts.append(f"out {bytesOut}")
    if status.get("paused"):
        parts.append("PAUSED")
    return " | ".join(parts)


class JSONLinesRenderer:
    """
    Write each event as one JSON object on its own line, flushed at once.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: Event) -> None:
        self._stream.write(json.dumps(event, sort_keys=False, default=str) + "\n")
        self._stream.flush()


class ConsoleRenderer:
    """
    Write plain sentences; on a terminal, keep a live status line under them.

    Errors go to C{errors} (standard error), everything else to C{stream}.

    @ivar interval: seconds between status line refreshes.
    """

    interval = 1.0

    def __init__(
        self,
        stream: IO[str],
        errors: IO[str] | None = None,
        *,
        status: Callable[[], Mapping[str, Any]] | None = None,
        terminal: bool | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param status: returns the current status snapshot; without it there
            is no status line.
        @param terminal: whether C{stream} is a terminal (default: ask it).
        @param clock: drives the refresh; required for a status line.
        """
        self._stream = stream
        self._errors = errors if errors is not None else stream
        if terminal is None:
            isatty = getattr(stream, "isatty", None)
            terminal = bool(isatty()) if isatty is not None else False
        self._status = status if terminal else None
        self._clock = clock
        self._shown = False
        self._last: tuple[float, float, float] | None = None
        self._rates: tuple[float, float] | None = None
        self._loop: LoopingCall | None = None
        self._lastError: object = None
        self._armed = False

    def start(self) -> None:
        """
        Show the status line from the first C{connected} event on, until
        C{stopped} (a no-op when not on a terminal).  Not before: until
        then a person may be asked about the host key or a passphrase.
        """
        self._armed = True

    def _startLoop(self) -> None:
        if self._status is None or self._clock is None or self._loop is not None:
            return
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        """
        Stop refreshing and erase the status line.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._erase()
        self._stream.flush()

    def _erase(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._shown = False

    def refresh(self) -> None:
        """
        Redraw the status line from a fresh snapshot.
        """
        if self._status is None:
            return
        status = self._status()
        if self._clock is not None:
            now = self._clock.seconds()
            bytesIn = float(status.get("bytes_in", 0))
            bytesOut = float(status.get("bytes_out", 0))
            if self._last is not None and now > self._last[0]:
                elapsed = now - self._last[0]
                self._rates = (
                    max(0.0, (bytesIn - self._last[1]) / elapsed),
                    max(0.0, (bytesOut - self._last[2]) / elapsed),
                )
            self._last = (now, bytesIn, bytesOut)
        self._erase()
        self._stream.write(statusLine(status, self._rates))
        self._shown = True
        self._stream.flush()

    def __call__(self, event: Event) -> None:
        self._erase()
        text = sentence(event) + "\n"
        if event.get("event") == "stopped" and event.get("reason") == self._lastError:
            text = "Stopped.\n"  # the error said why, just above
        if event.get("event") == "error":
            self._lastError = event.get("message")
            self._stream.flush()
            self._errors.write(text)
            self._errors.flush()
        else:
            self._stream.write(text)
        name = event.get("event")
        if name == "connected" and self._armed:
            self._startLoop()
        if name == "stopped":
            # (An error that stops the service is followed by "stopped"; one
            # that does not, a share's folder gone, leaves the line on.)
            self.stop()
        elif self._loop is not None:
            self.refresh()
        self._stream.flush()


class LoggerRenderer:
    """
    Send each event's sentence through C{twisted.logger}, errors at error
    level, the rest at info level.  The event itself is attached as
    C{conchshare_event}.
    """

    def __init__(self, log: Logger | None = None) -> None:
        self._log = log if log is not None else Logger(namespace="conchshare")

    def __call__(self, event: Event) -> None:
        name = event.get("event")
        text = sentence(event)
        if name == "error":
            self._log.error("{text}", text=text, conchshare_event=event)
        else:
            self._log.info("{text}", text=text, conchshare_event=event)
