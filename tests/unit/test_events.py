"""
Tests for L{conchshare.events}: the event objects, the JSON lines and
plain-sentence renderers, and the live status line.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from conchshare.events import (
    EVENT_FIELDS,
    ConsoleRenderer,
    JSONLinesRenderer,
    LoggerRenderer,
    formatBytes,
    isoTime,
    makeEvent,
    sentence,
    statusLine,
)

SAMPLES: dict[str, dict[str, Any]] = {
    "connected": {"host": "example.org", "port": 2222, "user": "me", "host_key": "SHA256:abc"},
    "forwarding": {"mode": "raw", "address": "127.0.0.1", "port": 40000},
    "session-key": {
        "key": "/tmp/k/id_ed25519",
        "known_hosts": "/tmp/k/known_hosts",
        "sshfs": "sshfs -p 40000 x",
        "sftp": "sftp -P 40000 x",
    },
    "channel-opened": {"channel": 3, "listener": "127.0.0.1:40000", "origin": "127.0.0.1:5555"},
    "channel-closed": {"channel": 3, "bytes_in": 1500, "bytes_out": 2_500_000},
    "paused": {"channels": 2},
    "resumed": {"channels": 1},
    "reconnecting": {"attempt": 2, "delay": 3.25, "reason": "The server closed the connection."},
    "mounted": {"remote_path": "/home/me/mnt"},
    "unmounted": {"remote_path": "/home/me/mnt"},
    "error": {"message": "The server refused to forward 127.0.0.1:0."},
    "stopped": {"reason": "SIGTERM received"},
}


class MakeEventTests(SynchronousTestCase):
    def test_timeAndName(self) -> None:
        """
        An event has its name, an ISO 8601 UTC time (from the clock given)
        and its fields.
        """
        clock = Clock()
        clock.advance(1_700_000_000.25)
        event = makeEvent("paused", clock, channels=2)
        self.assertEqual(
            event, {"event": "paused", "time": "2023-11-14T22:13:20.250Z", "channels": 2}
        )

    def test_isoTime(self) -> None:
        self.assertEqual(isoTime(0), "1970-01-01T00:00:00.000Z")

    def test_everyEventHasItsSentence(self) -> None:
        """
        Every event of the table renders as a sentence carrying its facts.
        """
        self.assertEqual(set(SAMPLES), set(EVENT_FIELDS))
        expected = {
            "connected": "Connected to me@example.org:2222 (host key SHA256:abc).",
            "forwarding": "Forwarding 127.0.0.1:40000 on the remote host to the shares (raw mode).",
            "channel-opened": "Channel 3 opened from 127.0.0.1:5555 on 127.0.0.1:40000.",
            "channel-closed": "Channel 3 closed (1.5 kB in, 2.5 MB out).",
            "paused": "Paused (2 channels).",
            "resumed": "Resumed (1 channel).",
            "reconnecting": "Connection lost (The server closed the connection.); reconnecting in 3.2 s (attempt 2).",
            "mounted": "Mounted the shares at /home/me/mnt on the remote host.",
            "unmounted": "Unmounted /home/me/mnt on the remote host.",
            "error": "The server refused to forward 127.0.0.1:0.",
            "stopped": "Stopped (SIGTERM received).",
        }
        for name, fields in SAMPLES.items():
            text = sentence({"event": name, "time": "t", **fields})
            if name in expected:
                self.assertEqual(text, expected[name])
        keyText = sentence({"event": "session-key", **SAMPLES["session-key"]})
        self.assertIn("/tmp/k/id_ed25519", keyText)
        self.assertIn("sshfs -p 40000 x", keyText)
        self.assertIn("sftp -P 40000 x", keyText)

    def test_unmountedWithMessage(self) -> None:
        """
        An C{unmounted} event with a C{message} (a busy mount detached
        lazily, a failed unmount, sshfs ending) prints that message.
        """
        lazy = sentence(
            {
                "event": "unmounted",
                "remote_path": "/home/me/mnt",
                "lazy": True,
                "message": "/home/me/mnt was busy on the remote host and was unmounted lazily:"
                " it goes away once its last open file is closed",
            }
        )
        self.assertEqual(
            lazy,
            "/home/me/mnt was busy on the remote host and was unmounted lazily:"
            " it goes away once its last open file is closed.",
        )
        failed = sentence(
            {
                "event": "unmounted",
                "remote_path": "/m",
                "message": "could not unmount /m on the remote host: permission denied",
            }
        )
        self.assertEqual(failed, "Could not unmount /m on the remote host: permission denied.")
        ended = sentence(
            {"event": "unmounted", "remote_path": "/m", "message": "sshfs ended (x); /m is gone"}
        )
        self.assertEqual(ended, "sshfs ended (x); /m is gone.")

    def test_socketForwarding(self) -> None:
        text = sentence({"event": "forwarding", "mode": "raw", "socket": "/tmp/d/sftp.sock"})
        self.assertEqual(
            text, "Forwarding socket /tmp/d/sftp.sock on the remote host to the shares (raw mode)."
        )

    def test_ipv6(self) -> None:
        text = sentence({"event": "forwarding", "mode": "ssh", "address": "::1", "port": 7})
        self.assertIn("[::1]:7", text)

    def test_formatBytes(self) -> None:
        self.assertEqual(
            [formatBytes(n) for n in (0, 999, 1000, 1_234_567, 5e12)],
            ["0 B", "999 B", "1.0 kB", "1.2 MB", "5.0 TB"],
        )


class JSONLinesRendererTests(SynchronousTestCase):
    def test_oneObjectPerLine(self) -> None:
        """
        Each event is one JSON object on one line, with every field.
        """
        stream = io.StringIO()
        render = JSONLinesRenderer(stream)
        for name, fields in SAMPLES.items():
            render({"event": name, "time": "2026-01-01T00:00:00.000Z", **fields})
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), len(SAMPLES))
        for line, (name, fields) in zip(lines, SAMPLES.items(), strict=True):
            self.assertEqual(
                json.loads(line), {"event": name, "time": "2026-01-01T00:00:00.000Z", **fields}
            )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ConsoleRendererTests(SynchronousTestCase):
    def test_notATerminal(self) -> None:
        """
        Not on a terminal: sentences only, errors on the error stream, no
        status line and no escape codes.
        """
        out, err = io.StringIO(), io.StringIO()
        render = ConsoleRenderer(out, err, status=lambda: {"state": "forwarding"}, clock=Clock())
        render.start()
        render({"event": "paused", "channels": 1})
        render({"event": "error", "message": "It broke."})
        render({"event": "stopped", "reason": "It broke."})
        render.stop()
        self.assertEqual(out.getvalue(), "Paused (1 channel).\nStopped.\n")
        self.assertEqual(err.getvalue(), "It broke.\n")

    def test_statusLine(self) -> None:
        """
        On a terminal the status line (forward, mode, channels, bytes and
        rates, paused) is shown from C{connected} on, redrawn every second
        and kept under the sentences; C{stopped} ends it.
        """
        out = _Terminal()
        clock = Clock()
        state: dict[str, Any] = {
            "state": "forwarding",
            "mode": "raw",
            "paused": False,
            "channels": 1,
            "bytes_in": 0,
            "bytes_out": 0,
            "listeners": [{"mode": "raw", "address": "127.0.0.1", "port": 40000}],
        }
        render = ConsoleRenderer(out, status=lambda: dict(state), clock=clock)
        render.start()
        clock.advance(5)
        self.assertEqual(out.getvalue(), "")  # not before connected: prompts may come
        render({"event": "connected", "host": "h", "port": 22, "user": "u", "host_key": "k"})
        self.assertEqual(
            out.getvalue(),
            "Connected to u@h:22 (host key k).\n"
            "forwarding 127.0.0.1:40000 | raw mode | 1 channel | in 0 B | out 0 B",
        )
        state.update(bytes_in=2000, bytes_out=4_000_000, paused=True)
        clock.advance(1.0)
        last = out.getvalue().split("\r\x1b[K")[-1]
        self.assertEqual(
            last,
            "forwarding 127.0.0.1:40000 | raw mode | 1 channel | in 2.0 kB (2.0 kB/s)"
            " | out 4.0 MB (4.0 MB/s) | PAUSED",
        )
        render({"event": "resumed", "channels": 1})
        self.assertIn("\r\x1b[KResumed (1 channel).\nforwarding", out.getvalue())
        render({"event": "stopped", "reason": "SIGINT received"})
        self.assertTrue(out.getvalue().endswith("\r\x1b[KStopped (SIGINT received).\n"))
        before = out.getvalue()
        clock.advance(5)
        self.assertEqual(out.getvalue(), before)

    def test_statusLineAfterError(self) -> None:
        """
        An C{error} that does not stop the service (a share's folder gone)
        goes to the error stream and the status line goes on.
        """
        out, err = _Terminal(), io.StringIO()
        clock = Clock()
        render = ConsoleRenderer(out, err, status=lambda: {"state": "forwarding"}, clock=clock)
        render.start()
        render({"event": "connected", "host": "h", "port": 22, "user": "u", "host_key": "k"})
        render({"event": "error", "message": "The folder of the share 'a' is gone."})
        self.assertEqual(err.getvalue(), "The folder of the share 'a' is gone.\n")
        before = out.getvalue()
        clock.advance(1.0)
        self.assertEqual(
            out.getvalue()[len(before) :],
            "\r\x1b[Kforwarding | 0 channels | in 0 B (0 B/s) | out 0 B (0 B/s)",
        )

    def test_reconnectingStatus(self) -> None:
        self.assertTrue(
            statusLine({"state": "reconnecting", "retry_in": 4.2}).startswith("reconnecting in 4 s")
        )


class LoggerRendererTests(SynchronousTestCase):
    def test_logs(self) -> None:
        """
        Under twistd, events are logged as sentences; errors at error level.
        """
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        render = LoggerRenderer()
        render({"event": "paused", "channels": 2})
        render({"event": "error", "message": "No."})
        mine = [e for e in seen if "conchshare_event" in e]
        self.assertEqual([e["text"] for e in mine], ["Paused (2 channels).", "No."])
        self.assertEqual([e["log_level"] for e in mine], [LogLevel.info, LogLevel.error])
        self.flushLoggedErrors()
