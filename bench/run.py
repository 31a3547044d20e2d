"""
The conchshare benchmark: medians of 3 runs, as ratios to OpenSSH doing the
same job in the same run.

    python bench/run.py [--quick] [--only sftp|tunnel] [--runs N]

Progress goes to stderr; the tables (Markdown) to stdout.  See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, Data, Endpoint, Row, Sizes, log, ratio, table  # noqa: E402

sys.path.insert(0, ROOT)

from tests.support.workload import sshfsAvailable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="conchshare against OpenSSH: sftp-server, and the reverse tunnel.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (32 MiB, 500/1,000 files)"
    )
    parser.add_argument("--only", choices=["sftp", "tunnel"], help="run one section")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload (default 3)")
    parser.add_argument(
        "--json", metavar="FILE", help="also write every measured value to FILE as JSON"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: every mount, sshd and tunnel is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    why = sshfsAvailable()
    if why is not None:
        sys.stderr.write(f"bench: {why}\n")
        return 1
    sizes = Sizes.quick() if args.quick else Sizes.full()
    sizes.runs = args.runs
    base = tempfile.mkdtemp(prefix="conchshare-bench-")
    started = time.monotonic()
    output = [
        f"conchshare benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"medians of {sizes.runs} runs; ratio = conchshare speed ÷ OpenSSH speed "
        f"(above 1: conchshare faster).",
        "",
    ]
    results: list[dict[str, object]] = []

    def record(title: str, ref: Endpoint, cand: Endpoint, rows: list[Row]) -> None:
        output.append(table(title, ref, cand, rows))
        results.append(
            {
                "section": title,
                "reference": ref.name,
                "candidate": cand.name,
                "unavailable": cand.unavailable,
                "rows": [
                    {
                        "workload": row.label,
                        "unit": row.unit,
                        "reference": row.reference,
                        "candidate": row.candidate,
                        "ratio": ratio(row),
                        "errors": row.errors,
                    }
                    for row in rows
                ],
            }
        )

    try:
        data = Data.prepare(base, sizes)
        if args.only in (None, "sftp"):
            import sftp_section

            log("SFTP section: conchshare sftp-server vs OpenSSH sftp-server")
            ref, cand, rows = sftp_section.run(data)
            record("SFTP server (issue 2 §5): sftp -D and sshfs -o passive, piped", ref, cand, rows)
        if args.only in (None, "tunnel"):
            import tunnel_section

            log("tunnel section: conchshare share vs ssh -R")
            for title, ref, cand, rows in tunnel_section.run(data, base):
                record(title, ref, cand, rows)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    output.append(f"Total time: {time.monotonic() - started:.0f} s.")
    sys.stdout.write("\n".join(output) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": output[0], "sections": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
