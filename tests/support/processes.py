"""
Child processes driven through their stdin (an SFTP server on a pipe, an
C{sftp -b -} session), for the tests and the benchmarks.
"""

from __future__ import annotations

import subprocess
from typing import Any


def endProcess(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """
    End a child that reads from its stdin until end of file: close its
    stdin, wait up to C{timeout} seconds for it to exit, kill it if it has
    not; then close its stdout.  A child that already exited is only
    reaped.
    """
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:
            pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
