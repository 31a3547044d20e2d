# mypy: allow-untyped-calls, disable-error-code="union-attr"
"""
Tests for L{conchshare.tunnel.fastpath}: the packet layer on its own (exact
wire bytes, whole and byte by byte).  Conch with the mixin against OpenSSH's
sshd and ssh is in L{tests.e2e.test_fastpath}.
"""

from __future__ import annotations

import os
import struct
import zlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.transport import (
    DISCONNECT_MAC_ERROR,
    DISCONNECT_PROTOCOL_ERROR,
    MSG_IGNORE,
    SSHClientTransport,
    SSHTransportBase,
)
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from conchshare.tunnel.fastpath import GCM_CIPHERS, FastCiphers, FastTransportMixin

GCM128 = b"aes128-gcm@openssh.com"
GCM256 = b"aes256-gcm@openssh.com"


class _Bare(FastTransportMixin, SSHTransportBase):  # type: ignore[misc]
    """
    A transport with keys set by hand that records what it dispatches.
    """

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.disconnects: list[int] = []
        self.transport = StringTransport()
        self.gotVersion = True
        self._rbuf = bytearray()

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append((messageNum, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnects.append(reason)
        super().sendDisconnect(reason, desc)


def _keyed(cipher: bytes, mac: bytes = b"hmac-sha2-256") -> tuple[_Bare, _Bare, list[bytes]]:
    """
    Two transports, C{a} sending to C{b} with C{cipher}, and the six keys
    (IV, key, integrity key for a→b, then for b→a).
    """
    k = [os.urandom(64) for _ in range(6)]
    a, b = _Bare(), _Bare()
    a.currentEncryptions = FastCiphers(cipher, cipher, mac, mac)
    a.currentEncryptions.setKeys(k[0], k[1], k[3], k[4], k[2], k[5])
    b.currentEncryptions = FastCiphers(cipher, cipher, mac, mac)
    b.currentEncryptions.setKeys(k[3], k[4], k[0], k[1], k[5], k[2])
    return a, b, k


class PacketLayerTests(SynchronousTestCase):
    """
    L{FastTransportMixin} packets, without a network.
    """

    def test_preferences(self) -> None:
        """
        AES-GCM comes first, then Conch's ciphers; hmac-sha2-256 is the
        first MAC; a client class built as documented gets both.
        """

        class Client(FastTransportMixin, SSHClientTransport):  # type: ignore[misc]
            pass

        self.assertEqual(Client.supportedCiphers[:2], [GCM128, GCM256])
        self.assertIn(b"aes256-ctr", Client.supportedCiphers)
        self.assertEqual(Client.supportedMACs[0], b"hmac-sha2-256")
        self.assertIn(b"hmac-sha2-512", Client.supportedMACs)

    def test_gcmWireLayout(self) -> None:
        """
        RFC 5647 as OpenSSH does it: the length in clear is the AAD and a
        multiple of 16, then ciphertext and a 16-byte tag; the nonce is the
        IV's 4-byte fixed field and 8-byte counter, one more per packet; at
        least 4 bytes of padding.
        """
        for cipher, keyLen in GCM_CIPHERS.items():
            a, _, k = _keyed(cipher)
            iv, key = k[0], k[1][:keyLen]
            counter = int.from_bytes(iv[4:12], "big")
            for n, body in enumerate([NS(b"hello"), NS(b"x" * 1000), b""]):
                a.sendPacket(MSG_IGNORE, body)
                wire = a.transport.value()
                a.transport.clear()
                (length,) = struct.unpack("!L", wire[:4])
                self.assertEqual(length % 16, 0)
                self.assertEqual(len(wire), 4 + length + 16)
                nonce = iv[:4] + (counter + n).to_bytes(8, "big")
                plain = AESGCM(key).decrypt(nonce, wire[4:], wire[:4])
                pad = plain[0]
                self.assertGreaterEqual(pad, 4)
                self.assertEqual(plain[1:-pad], bytes((MSG_IGNORE,)) + body)

    def test_roundTrip(self) -> None:
        """
        What one side sends the other dispatches, whole, byte by byte and
        with a partial packet trailing, for GCM and for CTR/CBC with HMAC.
        """
        payloads = [NS(b"a"), os.urandom(40000), b"", os.urandom(17)]
        for cipher, mac in [
            (GCM128, b"hmac-sha2-256"),
            (GCM256, b"hmac-sha2-512"),
            (b"aes128-ctr", b"hmac-sha2-256"),
            (b"aes256-cbc", b"hmac-sha2-512"),
            (b"aes192-ctr", b"hmac-sha1"),
        ]:
            for chunk in [None, 1, 4093]:
                a, b, _ = _keyed(cipher, mac)
                for p in payloads:
                    a.sendPacket(MSG_IGNORE + 1, p)
                wire = a.transport.value()
                if chunk is None:
                    b.dataReceived(wire[:-3])
                    b.dataReceived(wire[-3:])
                else:
                    for i in range(0, len(wire), chunk):
                        b.dataReceived(wire[i : i + chunk])
                self.assertEqual(b.received, [(MSG_IGNORE + 1, p) for p in payloads])
                self.assertEqual(b.incomingPacketSequence, len(payloads))
                self.assertEqual(b.disconnects, [])
                self.assertEqual(b._rbuf, bytearray())

    def test_compressedRoundTrip(self) -> None:
        """
        With zlib negotiated, GCM packets carry the compressed message.
        """
        a, b, _ = _keyed(GCM128)
        a.outgoingCompression = zlib.compressobj(6)
        b.incomingCompression = zlib.decompressobj()
        payloads = [bytes(50000), NS(b"x")]
        for p in payloads:
            a.sendPacket(MSG_IGNORE, p)
        self.assertLess(len(a.transport.value()), 1000)
        b.dataReceived(a.transport.value())
        self.assertEqual(b.received, [(MSG_IGNORE, p) for p in payloads])

    def test_badTag(self) -> None:
        """
        A GCM packet changed on the way (ciphertext or length) is not
        dispatched; the connection is closed with a MAC error and nothing
        after it is read.
        """
        for index, bit in [(3, 0x10), (4, 1), (30, 1), (67, 0x80)]:
            a, b, _ = _keyed(GCM128)
            a.sendPacket(MSG_IGNORE, NS(b"s" * 30))
            self.assertEqual(len(a.transport.value()), 4 + 48 + 16)
            a.sendPacket(MSG_IGNORE, NS(b"after"))
            wire = bytearray(a.transport.value())
            wire[index] ^= bit
            b.dataReceived(bytes(wire))
            self.assertEqual(b.received, [])
            self.assertEqual(b.disconnects, [DISCONNECT_MAC_ERROR])
            self.assertTrue(b.transport.disconnecting)

    def test_badMAC(self) -> None:
        """
        A CTR packet with a wrong HMAC is refused with a MAC error.
        """
        a, b, _ = _keyed(b"aes128-ctr")
        a.sendPacket(MSG_IGNORE, NS(b"secret"))
        wire = bytearray(a.transport.value())
        wire[-1] ^= 1
        b.dataReceived(bytes(wire))
        self.assertEqual(b.received, [])
        self.assertEqual(b.disconnects, [DISCONNECT_MAC_ERROR])

    def test_badGCMLength(self) -> None:
        """
        A GCM length that is not a multiple of 16, or too large, is a
        protocol error (before any decryption).
        """
        for length in [20, 2**24]:
            _, b, _ = _keyed(GCM128)
            b.dataReceived(struct.pack("!L", length) + b"\0" * 64)
            self.assertEqual(b.disconnects, [DISCONNECT_PROTOCOL_ERROR])

    def test_versionThenPackets(self) -> None:
        """
        Lines before the peer's version line are skipped; packets in the
        same read as the version line are read with it.
        """
        t = _Bare()
        t.gotVersion = False
        t.buf = b""
        t.currentEncryptions = FastCiphers(b"none", b"none", b"none", b"none")
        t.currentEncryptions.setKeys(b"", b"", b"", b"", b"", b"")
        peer = _Bare()
        peer.currentEncryptions = t.currentEncryptions
        peer.sendPacket(MSG_IGNORE, NS(b"x"))
        data = b"banner\r\nSSH-2.0-OpenSSH_9.2\r\n" + peer.transport.value()
        for i in range(len(data)):
            t.dataReceived(data[i : i + 1])
        self.assertEqual(t.otherVersionString, b"SSH-2.0-OpenSSH_9.2")
        self.assertEqual(t.received, [(MSG_IGNORE, NS(b"x"))])
