"""
Tests for conchshare's SSH client transport that need no sshd: direct
sends on a loopback TCP connection.  The client against a throwaway OpenSSH
sshd is tested in L{tests.e2e.test_client}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from conchshare.tunnel.client import SSHClientTransport


class DirectSendTests(TestCase):
    """
    L{SSHClientTransport._send} writes to the TCP socket at once when
    nothing waits in Twisted's buffer; what the socket does not take is
    buffered, and later packets queue behind it, in order.
    """

    async def _sendAll(self) -> None:
        from types import SimpleNamespace

        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Factory, Protocol

        received: list[bytes] = []
        total = 16 * 1024 * 1024
        done: Deferred[None] = Deferred()

        class Sink(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)
                if sum(map(len, received)) >= total and not done.called:
                    done.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        proto = await connectProtocol(endpoint, Protocol())
        self.addCleanup(proto.transport.loseConnection)
        sender: Any = SimpleNamespace(transport=proto.transport, _direct=True)
        SSHClientTransport._send(sender, b"first")
        # Sent already: nothing waits in Twisted's buffer.
        self.assertEqual(proto.transport._tempDataLen, 0)
        pieces = [bytes([i % 251]) * 65536 for i in range(total // 65536)]
        pieces[0] = b"first" + pieces[0][5:]
        for piece in [pieces[0][5:], *pieces[1:]]:
            SSHClientTransport._send(sender, piece)
        # The socket did not take it all: the rest waits in Twisted's buffer.
        self.assertGreater(proto.transport._tempDataLen, 0)
        await done
        self.assertTrue(b"".join(received) == b"".join(pieces))

    def test_inOrder(self) -> Deferred[None]:
        return defer.ensureDeferred(self._sendAll())
