#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian machine:
#   1. install what is needed (OpenSSH, sshfs, FUSE, socat; conchshare itself);
#   2. start a throwaway sshd on a free loopback port: the "remote host"
#      (its own config, host key, client key and known_hosts in a temp dir);
#   3. run `conchshare mount` on a sample folder;
#   4. show the remote side listing, reading and writing through the mount
#      (ssh to the throwaway sshd, which runs ls/cat/echo on the mount point);
#   5. stop conchshare (SIGTERM) and check that the file written remotely
#      arrived in the local folder and that the mount is gone;
#   6. clean up everything.  Exit status 0 on success.
#
# Usage: demo/run-demo.sh [--via passive|ssh|socket|raw-tcp]
# Environment: CONCHSHARE_DEMO_NO_INSTALL=1 skips step 1 (everything must be
# there already).
set -euo pipefail

via=passive
while [ $# -gt 0 ]; do
    case $1 in
        --via) via=${2:?--via needs a value}; shift 2 ;;
        --via=*) via=${1#--via=}; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }

# -- 1. install -------------------------------------------------------------

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

missingTools() {
    local t
    for t in ssh ssh-keygen sshfs socat python3; do
        command -v "$t" >/dev/null 2>&1 || echo "$t"
    done
    [ -x "$SSHD" ] || echo sshd
    [ -x /usr/lib/openssh/sftp-server ] || echo sftp-server
    command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 || echo fusermount
}

if [ -z "${CONCHSHARE_DEMO_NO_INSTALL:-}" ]; then
    if [ -n "$(missingTools)" ]; then
        step "Installing OpenSSH, sshfs, FUSE and socat (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends \
            openssh-server openssh-client openssh-sftp-server sshfs fuse3 socat \
            python3 python3-pip python3-venv procps
    fi
    SSHD=$(command -v sshd || echo /usr/sbin/sshd)
fi
[ -z "$(missingTools)" ] || fail "missing tools: $(missingTools | tr '\n' ' ')"
[ -e /dev/fuse ] || fail "there is no /dev/fuse here: FUSE is needed for sshfs (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"

# Use conchshare from this checkout: already installed from it (for example
# editable), else `pip install .` (into a venv where the system Python
# refuses, PEP 668).
python=python3
installedFrom=$(cd / && python3 -c 'import conchshare.mount as m, os; print(os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))))' 2>/dev/null || true)
if [ -n "${CONCHSHARE_DEMO_NO_INSTALL:-}" ]; then
    [ -n "$installedFrom" ] || fail "conchshare is not installed (pip install $repo)"
elif [ "$installedFrom" != "$repo" ]; then
    step "Installing conchshare (pip install .)"
    if ! python3 -m pip install -q "$repo" 2>/dev/null; then
        venv=${XDG_CACHE_HOME:-$HOME/.cache}/conchshare-demo-venv
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$repo"
        python=$venv/bin/python
    fi
fi
# An array, not a function: a function started with & runs in a subshell
# whose PID is not conchshare's.
conchshare=("$python" -m conchshare)

# -- 2. the throwaway sshd: the "remote host" ------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/conchshare-demo.XXXXXXXX")
chmod 700 "$tmp"
sshdPid=""
sharePid=""
mountPoint="$tmp/remote home/shared folder"

cleanup() {
    set +e
    if [ -n "$sharePid" ] && kill -0 "$sharePid" 2>/dev/null; then
        kill -TERM "$sharePid"; sleep 1; kill -KILL "$sharePid" 2>/dev/null
    fi
    if mountpoint -q -- "$mountPoint" 2>/dev/null; then
        fusermount3 -u -z -- "$mountPoint" 2>/dev/null || fusermount -u -z -- "$mountPoint" 2>/dev/null
    fi
    if [ -n "$sshdPid" ]; then
        pkill -KILL -P "$sshdPid" 2>/dev/null
        kill -TERM "$sshdPid" 2>/dev/null
        wait "$sshdPid" 2>/dev/null
    fi
    rm -rf -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "Starting a throwaway sshd on loopback (the remote host) in $tmp"
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd
user=$(id -un)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N "" -C demo-host -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N "" -C demo-client -f "$tmp/client_key"
cp "$tmp/client_key.pub" "$tmp/authorized_keys"
echo "[127.0.0.1]:$port $(cat "$tmp/host_key.pub")" > "$tmp/known_hosts"
cat > "$tmp/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
HostKey $tmp/host_key
AuthorizedKeysFile $tmp/authorized_keys
PidFile $tmp/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
X11Forwarding no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
"$SSHD" -D -e -f "$tmp/sshd_config" 2>"$tmp/sshd.log" &
sshdPid=$!
for _ in $(seq 100); do
    if "$python" -c "import socket,sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $port)))" 2>/dev/null; then break; fi
    kill -0 "$sshdPid" 2>/dev/null || fail "sshd did not start: $(cat "$tmp/sshd.log")"
    sleep 0.1
done
echo "sshd listens on 127.0.0.1:$port"

# What the remote user runs: plain OpenSSH ssh to the throwaway sshd.
remote() {
    ssh -F /dev/null -p "$port" -i "$tmp/client_key" -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$tmp/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o LogLevel=ERROR "$user@127.0.0.1" "$@"
}

# -- 3. conchshare mount ----------------------------------------------------------

sample="$tmp/sample folder"
mkdir -p "$sample/notes"
echo "Hello from the local machine." > "$sample/hello.txt"
echo "shared with conchshare" > "$sample/notes/todo.txt"

step "conchshare mount $user@127.0.0.1:$port '$sample' --at '$mountPoint' --via $via"
"${conchshare[@]}" mount --json --via "$via" \
    -i "$tmp/client_key" --known-hosts "$tmp/known_hosts" \
    "$user@127.0.0.1:$port" "$sample" --at "$mountPoint" \
    >"$tmp/events.jsonl" 2>"$tmp/conchshare.err" &
sharePid=$!

for _ in $(seq 300); do
    grep -q '"event": *"mounted"' "$tmp/events.jsonl" 2>/dev/null && break
    kill -0 "$sharePid" 2>/dev/null || break
    sleep 0.1
done
cat "$tmp/events.jsonl"
grep -q '"event": *"mounted"' "$tmp/events.jsonl" ||
    fail "conchshare did not report the mount: $(cat "$tmp/conchshare.err")"

# -- 4. the remote side reads and writes through the mount -----------------------

# POSIX single quoting for the remote shell.
shq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
q=$(shq "$mountPoint")
step "On the remote host: ls -l $mountPoint"
remote "ls -l $q" || fail "the remote host cannot list the mount"
step "On the remote host: cat hello.txt and notes/todo.txt"
remote "cat $q/hello.txt $q/notes/todo.txt" || fail "the remote host cannot read through the mount"
step "On the remote host: echo ... > from-remote.txt"
remote "echo 'Written on the remote host.' > $q/from-remote.txt && cat $q/from-remote.txt" ||
    fail "the remote host cannot write through the mount"

# -- 5. stop conchshare and check -------------------------------------------------

step "Stopping conchshare (SIGTERM)"
kill -TERM "$sharePid"
rc=0
wait "$sharePid" || rc=$?
sharePid=""
echo "Events:"; cat "$tmp/events.jsonl"
[ "$rc" = 0 ] || fail "conchshare exited with status $rc: $(cat "$tmp/conchshare.err")"
grep -q '"event": *"unmounted"' "$tmp/events.jsonl" || fail "conchshare did not report the unmount"

step "Checking the local folder"
[ "$(cat "$sample/from-remote.txt")" = "Written on the remote host." ] ||
    fail "the file written remotely did not arrive in $sample"
echo "$sample/from-remote.txt: $(cat "$sample/from-remote.txt")"
if remote "mountpoint -q $q"; then fail "the mount is still there"; fi
if remote "test -e $q"; then fail "the mount point conchshare created is still there"; fi
echo "The mount and the mount point are gone from the remote host."

step "Demo passed"
