# mypy: allow-untyped-calls, disable-error-code="union-attr"
"""
Bulk transfer speed of one Conch client transport against OpenSSH's sshd on
loopback: stock Conch against L{conchshare.tunnel.fastpath.FastTransportMixin}.

Run from the repository root::

    python bench/transport_speed.py [MiB] [rounds]

Download is C{head -c N /dev/zero} on the server into our session channel;
upload is N zero bytes from us into C{cat > /dev/null}.  The channel's
receive window is 2 MiB in every case.  Prints MB/s (10**6 bytes) per case,
the best of the rounds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from tests.support.conchclient import _FastClient, _StockClient, runExec  # noqa: E402
from tests.support.sshd import ThrowawaySSHD  # noqa: E402

SHA256 = [b"hmac-sha2-256"]
CASES = [
    ("stock Conch (aes256-ctr, hmac-sha2-512)", _StockClient, None, None),
    ("stock Conch, aes128-ctr + hmac-sha2-256", _StockClient, [b"aes128-ctr"], SHA256),
    ("mixin, aes128-ctr + hmac-sha2-256", _FastClient, [b"aes128-ctr"], None),
    ("mixin, aes128-gcm@openssh.com", _FastClient, None, None),
    ("mixin, aes256-gcm@openssh.com", _FastClient, [b"aes256-gcm@openssh.com"], None),
]


@defer.inlineCallbacks
def main(reactor: object, mib: str = "256", rounds: str = "3") -> Any:
    size = int(mib) * 2**20
    sshd = ThrowawaySSHD.start(os.path.join(tempfile.mkdtemp(), "sshd"))
    try:
        for label, cls, ciphers, macs in CASES:
            for direction in ["down", "up"]:
                best = 0.0
                for _ in range(int(rounds)):
                    kw: dict[str, Any]
                    if direction == "down":
                        kw = {"command": b"head -c %d /dev/zero" % size}
                    else:
                        kw = {"command": b"cat > /dev/null", "zeros": size}
                    f: Any = yield runExec(
                        sshd, cls, ciphers=ciphers, macs=macs, hashData=False, **kw
                    )
                    assert f.count == (size if direction == "down" else 0), f.count
                    best = max(best, size / (f.finished - f.started) / 1e6)
                print(f"{label:42} {direction:4} {best:7.0f} MB/s", flush=True)
    finally:
        sshd.stop()
    return None


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
