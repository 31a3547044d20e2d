#!/usr/bin/env python3
"""
Embedding conchshare in a Twisted program.

Shares FOLDER with DESTINATION in raw mode, prints where the share is
reachable on the remote host once the forward is up, prints a status line
every few seconds, and stops cleanly on Ctrl-C or SIGTERM::

    python examples/embed.py -i ~/.ssh/id_ed25519 me@server ~/Documents

On the remote host, browse it with::

    sftp -D "socat STDIO TCP:127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import task

from conchshare import ConchShareError, ShareService
from conchshare.events import sentence


async def main(reactor: Any, *argv: str) -> None:
    parser = argparse.ArgumentParser(description="Share a folder over SSH from a Twisted program.")
    parser.add_argument("destination")
    parser.add_argument("folder")
    parser.add_argument("-i", "--identity", action="append", default=[])
    parser.add_argument("--known-hosts")
    args = parser.parse_args(argv)

    service = ShareService(
        args.destination,
        [args.folder],
        mode="raw",
        identities=args.identity,
        knownHosts=args.known_hosts,
        reactor=reactor,
    )
    # Every event (connected, forwarding, channel-opened, ...) as a sentence.
    service.addObserver(lambda event: print(sentence(event), flush=True))
    # Ctrl-C and SIGTERM stop the reactor: stop the share first.
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    service.startService()
    try:
        listeners = await service.whenForwarding()
    except ConchShareError as e:
        print(f"embed.py: {e}", file=sys.stderr)
        raise SystemExit(e.exitCode)
    for listener in listeners:
        address, port = listener if isinstance(listener, tuple) else (listener, None)
        print(f"READY {address} {port}", flush=True)

    def report() -> None:
        status = service.status()
        print(
            f"status: {status['state']}, {status['channels']} channel(s),"
            f" {status['bytes_in']} bytes in, {status['bytes_out']} bytes out",
            flush=True,
        )

    loop = task.LoopingCall(report)
    loop.clock = reactor
    loop.start(5.0, now=False)
    try:
        await service.whenStopped()
    finally:
        if loop.running:
            loop.stop()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
