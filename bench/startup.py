"""
Start-up time of an SFTP server on stdin/stdout, as each C{sftp -D} pays
it: start the command, send SFTP INIT, read VERSION, close its stdin.

    python bench/startup.py [--runs N] COMMAND [ARG...]
    python bench/startup.py conchshare sftp-server /tmp/share
    python bench/startup.py /usr/lib/openssh/sftp-server

Prints the median (and least) wall time to VERSION and the median (and
least) CPU time (user + system) of the whole run, over N runs (10).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import struct
import subprocess


def once(command: list[str]) -> tuple[float, float]:
    """
    One run of C{command}: (seconds to VERSION, CPU seconds in all).
    """
    from time import perf_counter

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(struct.pack(">IBI", 5, 1, 3))  # INIT, version 3
    process.stdin.flush()
    header = process.stdout.read(4)
    if len(header) < 4:
        raise SystemExit(f"{command[0]} gave no answer")
    (length,) = struct.unpack(">I", header)
    if process.stdout.read(length)[:1] != b"\x02":
        raise SystemExit(f"{command[0]} did not answer VERSION")
    wall = perf_counter() - start
    process.stdin.close()
    process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if not args.command:
        parser.error("give the command to start")
    runs = [once(args.command) for _ in range(args.runs)]
    walls = [wall * 1000 for wall, _ in runs]
    cpus = [cpu * 1000 for _, cpu in runs]
    print(
        f"to VERSION: median {statistics.median(walls):.1f} ms (least {min(walls):.1f}); "
        f"CPU: median {statistics.median(cpus):.1f} ms (least {min(cpus):.1f}); "
        f"{args.runs} runs"
    )


if __name__ == "__main__":
    main()
