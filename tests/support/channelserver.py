"""
Test-only: the channel engine on standard input and output.

C{python -m tests.support.channelserver [--umask UMASK] SHARE...} serves SFTP on
stdin/stdout exactly as C{conchshare share} serves each forwarded channel
in raw mode: the avatar and the protocol come from L{ShareService}'s own
factories (its workers, and its io_uring ring on an epoll reactor), the
reactor polls before it sleeps as C{share} makes it, and only the transport
differs (the process's pipes instead of an SSH channel).  The end-to-end
differential test drives it like OpenSSH's C{sftp-server}.  It exits when
stdin closes and every reply is written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def main(argv: list[str]) -> int:
    """
    Serve until stdin closes.

    @return: the exit code (0).
    """
    parser = argparse.ArgumentParser(prog="python -m tests.support.channelserver")
    parser.add_argument("--umask", default="022")
    parser.add_argument("shares", nargs="+")
    args = parser.parse_args(argv)

    from conchshare.command import commandReactor
    from conchshare.spin import spinBeforeSleeping

    # The reactor conchshare share installs (its polling one).
    reactor: Any = commandReactor()
    from twisted.internet.stdio import StandardIO

    from conchshare.service import ShareOptions, ShareService

    # Never started: only its factories of what serves a channel are used.
    service = ShareService(
        "unused.invalid",
        args.shares,
        ShareOptions(mode="raw", umask=int(args.umask, 8), sessionKey=False),
        reactor=reactor,
    )
    service._avatar = service._makeAvatar()
    workers = service._avatar.engine
    if workers.ring is None:
        # Still served (by worker threads), but not as share serves here.
        sys.stderr.write("channelserver: io_uring is not used\n")
    protocol = service._protocolFactory()()
    lost = protocol.connectionLost

    def connectionLost(reason: object = None) -> None:
        lost(reason)
        protocol.whenClosed().addCallback(lambda _: reactor.stop())

    protocol.connectionLost = connectionLost
    StandardIO(protocol, reactor=reactor)
    spinBeforeSleeping(reactor, service.callsRunning)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
