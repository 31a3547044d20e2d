"""
The process's descriptor limit (C{RLIMIT_NOFILE}).

The commands (C{share}, C{mount}, C{sftp-server}; not the library) raise
the soft limit to the hard one at start, so that the SFTP handle budget
(L{conchshare.sftp.budget}) is as large as the system allows.  Programs
they start (a C{ProxyCommand}) get the limit the command started with:
many programs use C{select} or loop over every possible descriptor.
"""

from __future__ import annotations

import resource

__all__ = ["childLimitCommand", "raiseFileLimit"]

# The soft limit before raiseFileLimit raised it (None: not raised).
_original: list[int] = []


def raiseFileLimit() -> int | None:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit.  Call it before any
    SFTP client is served (the budget is read then).

    @return: the soft limit before, or L{None} when it was not raised (already
        at the hard limit, or refused).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or _original:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return None
    _original.append(soft)
    return soft


def childLimitCommand(command: str) -> str:
    """
    The shell command that runs C{command} (shell syntax, for C{/bin/sh -c})
    with the soft descriptor limit the process started with.
    """
    if not _original or _original[0] == resource.RLIM_INFINITY:
        return command
    # A line of its own: the command runs as it would have, in this shell.
    return f"ulimit -S -n {_original[0]}\n{command}"
