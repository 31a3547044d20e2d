"""
The remote side of L{conchshare.mount}: the shell scripts it runs on the
remote host, how their words are quoted (every path through
L{shlex.quote}, whatever the remote user's login shell is: each command
runs through C{/bin/sh -c}) and how their output is read (records
C{NUL key=value NUL}, sshfs's process id).  No I/O.
"""

from __future__ import annotations

import shlex

__all__ = [
    "CHECK",
    "INSTALL_HINT",
    "PID_MARK",
    "PREPARE",
    "UNMOUNT",
    "lastLine",
    "readRecords",
    "quoteAssignment",
    "remoteScript",
    "remoteShellPath",
    "shellCommand",
    "socatEscape",
    "sshfsPid",
]

#: The line the sshfs command prints on stderr before it becomes sshfs: its
#: process id (also its process group's: sshd starts every command in a
#: session of its own).
PID_MARK = "conchshare-sshfs-pid="

INSTALL_HINT = {
    "sshfs": "install it (apt-get install sshfs)",
    "fusermount": "install FUSE (apt-get install fuse3)",
    "socat": "install it (apt-get install socat)",
    "ssh": "install it (apt-get install openssh-client)",
}


def remoteShellPath(path: str) -> str:
    """
    A remote path as a word of a POSIX shell command.  Everything is quoted;
    only a leading C{~} or C{~/} becomes C{"$HOME"} so it still names the
    remote home directory.
    """
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        rest = path[2:]
        return '"$HOME"/' + shlex.quote(rest) if rest else '"$HOME"'
    return shlex.quote(path)


def shellCommand(script: str) -> bytes:
    """
    The exec request for C{script}: run by C{sh} whatever the login shell.
    """
    return ("/bin/sh -c " + shlex.quote(script)).encode("utf-8", "surrogateescape")


#: The keys of the records our remote scripts print.
_RECORD_KEYS = frozenset(
    {
        "missing",
        "nofuse",
        "nopassive",
        "fusermount",
        "notdir",
        "mkdir",
        "created",
        "mounted",
        "path",
        "result",
        "error",
    }
)


def readRecords(data: bytes) -> dict[str, str]:
    """
    Parse the records our remote scripts print, each C{NUL key=value NUL}.
    What comes before the first record (a chatty login script's output) is
    ignored.
    """
    result: dict[str, str] = {}
    for record in data.split(b"\0")[1:]:
        key, equals, value = record.decode("utf-8", "surrogateescape").partition("=")
        if equals and key in _RECORD_KEYS:
            result[key] = value
    return result


def lastLine(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line and not line.startswith(PID_MARK)]
    return lines[-1] if lines else ""


def sshfsPid(stderr: bytes) -> int | None:
    """
    The process id the sshfs command printed on its stderr, if it did.
    """
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith(PID_MARK) and line[len(PID_MARK) :].strip().isdigit():
            return int(line[len(PID_MARK) :])
    return None


# Shell functions shared by our scripts.  ismnt: is $1 a mount point?
# (util-linux mountpoint when present, else compare device numbers).
_FUNCTIONS = r"""
ismnt() {
  if command -v mountpoint >/dev/null 2>&1; then mountpoint -q -- "$1"
  else [ "$(stat -c %d -- "$1" 2>/dev/null)" != "$(stat -c %d -- "$1/.." 2>/dev/null)" ]; fi
}
rec() { printf '\0%s=%s\0' "$1" "$2"; }
# $(...) drops the trailing newlines of what it captures, and a path may end
# with one: these keep them, answering in $r.
absdir() { r=$(cd -- "$1" && pwd && echo .) && r=${r%??}; }
parentdir() { r=$(dirname -- "$1" && echo .) && r=${r%??}; }
unset CDPATH
"""

# Checks the tools, then prepares the mount point; prints records.  Nothing
# is created unless every check passed.
PREPARE = r"""
missing=
command -v sshfs >/dev/null 2>&1 || missing="$missing sshfs"
if command -v fusermount3 >/dev/null 2>&1; then fm=fusermount3
elif command -v fusermount >/dev/null 2>&1; then fm=fusermount
else missing="$missing fusermount"; fi
for tool in $extra; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ]; then rec missing "$missing"; exit 0; fi
if [ ! -e /dev/fuse ]; then rec nofuse 1; exit 0; fi
if [ -n "$passive" ] && ! sshfs --help 2>&1 | grep -q -e 'passive'; then rec nopassive 1; exit 0; fi
rec fusermount "$fm"
# A relative path starting with "-" is no option, and cd's "-" no $OLDPWD
# (an empty one stays empty: mkdir refuses it).
case $d in /* | '') ;; *) d=./$d ;; esac
if [ -n "$oldpid" ] && [ -r "/proc/$oldpid/environ" ] &&
   tr '\0' '\n' <"/proc/$oldpid/environ" | grep -qxF -e "CONCHSHARE_MOUNT=$token"; then
  # The sshfs of the old connection still runs (its sshd may be stopped):
  # it must be dead before a new mount takes the path, or its exit would
  # unmount the path, new mount and all.  Killed, it unmounts nothing.
  kill -KILL "-$oldpid" 2>/dev/null || kill -KILL "$oldpid" 2>/dev/null
  i=0
  while [ -e "/proc/$oldpid" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$oldpid/status" 2>/dev/null; do
    i=$((i+1)); [ "$i" -ge 50 ] && break; sleep 0.1
  done
fi
if [ -n "$stale" ]; then "$fm" -u -z -- "$d" >/dev/null 2>&1; fi
if [ -e "$d" ] || [ -L "$d" ]; then
  if [ ! -d "$d" ]; then rec notdir 1; exit 0; fi
else
  top=$d; parentdir "$d"; p=$r
  while [ ! -e "$p" ] && [ ! -L "$p" ]; do top=$p; parentdir "$p"; p=$r; done
  if ! err=$(mkdir -p -- "$d" 2>&1); then rec mkdir "$err"; exit 0; fi
  absdir "$top" && rec created "$r"
fi
if ismnt "$d"; then absdir "$d" || r=$d; rec mounted "$r"; exit 0; fi
absdir "$d" || exit 0
rec path "$r"
"""

# Answers (exit 0) once $d is a mount point that lists.
CHECK = r"""
ismnt "$d" && ls -a -- "$d" >/dev/null 2>&1
"""

# Unmounts $d with $fm, retrying a busy mount, then lazily; removes the
# directories we created ($created: the top-most one).
UNMOUNT = r"""
i=0
while :; do
  if out=$(LC_ALL=C "$fm" -u -- "$d" 2>&1); then rec result unmounted; break; fi
  case $out in
    *busy*) ;;
    *) if ! ismnt "$d"; then rec result notmounted; break; fi ;;
  esac
  i=$((i+1))
  if [ "$i" -ge "$attempts" ]; then
    if out=$(LC_ALL=C "$fm" -u -z -- "$d" 2>&1); then rec result lazy
    else rec result failed; rec error "$out"; fi
    break
  fi
  sleep "$pause"
done
if [ -n "$created" ]; then
  p=$d
  while rmdir -- "$p" 2>/dev/null; do
    [ "$p" = "$created" ] && break
    parentdir "$p"; p=$r
  done
fi
"""


def remoteScript(body: str, **variables: str) -> bytes:
    """
    A remote command: shell variables assigned from quoted values, our
    functions, then C{body}.
    """
    assignments = "".join(f"{name}={value}\n" for name, value in variables.items())
    return shellCommand(assignments + _FUNCTIONS + body)


def quoteAssignment(word: str) -> str:
    name, equals, value = word.partition("=")
    if equals and name.isidentifier() and name.isupper():
        return name + "=" + shlex.quote(value)
    return shlex.quote(word)


def socatEscape(text: str) -> str:
    """
    Escape what socat's address parser would interpret.
    """
    return "".join("\\" + c if c in "\\\"'(){}[],:!; " else c for c in text)
