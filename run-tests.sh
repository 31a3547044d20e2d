#!/usr/bin/env bash
# Install what the tests need on a clean Debian machine, then run the tests
# with trial, warnings as errors, each time in a FRESH virtual environment
# holding the package as a user installs it (pip install ., not editable):
#   1. the unit tests (tests/unit: no sshd, no FUSE, no OpenSSH client or
#      server), then the end-to-end tests (tests/e2e: a throwaway sshd,
#      OpenSSH's sftp and sftp-server, sshfs), with the newest dependency
#      versions a user gets;
#   2. the unit tests with the lowest versions pyproject.toml allows
#      (tests/constraints-lowest.txt);
#   3. the unit tests with CONCHSHARE_PORTABLE_FS=1 (the file system layer
#      without its Linux-only calls, as on macOS or an old kernel).
# Ends with a plain tally line of every run: "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    openssh-client openssh-server openssh-sftp-server sshfs fuse3 socat procps \
    python3-venv

work=$(mktemp -d "${TMPDIR:-/tmp}/conchshare-ci.XXXXXX")
trap 'rm -rf "$work"' EXIT

# freshVenv NAME PIP-INSTALL-ARGS...: a new venv with the package installed.
freshVenv() {
    local name=$1 venv="$work/$1"
    shift
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install -q "$@"
    "$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(twisted|cryptography|pyasn1|bcrypt)==' | tr '\n' ' '
    echo "($name)"
}

freshVenv newest '.[test]'
freshVenv lowest -c tests/constraints-lowest.txt '.[test]'

# tally LOG: "passed failed skipped" from trial's summary line,
# "PASSED (skips=1, successes=120)" or "FAILED (failures=1, errors=2, ...)".
tally() {
    local summary
    summary=$(grep -E '^(PASSED|FAILED) \(' "$1" | tail -1 || true)
    num() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 || true; }
    local passed failures errors unexpected skips
    passed=$(num successes); failures=$(num failures); errors=$(num errors)
    unexpected=$(num unexpectedSuccesses); skips=$(num skips)
    if [ -z "$summary" ]; then errors=1; fi
    echo "${passed:-0} $(( ${failures:-0} + ${errors:-0} + ${unexpected:-0} )) ${skips:-0}"
}

# quietly PYTHON LOG TRIAL-ARGS...: run trial with warnings as errors, its
# output in LOG; print only the failures, if any, and the summary (the same
# tests are listed in full above).  Returns trial's exit code.
quietly() {
    local python=$1 log=$2 rc
    shift 2
    "$python" -W error -m twisted.trial "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
        tail -3 "$log"
    elif grep -q '^====' "$log"; then
        sed -n '/^====/,$p' "$log"
    else
        tail -20 "$log"  # trial did not get to its summary
    fi
    return "$rc"
}

set +e
# 1. Every test with the newest versions: the unit tests first (quick),
#    then the end-to-end tests.  Run from the checkout, so the tests import
#    its conchshare; the processes they start (conchshare, twistd) run in
#    trial's temporary directory and use the installed copy.
unitLog="$work/unit.log"
echo "== the unit tests (tests/unit), newest versions"
"$work/newest/bin/python" -W error -m twisted.trial tests.unit 2>&1 | tee "$unitLog"
rcUnit=${PIPESTATUS[0]}

e2eLog="$work/e2e.log"
echo "== the end-to-end tests (tests/e2e), newest versions"
"$work/newest/bin/python" -W error -m twisted.trial tests.e2e 2>&1 | tee "$e2eLog"
rcE2e=${PIPESTATUS[0]}

# 2. The unit tests with the lowest versions.
lowestLog="$work/lowest.log"
echo "== the unit tests with the lowest versions (tests/constraints-lowest.txt)"
quietly "$work/lowest/bin/python" "$lowestLog" --temp-directory=_trial_temp.lowest tests.unit
rcLowest=$?

# 3. The unit tests on the portable file system code paths.
portableLog="$work/portable.log"
echo "== the unit tests with CONCHSHARE_PORTABLE_FS=1, newest versions"
CONCHSHARE_PORTABLE_FS=1 quietly "$work/newest/bin/python" "$portableLog" \
    --temp-directory=_trial_temp.portable tests.unit
rcPortable=$?
set -e

read -r p1 f1 s1 < <(tally "$unitLog")
read -r p2 f2 s2 < <(tally "$e2eLog")
read -r p3 f3 s3 < <(tally "$lowestLog")
read -r p4 f4 s4 < <(tally "$portableLog")
rc=0
for code in "$rcUnit" "$rcE2e" "$rcLowest" "$rcPortable"; do
    if [ "$code" != 0 ]; then rc=1; fi
done
if [ $((f1 + f2 + f3 + f4)) != 0 ]; then rc=1; fi
echo "newest versions: unit $p1 passed, $f1 failed, $s1 skipped;" \
    "end-to-end $p2 passed, $f2 failed, $s2 skipped;" \
    "lowest versions (unit): $p3 passed, $f3 failed, $s3 skipped;" \
    "portable file system (unit): $p4 passed, $f4 failed, $s4 skipped"
echo "skipped: $((s1 + s2 + s3 + s4)) (tests whose system call or tool is missing here)"
# The last line: the plain tally.
echo "$((p1 + p2 + p3 + p4)) passed, $((f1 + f2 + f3 + f4)) failed"
exit "$rc"
