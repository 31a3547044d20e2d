"""
L{conchshare.tunnel.connection.ShareConnection} against a real OpenSSH sshd:
forwards, routing, refusal, events, stop.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from conchshare.errors import ForwardRefused
from conchshare.tunnel.connection import Listener
from conchshare.tunnel.remote import RemoteCommandFailed, openExecProtocol, runRemote
from tests.support import sshd as sshdmodule
from tests.support.sshd import ThrowawaySSHD, portOpen
from tests.support.tunnelhelpers import EchoProtocol, connect, run, sleep, waitFor

skip = sshdmodule.available()


class ForwardTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sshd = ThrowawaySSHD.start(self.mktemp())
        self.addCleanup(self.sshd.stop)

    async def test_tcpForwardEcho(self) -> None:
        """
        A forward on port 0 reports the allocated port; what a remote client
        sends there reaches the listener's protocol and its reply comes back;
        events report the forward and the channel.
        """
        conn = await connect(self, self.sshd)
        events: list[dict[str, object]] = []
        conn.addObserver(events.append)
        listener = await conn.requestForward(Listener("raw", EchoProtocol))
        self.assertEqual(listener.address, "127.0.0.1")
        self.assertNotEqual(listener.port, 0)
        code, out, err = await run(
            self, ["socat", "-t", "2", "STDIO", f"TCP:127.0.0.1:{listener.port}"], stdin=b"hello"
        )
        self.assertEqual((code, out), (0, b"hello"), err)
        await waitFor(lambda: any(e["event"] == "channel-closed" for e in events))
        names = [e["event"] for e in events]
        self.assertEqual(names, ["forwarding", "channel-opened", "channel-closed"])
        self.assertEqual(events[0]["port"], listener.port)
        self.assertEqual(events[1]["listener"], f"127.0.0.1:{listener.port}")
        self.assertTrue(str(events[1]["origin"]).startswith("127.0.0.1:"))
        self.assertEqual(events[2]["bytes_in"], 5)
        self.assertEqual(events[2]["bytes_out"], 5)

    async def test_severalForwards(self) -> None:
        """
        Several forwards on one connection each reach their own protocol.
        """
        conn = await connect(self, self.sshd)

        class Upper(EchoProtocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data.upper())

        one = await conn.requestForward(Listener("raw", EchoProtocol))
        two = await conn.requestForward(Listener("raw", Upper))
        a = await run(self, ["socat", "-t", "2", "STDIO", f"TCP:127.0.0.1:{one.port}"], b"abc")
        b = await run(self, ["socat", "-t", "2", "STDIO", f"TCP:127.0.0.1:{two.port}"], b"abc")
        self.assertEqual((a[1], b[1]), (b"abc", b"ABC"))

    async def test_streamlocalForward(self) -> None:
        """
        Without a path, a Unix socket forward gets a fresh path in a private
        directory; stop removes it.
        """
        conn = await connect(self, self.sshd)
        listener = await conn.requestForward(Listener("raw", EchoProtocol, streamlocal=True))
        assert listener.socketPath is not None
        directory = os.path.dirname(listener.socketPath)
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)
        code, out, err = await run(
            self, ["socat", "-t", "2", "STDIO", f"UNIX-CONNECT:{listener.socketPath}"], b"hi"
        )
        self.assertEqual(out, b"hi", err)
        await conn.stop()
        self.assertFalse(os.path.exists(directory))

    async def test_streamlocalLongRemoteTmpdir(self) -> None:
        """
        A remote C{$TMPDIR} too long for a Unix socket path: the fresh
        socket is made under C{/tmp} instead, and works.
        """
        longTmp = os.path.join(os.path.abspath(self.mktemp()), "t" * 100)
        os.makedirs(longTmp)
        self.sshd.stop()
        sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=[f"SetEnv TMPDIR={longTmp}"])
        self.addCleanup(sshd.stop)
        conn = await connect(self, sshd)
        status, out, _ = await runRemote(conn, b'echo "$TMPDIR"')
        self.assertEqual(out.decode().strip(), longTmp)
        listener = await conn.requestForward(Listener("raw", EchoProtocol, streamlocal=True))
        assert listener.socketPath is not None
        self.assertTrue(listener.socketPath.startswith("/tmp/conchshare."), listener.socketPath)
        self.assertEqual(os.listdir(longTmp), [])
        code, out, err = await run(
            self, ["socat", "-t", "2", "STDIO", f"UNIX-CONNECT:{listener.socketPath}"], b"hi"
        )
        self.assertEqual(out, b"hi", err)
        await conn.stop()
        self.assertFalse(os.path.exists(os.path.dirname(listener.socketPath)))

    async def test_streamlocalPathTooLong(self) -> None:
        """
        A given socket path too long for a Unix socket: the refusal says so.
        """
        conn = await connect(self, self.sshd)
        path = "/tmp/" + "s" * 110 + ".sock"
        with self.assertRaises(ForwardRefused) as caught:
            await conn.requestForward(Listener("raw", EchoProtocol, socketPath=path))
        self.assertIn("longer than 107 bytes", str(caught.exception))

    async def test_refusedForward(self) -> None:
        """
        A server with forwarding off refuses; the error names the forward.
        """
        self.sshd.stop()
        sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=["AllowTcpForwarding no"])
        self.addCleanup(sshd.stop)
        conn = await connect(self, sshd)
        with self.assertRaises(ForwardRefused) as caught:
            await conn.requestForward(Listener("raw", EchoProtocol, port=0))
        self.assertIn("127.0.0.1:0", str(caught.exception))
        self.assertIn("AllowTcpForwarding", str(caught.exception))

    async def test_portTaken(self) -> None:
        """
        A port that is taken on the remote side is refused.
        """
        conn = await connect(self, self.sshd)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            with self.assertRaises(ForwardRefused):
                await conn.requestForward(Listener("raw", EchoProtocol, port=port))

    async def test_stopClosesPort(self) -> None:
        """
        Stop cancels the forward (the remote port is closed afterwards) and
        disconnects, even with a channel open and paused.
        """
        conn = await connect(self, self.sshd)
        listener = await conn.requestForward(Listener("raw", EchoProtocol))
        self.assertTrue(portOpen(listener.port))
        s = socket.create_connection(("127.0.0.1", listener.port))
        self.addCleanup(s.close)
        await waitFor(lambda: len(conn.group) == 1)
        self.assertEqual(conn.pause(), 1)
        s.sendall(b"x" * 1000)
        await sleep(0.1)
        await conn.stop()
        self.assertIsNone(conn.transport.transport.connected or None)
        await waitFor(lambda: not portOpen(listener.port), timeout=5)

    async def test_runRemote(self) -> None:
        """
        runRemote returns exit status, stdout and stderr and feeds stdin.
        """
        conn = await connect(self, self.sshd)
        status, out, err = await runRemote(conn, b"cat; echo oops >&2; exit 3", b"input")
        self.assertEqual((status, out, err), (3, b"input", b"oops\n"))

    async def test_execProtocol(self) -> None:
        """
        openExecProtocol connects a protocol to a remote command's stdio; the
        channel pauses with the connection (writes held, then sent).
        """
        conn = await connect(self, self.sshd)
        received: list[bytes] = []

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        protocol = Collect()
        channel = await openExecProtocol(conn, b"cat", protocol)
        self.assertIs(protocol.transport, channel)
        protocol.transport.write(b"one ")
        await waitFor(lambda: b"".join(received) == b"one ")
        self.assertEqual(conn.pause(), 1)
        protocol.transport.write(b"two")
        await sleep(0.3)
        self.assertEqual(b"".join(received), b"one ")
        self.assertEqual(conn.resume(), 1)
        await waitFor(lambda: b"".join(received) == b"one two")
        channel.loseConnection()
        await waitFor(lambda: channel.isClosed)
        self.assertEqual(len(conn.group), 0)

    async def test_execRefused(self) -> None:
        """
        A command the server will not run fails openExecProtocol clearly.
        """
        self.sshd.stop()
        sshd = ThrowawaySSHD.start(self.mktemp(), extraConfig=["MaxSessions 0"])
        self.addCleanup(sshd.stop)
        conn = await connect(self, sshd)
        with self.assertRaises(RemoteCommandFailed):
            await openExecProtocol(conn, b"cat", Protocol())
        with self.assertRaises(RemoteCommandFailed):
            await runRemote(conn, b"true")

    async def test_unknownListenerRefused(self) -> None:
        """
        A forwarded channel for a listener we did not request is refused.
        """
        conn = await connect(self, self.sshd)
        await conn.requestForward(Listener("raw", EchoProtocol))
        # Route table emptied behind sshd's back: sshd still forwards.
        listener = conn.listeners[0]
        conn._routes.clear()
        conn.listeners.clear()
        code, out, err = await run(
            self, ["socat", "-t", "1", "STDIO", f"TCP:127.0.0.1:{listener.port}"], b"hello"
        )
        self.assertEqual(out, b"")
        self.assertEqual(len(conn.group), 0)
