"""
Tests for L{conchshare.options}: one command-line definition per
subcommand, the same on every front end (C{conchshare COMMAND},
C{twistd conchshare COMMAND}), run as a user runs them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any, cast

from twisted.trial.unittest import SynchronousTestCase

from conchshare import __version__
from conchshare.command import TwistdOptions
from conchshare.errors import UsageError
from conchshare.options import makeParser, parseSFTPServerArguments
from conchshare.sftp.stdio import main as sftpServerMain

COMMANDS = ("share", "mount", "ctl", "sftp-server")


def conchshare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conchshare", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )


class OneDefinitionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "environ", {**os.environ, "COLUMNS": "100"})

    def test_helpOfEveryCommand(self) -> None:
        """
        C{conchshare COMMAND --help} prints the help of that command's parser
        in L{conchshare.options}, and exits 0.
        """
        for command in COMMANDS:
            done = conchshare(command, "--help")
            self.assertEqual(
                (done.returncode, done.stdout, done.stderr),
                (0, makeParser(command).format_help(), ""),
                command,
            )

    def test_twistdFromTheSameDefinition(self) -> None:
        """
        C{twistd conchshare share|mount --help} is the same parser's help,
        under twistd's program name; its options parse to what the command
        parses.
        """
        rows = cast(list[list[Any]], TwistdOptions.subCommands)
        subcommands = {row[0]: row[2] for row in rows}
        for command in ("share", "mount"):
            self.assertEqual(
                subcommands[command]().getUsage(),
                makeParser(command, prog=f"twistd conchshare {command}").format_help(),
            )
        options = TwistdOptions()
        options.parseOptions(["share", "--umask", "077", "--read-only", "h", "/srv"])
        args = options.subOptions["args"]
        self.assertEqual((args.umask, args.readOnly, args.allShares), (0o077, True, ["/srv"]))

    def test_unknownCommand(self) -> None:
        """
        L{makeParser} knows the four subcommands only.
        """
        self.assertRaises(ValueError, makeParser, "frobnicate")


class SFTPServerCommandLineTests(SynchronousTestCase):
    """
    C{conchshare sftp-server}'s command line, on the shared definition: the
    options, sentences and exit codes it always had.
    """

    def run_main(self, argv: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        return sftpServerMain(argv, stderr=err), err.getvalue()

    def test_version(self) -> None:
        """
        C{conchshare sftp-server --version} prints conchshare's version (not
        Twisted's) and exits 0.
        """
        done = conchshare("sftp-server", "--version")
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr), (0, f"conchshare {__version__}\n", "")
        )

    def test_options(self) -> None:
        """
        Short and long options, C{--share} and plain shares (those given
        with C{--share} first), the level in any case; defaults: umask 022,
        QUIET, read-write.
        """
        args = parseSFTPServerArguments(
            ["-R", "-u", "077", "-l", "debug", "-s", "a=/x", "b=/y", "--share", "c=/z"]
        )
        self.assertEqual(
            (args.readOnly, args.umask, args.logLevel, args.allShares),
            (True, 0o077, "DEBUG", ["a=/x", "c=/z", "b=/y"]),
        )
        args = parseSFTPServerArguments(["--umask=0", "--log-level=INFO", "--read-only"])
        self.assertEqual((args.readOnly, args.umask, args.logLevel), (True, 0, "INFO"))
        # Options after a share, as for share and mount.
        args = parseSFTPServerArguments(["b=/y", "--read-only", "-u", "077"])
        self.assertEqual((args.allShares, args.readOnly, args.umask), (["b=/y"], True, 0o077))
        args = parseSFTPServerArguments([])
        self.assertEqual(
            (args.readOnly, args.umask, args.logLevel, args.allShares),
            (False, 0o022, "QUIET", []),
        )

    def test_badUsageSentences(self) -> None:
        """
        Every kind of bad usage is one sentence on stderr, the one this
        command printed before, ending with where to get help; exit 2.
        """
        cases = {
            ("--bogus",): "Option --bogus not recognized.",
            ("-x",): "Option -x not recognized.",
            ("-Rx",): "Option -x not recognized.",
            ("--umask",): "Option --umask requires argument.",
            ("-u",): "Option -u requires argument.",
            ("--share",): "Option --share requires argument.",
            ("--read-only=yes",): "Option --read-only must not have an argument.",
            ("--umask", "9"): "The umask '9' is not an octal number.",
            ("--umask=abc",): "The umask 'abc' is not an octal number.",
            ("-u", "1000"): "The umask '1000' is out of range (000 to 777).",
            ("-l", "LOUD"): "Unknown log level 'LOUD'; use one of QUIET, FATAL, ERROR, "
            "INFO, VERBOSE, DEBUG, DEBUG1, DEBUG2, DEBUG3.",
        }
        for argv, sentence in cases.items():
            code, err = self.run_main(list(argv))
            self.assertEqual(
                (code, err),
                (
                    2,
                    f"conchshare sftp-server: {sentence} See 'conchshare sftp-server --help'.\n",
                ),
                argv,
            )

    def test_parseErrorIsUsageError(self) -> None:
        """
        L{parseSFTPServerArguments} raises L{UsageError} (exit code 2).
        """
        error = self.assertRaises(UsageError, parseSFTPServerArguments, ["--bogus"])
        self.assertEqual(error.exitCode, 2)
