"""
A/B of one environment switch (conchshare.switches): bench/run.py run with
the switch on, off, on, off, back to back, and the ratios compared.

    python bench/ab.py SWITCH [--runs N] [--quick] [--only sftp|tunnel] [--out DIR]

Each of the four rounds is ``bench/run.py --runs N --json FILE`` with
SWITCH=1 ("on") or SWITCH=0 ("off") in its environment (inherited by every
conchshare process it starts) and this checkout first on PYTHONPATH.  Prints,
per workload, the ratio conchshare ÷ OpenSSH of each round, and for each
pair (on then off) the ratio on ÷ ratio off: above 1, the mechanism the
switch governs made conchshare faster.  The rounds' JSON files and tables
are kept in DIR.  See bench/README.md ("A/B of a switch").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from conchshare.switches import SWITCHES  # noqa: E402

#: The rounds, in the order they run: two pairs back to back.
ROUNDS = [("on", "1"), ("off", "0"), ("on", "1"), ("off", "0")]


def log(message: str) -> None:
    """
    Progress, on stderr (the tables go to stdout).
    """
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] ab: {message}\n")
    sys.stderr.flush()


def runRound(
    switch: str, value: str, jsonPath: str, runArgs: list[str], tablePath: str
) -> dict[str, Any]:
    """
    One C{bench/run.py} with C{switch} set to C{value}; its JSON.

    @raise SystemExit: bench/run.py failed.
    """
    env = dict(os.environ)
    env[switch] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    argv = [sys.executable, os.path.join(HERE, "run.py"), *runArgs, "--json", jsonPath]
    with open(tablePath, "w") as table:
        done = subprocess.run(argv, env=env, stdout=table)
    if done.returncode != 0:
        raise SystemExit(f"ab: bench/run.py with {switch}={value} exited {done.returncode}")
    with open(jsonPath) as f:
        result: dict[str, Any] = json.load(f)
    return result


def ratios(result: dict[str, Any]) -> dict[tuple[str, str], float | None]:
    """
    The ratio (conchshare ÷ OpenSSH) of every workload of one round, by
    (section, workload); L{None} where it failed or was not available.
    """
    found: dict[tuple[str, str], float | None] = {}
    for section in result["sections"]:
        for row in section["rows"]:
            value = None if section["unavailable"] else row["ratio"]
            found[(section["section"], row["workload"])] = value
    return found


def compare(labels: list[str], rounds: list[dict[str, Any]]) -> str:
    """
    The Markdown table of the rounds' ratios, and of on ÷ off for each
    pair (rounds 1-2, 3-4, ...).
    """
    perRound = [ratios(result) for result in rounds]
    keys: list[tuple[str, str]] = []
    for found in perRound:
        keys.extend(key for key in found if key not in keys)
    pairs = len(rounds) // 2
    header = ["workload"] + labels + [f"on ÷ off, pair {n + 1}" for n in range(pairs)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    section = None
    for key in keys:
        if key[0] != section:
            section = key[0]
            lines.append(f"| **{section.split(' (')[0]}** |" + " |" * (len(header) - 1))
        values = [found.get(key) for found in perRound]
        cells = ["—" if v is None else f"{v:.2f}×" for v in values]
        for n in range(pairs):
            on, off = values[2 * n], values[2 * n + 1]
            cells.append("—" if on is None or off is None or off == 0 else f"{on / off:.2f}")
        lines.append(f"| {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/ab.py",
        description="bench/run.py with an environment switch on, off, on, off; "
        "ratios per round and on ÷ off per pair.",
    )
    parser.add_argument("switch", choices=sorted(SWITCHES), help="the environment switch")
    parser.add_argument(
        "--runs", type=int, default=7, help="runs per workload in each round (default 7)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (bench/run.py --quick)")
    parser.add_argument("--only", choices=["sftp", "tunnel"], help="one section (bench/run.py)")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where the rounds' JSON and tables go (default: a new temp dir)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    out = args.out or tempfile.mkdtemp(prefix="conchshare-ab-")
    os.makedirs(out, exist_ok=True)
    runArgs = ["--runs", str(args.runs)]
    if args.quick:
        runArgs.append("--quick")
    if args.only:
        runArgs += ["--only", args.only]

    started = time.monotonic()
    labels: list[str] = []
    rounds: list[dict[str, Any]] = []
    for number, (label, value) in enumerate(ROUNDS, 1):
        log(f"round {number} of {len(ROUNDS)}: {args.switch}={value} ({label})")
        name = f"round{number}-{label}"
        rounds.append(
            runRound(
                args.switch,
                value,
                os.path.join(out, name + ".json"),
                runArgs,
                os.path.join(out, name + ".md"),
            )
        )
        labels.append(label)
    output = [
        f"A/B of {args.switch} ({SWITCHES[args.switch].governs}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: bench/run.py "
        f"{' '.join(runArgs)}, rounds on, off, on, off back to back; "
        "ratio = conchshare speed ÷ OpenSSH speed; on ÷ off above 1: the "
        "mechanism made conchshare faster.",
        "",
        compare(labels, rounds),
        "",
        f"Rounds' JSON and tables: {out}. Total time: {time.monotonic() - started:.0f} s.",
    ]
    sys.stdout.write("\n".join(output) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
