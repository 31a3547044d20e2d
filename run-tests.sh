#!/usr/bin/env bash
# Install what the tests need on a clean Debian machine, then
# run every test with trial.  Ends with a plain tally line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    openssh-client openssh-server openssh-sftp-server sshfs fuse3 socat procps
python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install -q '.[test]'

log=$(mktemp)
set +e
# The suite: trial over tests/, warnings as errors.
python3 -W error -m twisted.trial tests 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# trial's summary: "PASSED (skips=1, successes=120)" or
# "FAILED (failures=1, errors=2, successes=117)".
summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -1 || true)
num() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 || true; }
passed=$(num successes); failures=$(num failures); errors=$(num errors)
unexpected=$(num unexpectedSuccesses); skips=$(num skips)
passed=${passed:-0}
failed=$(( ${failures:-0} + ${errors:-0} + ${unexpected:-0} ))
if [ -z "$summary" ] && [ "$rc" = 0 ]; then rc=1; fi
echo "${passed} passed, ${failed} failed, ${skips:-0} skipped"
exit "$rc"
