"""
The environment switches that turn a speed mechanism off, for measuring
what it is worth (``bench/README.md`` has the A/B figures) and for running
the portable code paths on Linux.

This is the one registry of them: every switch is a row of L{SWITCHES},
read when the code that it governs is set up (never at import time), so a
test or a benchmark can set it in the environment of the process it
starts.  Imports nothing from conchshare, and no Twisted: the file system
layer reads it too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    """
    One environment switch.

    @ivar name: the environment variable.
    @ivar default: its value when unset (C{"1"} on, C{"0"} off).
    @ivar governs: what it turns on, in one sentence.
    """

    name: str
    default: str
    governs: str


SWITCHES: dict[str, Switch] = {
    switch.name: switch
    for switch in [
        Switch(
            "CONCHSHARE_IO_URING",
            "1",
            "io_uring for create, write, close and stat; 0: worker threads only.",
        ),
        Switch(
            "CONCHSHARE_REACTOR_POLL",
            "1",
            "The reactor of the conchshare commands polls its descriptors for "
            "up to 200 µs before it sleeps, after activity (conchshare.spin); "
            "0: Twisted's epoll reactor, sleeping at once.",
        ),
        Switch(
            "CONCHSHARE_WORKERS_WAIT",
            "1",
            "After handing calls to worker threads, the reactor thread waits up "
            "to 300 µs for them (Workers.waitBriefly); 0: it goes back to the "
            "reactor at once.",
        ),
        Switch(
            "CONCHSHARE_THREADED_WAIT",
            "1",
            "conchshare sftp-server's reading thread polls stdin for up to 100 "
            "µs before it blocks in read (ThreadedServer); 0: it blocks at once.",
        ),
        Switch(
            "CONCHSHARE_PORTABLE_FS",
            "0",
            "1: none of the Linux-only file system calls (openat2, statx, "
            "renameat2, io_uring): the portable component walk alone, as on "
            "macOS or an old kernel.",
        ),
        Switch(
            "CONCHSHARE_RING_SPIN",
            "1",
            "the reactor polls io_uring's completion queue for a moment before "
            "it sleeps; 0: it only looks.",
        ),
    ]
}


def switchedOn(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Whether the switch C{name} (a key of L{SWITCHES}) is on: its variable
    is set to anything but C{"0"} or the empty string, or unset and on by
    default.

    @raise KeyError: C{name} is not a registered switch.
    """
    switch = SWITCHES[name]
    value = (os.environ if environ is None else environ).get(name, switch.default)
    return value not in ("", "0")
