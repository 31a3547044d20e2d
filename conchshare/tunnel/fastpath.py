# -*- test-case-name: tests.unit.test_fastpath,tests.e2e.test_fastpath -*-
"""
A faster SSH binary packet layer for Conch transports, client and server.

L{FastTransportMixin} goes I{before} the Conch transport class::

    from twisted.conch.ssh.transport import SSHClientTransport, SSHServerTransport
    from conchshare.tunnel.fastpath import FastTransportMixin

    class ShareClientTransport(FastTransportMixin, SSHClientTransport):
        ...

    class NestedServerTransport(FastTransportMixin, SSHServerTransport):
        ...

Nothing else is needed: the mixin only overrides transport internals
(C{sendPacket}, C{getPacket}, C{dataReceived}, C{_keySetup}, C{_newKeys},
C{ssh_NEWKEYS}) and the class attributes C{supportedCiphers} and
C{supportedMACs}.  A subclass that overrides one of those methods must call
C{super()}; one that sets its own C{supportedCiphers} must keep the names of
L{GCM_CIPHERS} in it to get AES-GCM.

What it changes, and why (see DESIGN.md, "Performance levers"):

  - C{aes128-gcm@openssh.com} and C{aes256-gcm@openssh.com} (RFC 5647 as
    OpenSSH implements it), preferred over every Conch cipher.  The 4-byte
    packet length travels in clear and is the additional authenticated data;
    the 12-byte nonce is the 4-byte fixed field and the 8-byte invocation
    counter of the derived IV, the counter incremented after every packet;
    the 16-byte tag replaces the MAC, so the negotiated MAC is not used when
    a GCM cipher is (OpenSSH still lists MACs, and so do we).
  - C{hmac-sha2-256} is preferred over C{hmac-sha2-512} (no SHA-512 in
    hardware), for the ciphers that still need a MAC.
  - Received bytes go into one C{bytearray} read through an offset, instead
    of Conch's C{bytes} that is copied whole after every packet; HMACs are
    copies of a keyed object prepared at key exchange; each packet is sent
    with one C{write}.

Which cipher is used is chosen by the client's order: a Conch client with the
mixin gets AES-GCM from OpenSSH's sshd; OpenSSH's C{ssh} (and so C{sshfs})
connecting to a Conch server prefers C{aes128-ctr}, unless it is given
C{-c aes128-gcm@openssh.com} or C{-o Ciphers=aes128-gcm@openssh.com}.

Two Conch client bugs are fixed on the way, both only visible when
C{verifyHostKey} fires later than it is called: packets that arrive after the
server's C{NEWKEYS} are held (Conch decrypts them with the old keys), and
C{_gotNewKeys} is reset, so a later rekey does not switch keys early.  The
client's C{connectionSecure} runs after the first key exchange only, not
again after every rekey.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh import transport as _transport
from twisted.conch.ssh.transport import SSHCiphers

__all__ = ["FastTransportMixin", "FastCiphers", "GCM_CIPHERS", "fastCiphers", "fastMACs"]

#: The AEAD ciphers this module adds: SSH name to AES key length.
GCM_CIPHERS: dict[bytes, int] = {
    b"aes128-gcm@openssh.com": 16,
    b"aes256-gcm@openssh.com": 32,
}

#: Conch's limit on one packet (RFC 4253 section 6.1 asks for 35000 at least).
_MAX_PACKET = 1048576

_GCM_TAG = 16
_GCM_BLOCK = 16

_packLength = struct.Struct("!L").pack
_unpackLength = struct.Struct("!L").unpack_from
_unpackLengthPad = struct.Struct("!LB").unpack_from


class _Padding:
    """
    Random padding bytes, taken from a block of C{os.urandom} so that a
    packet costs no system call; each byte is used once.
    """

    _SIZE = 16384

    def __init__(self) -> None:
        self._pool = b""
        self._off = 0

    def __call__(self, n: int) -> bytes:
        off = self._off
        if off + n > len(self._pool):
            self._pool = os.urandom(self._SIZE)
            off = 0
        self._off = off + n
        return self._pool[off : off + n]


_padding = _Padding()


def fastCiphers(conchCiphers: list[bytes] | None = None) -> list[bytes]:
    """
    The cipher preference list of L{FastTransportMixin}.

    @param conchCiphers: Conch's own list (default: what
        C{SSHTransportBase.supportedCiphers} holds).
    @return: the AES-GCM ciphers first, then C{conchCiphers}.
    """
    if conchCiphers is None:
        conchCiphers = list(_transport.SSHTransportBase.supportedCiphers)
    return list(GCM_CIPHERS) + [c for c in conchCiphers if c not in GCM_CIPHERS]


def fastMACs(conchMACs: list[bytes] | None = None) -> list[bytes]:
    """
    The MAC preference list of L{FastTransportMixin}.

    @param conchMACs: Conch's own list (default: what
        C{SSHTransportBase.supportedMACs} holds).
    @return: C{hmac-sha2-256} first, then the rest of C{conchMACs} in order.
    """
    if conchMACs is None:
        conchMACs = list(_transport.SSHTransportBase.supportedMACs)
    first = b"hmac-sha2-256"
    return [first] + [m for m in conchMACs if m != first]


class FastCiphers(SSHCiphers):
    """
    L{SSHCiphers} that also knows the AES-GCM ciphers and keeps keyed HMAC
    objects.

    Each direction is either AEAD (C{outAEAD}/C{inAEAD} set, the MAC unused)
    or a Conch cipher with an HMAC.

    @ivar outAEAD: the L{AESGCM} that seals what we send, or L{None}.
    @ivar inAEAD: the L{AESGCM} that opens what we receive, or L{None}.
    """

    outAEAD: AESGCM | None = None
    inAEAD: AESGCM | None = None
    _outHMAC: Any = None
    _inHMAC: Any = None

    def setKeys(
        self,
        outIV: bytes,
        outKey: bytes,
        inIV: bytes,
        inKey: bytes,
        outInteg: bytes,
        inInteg: bytes,
    ) -> None:
        """
        Set up both directions from the keys of RFC 4253 section 7.2.

        @param outIV: the outgoing initial IV.
        @param outKey: the outgoing encryption key.
        @param inIV: the incoming initial IV.
        @param inKey: the incoming encryption key.
        @param outInteg: the outgoing integrity key.
        @param inInteg: the incoming integrity key.
        """
        if self.outCipType in GCM_CIPHERS:
            self.outAEAD = AESGCM(outKey[: GCM_CIPHERS[self.outCipType]])
            self._outFixed = outIV[:4]
            self._outCounter = int.from_bytes(outIV[4:12], "big")
            self.encBlockSize = _GCM_BLOCK
            self.outMACType = b"<implicit>"
        else:
            o = self._getCipher(self.outCipType, outIV, outKey)
            self.encryptor = o.encryptor()
            self.encBlockSize = o.algorithm.block_size // 8
            self.outMAC = self._getMAC(self.outMACType, outInteg)  # type: ignore[assignment]
            self._outHMAC = self._keyedHMAC(self.outMACType, outInteg)
        if self.inCipType in GCM_CIPHERS:
            self.inAEAD = AESGCM(inKey[: GCM_CIPHERS[self.inCipType]])
            self._inFixed = inIV[:4]
            self._inCounter = int.from_bytes(inIV[4:12], "big")
            self.decBlockSize = _GCM_BLOCK
            self.verifyDigestSize = _GCM_TAG
            self.inMACType = b"<implicit>"
        else:
            o = self._getCipher(self.inCipType, inIV, inKey)
            self.decryptor = o.decryptor()
            self.decBlockSize = o.algorithm.block_size // 8
            self.inMAC = self._getMAC(self.inMACType, inInteg)  # type: ignore[assignment]
            self._inHMAC = self._keyedHMAC(self.inMACType, inInteg)
            self.verifyDigestSize = self.inMAC[3] if self._inHMAC is not None else 0

    def _keyedHMAC(self, name: bytes, key: bytes) -> Any:
        """
        An HMAC keyed like Conch's (the key cut to the digest size), to be
        copied for every packet; L{None} for C{none}.
        """
        mod = self.macMap[name]
        if mod is None:
            return None
        return hmac.new(key[: mod().digest_size], digestmod=mod)

    def nextOutNonce(self) -> bytes:
        """
        The nonce of the next packet we send; advances the counter.
        """
        counter = self._outCounter
        self._outCounter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
        return self._outFixed + counter.to_bytes(8, "big")

    def nextInNonce(self) -> bytes:
        """
        The nonce of the next packet we receive; advances the counter.
        """
        counter = self._inCounter
        self._inCounter = (counter + 1) & 0xFFFFFFFFFFFFFFFF
        return self._inFixed + counter.to_bytes(8, "big")

    def makeMAC(self, seqid: int, data: bytes) -> bytes:
        """
        The MAC of an outgoing packet (empty without one).

        @param seqid: the packet's sequence number.
        @param data: the packet, unencrypted.
        """
        if self._outHMAC is None:
            return b""
        h = self._outHMAC.copy()
        h.update(_packLength(seqid & 0xFFFFFFFF))
        h.update(data)
        digest: bytes = h.digest()
        return digest

    def verify(self, seqid: int, data: bytes, mac: bytes) -> bool:
        """
        Whether C{mac} is the MAC of an incoming packet.

        @param seqid: the packet's sequence number.
        @param data: the packet, decrypted.
        @param mac: the MAC received with it.
        """
        if self._inHMAC is None:
            return mac == b""
        h = self._inHMAC.copy()
        h.update(_packLength(seqid & 0xFFFFFFFF))
        h.update(data)
        return hmac.compare_digest(h.digest(), mac)


class FastTransportMixin:
    """
    Mix into an C{SSHClientTransport} or C{SSHServerTransport} subclass, to
    its left: AES-GCM, C{hmac-sha2-256} first, and a faster packet layer.

    Receive state: C{_rbuf} holds received bytes from C{_roff} on; C{_first}
    is the already decrypted first block of a packet whose rest has not
    arrived (CBC/CTR only); C{_holdIncoming} is set while the peer's
    C{NEWKEYS} has arrived but our new keys are not ready, and nothing is
    decrypted then.
    """

    supportedCiphers = fastCiphers()
    supportedMACs = fastMACs()

    _rbuf: bytearray
    _roff = 0
    _first: bytes | None = None
    _holdIncoming = False
    _parsing = False
    _broken = False
    _secured = False

    # Attributes and methods of SSHTransportBase, for the type checker.
    transport: Any
    currentEncryptions: Any
    nextEncryptions: Any
    gotVersion: bool
    buf: bytes
    isClient: bool
    otherVersionString: bytes
    supportedVersions: tuple[bytes, ...]
    outgoingCompression: Any
    incomingCompression: Any
    outgoingPacketSequence: int
    incomingPacketSequence: int
    _keyExchangeState: str
    _KEY_EXCHANGE_NONE: str
    _blockedByKeyExchange: list[tuple[int, bytes]] | None
    _gotNewKeys: int
    _log: Any
    sendDisconnect: Callable[[int, bytes], None]
    dispatchMessage: Callable[[int, bytes], None]
    _allowedKeyExchangeMessageType: Callable[[int], bool]
    _unsupportedVersionReceived: Callable[[bytes], None]
    connectionSecure: Callable[[], None]

    def connectionMade(self) -> None:
        """
        Start with an empty receive buffer, then do what Conch does.
        """
        self._rbuf = bytearray()
        self._roff = 0
        super().connectionMade()  # type: ignore[misc]

    # Sending.

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        """
        Send one packet with one C{write}: compressed, padded, encrypted and
        authenticated as negotiated.  Messages not allowed during a key
        exchange wait for its end, as in Conch.

        @param messageType: the message number (C{MSG_*}).
        @param payload: the message after its number.
        """
        if self._keyExchangeState != self._KEY_EXCHANGE_NONE:
            if not self._allowedKeyExchangeMessageType(messageType):
                assert self._blockedByKeyExchange is not None
                self._blockedByKeyExchange.append((messageType, payload))
                return
        enc = self.currentEncryptions
        if self.outgoingCompression:
            payload = self.outgoingCompression.compress(
                bytes((messageType,)) + payload
            ) + self.outgoingCompression.flush(2)
            head = b""
        else:
            head = bytes((messageType,))
        aead = getattr(enc, "outAEAD", None)
        if aead is not None:
            # RFC 5647 section 7.2: the length (not encrypted) excludes
            # itself and must be a multiple of the block size.
            size = 1 + len(head) + len(payload)
            lenPad = _GCM_BLOCK - size % _GCM_BLOCK
            if lenPad < 4:
                lenPad += _GCM_BLOCK
            length = _packLength(size + lenPad)
            body = b"".join((bytes((lenPad,)), head, payload, _padding(lenPad)))
            self._send(length + aead.encrypt(enc.nextOutNonce(), body, length))
        else:
            bs = enc.encBlockSize
            size = 5 + len(head) + len(payload)
            lenPad = bs - size % bs
            if lenPad < 4:
                lenPad += bs
            packet = b"".join(
                (
                    struct.pack("!LB", size + lenPad - 4, lenPad),
                    head,
                    payload,
                    _padding(lenPad),
                )
            )
            mac = enc.makeMAC(self.outgoingPacketSequence, packet)
            self._send(enc.encrypt(packet) + mac)
        self.outgoingPacketSequence += 1

    def _send(self, data: bytes) -> None:
        """
        Hand one packet to the transport (a subclass may send it sooner).
        """
        self.transport.write(data)

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        """
        Take the peer's version line, then every complete packet in the
        buffer, and dispatch each.

        @param data: bytes from the peer.
        """
        if self._broken:
            return
        if not self.gotVersion:
            self.buf = self.buf + data
            if not self._takeVersion():
                return
            data, self.buf = self.buf, b""
            self._rbuf = bytearray()
            self._roff = 0
        if self._roff == len(self._rbuf):
            self._rbuf = bytearray(data)
            self._roff = 0
        else:
            self._rbuf += data
        self._processBuffer()

    def _takeVersion(self) -> bool:
        """
        Find the peer's C{SSH-} line in C{buf} (RFC 4253 section 4.2; bare
        C{\\n} accepted like Conch does) and leave what follows it there.

        @return: whether packets may be read now.
        """
        if len(self.buf) > 4096:
            self._broken = True
            self.sendDisconnect(
                _transport.DISCONNECT_CONNECTION_LOST,
                b"Peer version string longer than 4KB. Preventing a denial of service attack.",
            )
            return False
        if self.buf.find(b"\n", self.buf.find(b"SSH-")) == -1:
            return False
        lines = self.buf.split(b"\n")
        for i, line in enumerate(lines):  # noqa: B007
            if line.startswith(b"SSH-"):
                break
        else:
            return False
        self.gotVersion = True
        self.otherVersionString = line.rstrip(b"\r")
        remoteVersion = line.split(b"-")[1]
        if remoteVersion not in self.supportedVersions:
            self._broken = True
            self._unsupportedVersionReceived(remoteVersion)
            return False
        self.buf = b"\n".join(lines[i + 1 :])
        return True

    def _processBuffer(self) -> None:
        """
        Dispatch every complete packet in the buffer, unless already doing
        so further up the stack or held for new keys.
        """
        if self._parsing:
            return
        self._parsing = True
        try:
            while not self._holdIncoming and not self._broken:
                packet = self.getPacket()
                if packet is None:
                    break
                if not packet:
                    continue
                self.dispatchMessage(packet[0], packet[1:])
        finally:
            self._parsing = False
        if self._roff:
            del self._rbuf[: self._roff]
            self._roff = 0

    def getPacket(self) -> bytes | None:
        """
        Take one packet out of the receive buffer.

        @return: the payload (message number first), or L{None} if no whole
            packet is there yet or the packet was bad (then the connection
            is being closed).
        """
        enc = self.currentEncryptions
        buf = self._rbuf
        off = self._roff
        avail = len(buf) - off
        aead = getattr(enc, "inAEAD", None)
        if aead is not None:
            if avail < 4:
                return None
            (packetLen,) = _unpackLength(buf, off)
            if packetLen > _MAX_PACKET or packetLen < _GCM_BLOCK or packetLen % _GCM_BLOCK:
                self._fail(
                    _transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % packetLen
                )
                return None
            end = off + 4 + packetLen + _GCM_TAG
            if len(buf) < end:
                return None
            try:
                packet = aead.decrypt(enc.nextInNonce(), buf[off + 4 : end], buf[off : off + 4])
            except InvalidTag:
                self._fail(_transport.DISCONNECT_MAC_ERROR, b"bad MAC")
                return None
            paddingLen = packet[0]
            if paddingLen < 4 or paddingLen >= packetLen - 1:
                self._fail(_transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length")
                return None
            payload: bytes = packet[1 : packetLen - paddingLen]
        else:
            bs = enc.decBlockSize
            ms = enc.verifyDigestSize
            first = self._first
            if first is None:
                if avail < bs:
                    return None
                first = enc.decrypt(buf[off : off + bs])
            packetLen, paddingLen = _unpackLengthPad(first)
            if packetLen > _MAX_PACKET:
                self._fail(
                    _transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % packetLen
                )
                return None
            if (packetLen + 4) % bs:
                self._fail(
                    _transport.DISCONNECT_PROTOCOL_ERROR,
                    b"bad packet mod (%d%%%d == %d)" % (packetLen + 4, bs, (packetLen + 4) % bs),
                )
                return None
            end = off + 4 + packetLen
            if len(buf) < end + ms:
                self._first = first
                return None
            self._first = None
            packet = first + enc.decrypt(buf[off + bs : end])
            if type(packet) is not bytes:
                # The "none" cipher hands back our bytearray.
                packet = bytes(packet)
            if ms and not enc.verify(self.incomingPacketSequence, packet, buf[end : end + ms]):
                self._fail(_transport.DISCONNECT_MAC_ERROR, b"bad MAC")
                return None
            if paddingLen >= packetLen - 1:
                self._fail(_transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length")
                return None
            payload = packet[5 : 4 + packetLen - paddingLen]
            end += ms
        self._roff = end
        if self.incomingCompression:
            try:
                payload = self.incomingCompression.decompress(payload)
            except Exception:
                self._log.failure("Error decompressing payload")
                self._fail(_transport.DISCONNECT_COMPRESSION_ERROR, b"compression error")
                return None
        self.incomingPacketSequence += 1
        return payload

    def _fail(self, reason: int, description: bytes) -> None:
        """
        Disconnect because of a bad packet; read nothing more.
        """
        self._broken = True
        self.sendDisconnect(reason, description)
        return None

    # Key exchange.

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        """
        Swap the negotiated L{SSHCiphers} for L{FastCiphers} before the keys
        are derived into it.
        """
        nxt = self.nextEncryptions
        if not isinstance(nxt, FastCiphers):
            self.nextEncryptions = FastCiphers(
                nxt.outCipType, nxt.inCipType, nxt.outMACType, nxt.inMACType
            )
        super()._keySetup(sharedSecret, exchangeHash)  # type: ignore[misc]

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        """
        The peer switched to the new keys.  The server switches now; the
        client switches once its own keys are ready (and holds what comes
        after until then), and calls C{connectionSecure} after the first key
        exchange only.

        @param packet: the message data (must be empty).
        """
        if not self.isClient:
            super().ssh_NEWKEYS(packet)  # type: ignore[misc]
            return
        if packet != b"":
            self._fail(_transport.DISCONNECT_PROTOCOL_ERROR, b"NEWKEYS takes no data")
            return
        if not self.nextEncryptions.encBlockSize:
            # Our keys wait for verifyHostKey; what follows is encrypted
            # with keys we do not have yet.
            self._gotNewKeys = 1
            self._holdIncoming = True
            return
        self._gotNewKeys = 0
        self._newKeys()
        if not self._secured:
            self._secured = True
            self.connectionSecure()

    def _newKeys(self) -> None:
        """
        Switch to the new keys, then read what was held for them.
        """
        super()._newKeys()  # type: ignore[misc]
        if self._holdIncoming:
            self._holdIncoming = False
            self._processBuffer()
