"""
The C{conchshare} console command: dispatches to the subcommands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """\
usage: conchshare COMMAND [options] ...

commands:
  share        share folders through a remote port or socket (reverse tunnel)
  mount        share folders and mount them on the remote host with sshfs
  ctl          pause, resume or query a running conchshare
  sftp-server  speak SFTP v3 on stdin/stdout, like OpenSSH's sftp-server

'conchshare COMMAND --help' describes a command; 'conchshare --version'
prints the version.
"""


def _subcommands() -> dict[str, Callable[[list[str]], int]]:
    # Imported lazily: 'sftp-server' must start fast and import no tunnel code.
    def sftpServer(argv: list[str]) -> int:
        from conchshare.sftp.stdio import main

        return main(argv)

    def share(argv: list[str]) -> int:
        from conchshare.command import shareMain

        return shareMain(argv)

    def mount(argv: list[str]) -> int:
        from conchshare.command import mountMain

        return mountMain(argv)

    def ctl(argv: list[str]) -> int:
        from conchshare.control import ctlMain

        return ctlMain(argv)

    return {"sftp-server": sftpServer, "share": share, "mount": mount, "ctl": ctl}


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{conchshare}; return the exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version", "version"):
        from conchshare import __version__

        sys.stdout.write(f"conchshare {__version__}\n")
        return 0
    commands = _subcommands()
    command = commands.get(args[0])
    if command is None:
        sys.stderr.write(f"conchshare: unknown command {args[0]!r}; try 'conchshare --help'.\n")
        return 2
    return command(args[1:])


def run() -> None:
    """
    Console-script entry point.
    """
    sys.exit(main())


if __name__ == "__main__":
    run()
