#!/usr/bin/env bash
# Install what the tests need on a clean Debian machine, then run the tests
# with trial, warnings as errors, each time in a FRESH virtual environment
# holding the package as a user installs it (pip install ., not editable):
#   1. every test, with the newest dependency versions a user gets;
#   2. the fast tests (no sshd, no sshfs) with the lowest versions
#      pyproject.toml allows (tests/constraints-lowest.txt).
# Ends with a plain tally line of both runs: "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    openssh-client openssh-server openssh-sftp-server sshfs fuse3 socat procps \
    python3-venv

# The tests that start no sshd and no sshfs: quick, and what the lowest
# dependency versions are checked with.
FAST_TESTS=(
    tests.test_audit tests.test_avatar tests.test_channels tests.test_cli
    tests.test_client_auth tests.test_command tests.test_confined tests.test_control
    tests.test_depwarnings tests.test_destination tests.test_events tests.test_fuzz_sftp
    tests.test_knownhosts tests.test_nested tests.test_service tests.test_sftp_core
    tests.test_sftp_protocol tests.test_sftp_threaded tests.test_sftp_wire tests.test_shares
    tests.test_spin tests.test_sshconfig tests.test_uring tests.test_workers
    tests.test_ordering tests.test_budget tests.test_options tests.test_startup
)

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

set +e
# 1. The suite with the newest versions.  Run from the checkout, so the
#    tests import its conchshare; the processes they start (conchshare,
#    twistd) run in trial's temporary directory and use the installed copy.
newestLog="$work/newest.log"
"$work/newest/bin/python" -W error -m twisted.trial tests 2>&1 | tee "$newestLog"
rcNewest=${PIPESTATUS[0]}

# 2. The fast tests with the lowest versions.
lowestLog="$work/lowest.log"
echo "== the fast tests with the lowest versions (tests/constraints-lowest.txt)"
"$work/lowest/bin/python" -W error -m twisted.trial --temp-directory=_trial_temp.lowest \
    "${FAST_TESTS[@]}" >"$lowestLog" 2>&1
rcLowest=$?
# The failures, if any, and the summary (the tests are listed above).
if [ "$rcLowest" != 0 ]; then sed -n '/^====/,$p' "$lowestLog"; else tail -3 "$lowestLog"; fi
set -e

read -r p1 f1 s1 < <(tally "$newestLog")
read -r p2 f2 s2 < <(tally "$lowestLog")
rc=0
if [ "$rcNewest" != 0 ] || [ "$rcLowest" != 0 ] || [ $((f1 + f2)) != 0 ]; then rc=1; fi
echo "newest versions: $p1 passed, $f1 failed, $s1 skipped;" \
    "lowest versions (fast tests): $p2 passed, $f2 failed, $s2 skipped"
echo "$((p1 + p2)) passed, $((f1 + f2)) failed, $((s1 + s2)) skipped"
exit "$rc"
