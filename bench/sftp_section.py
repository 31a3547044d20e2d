"""
Issue 2, section 5: C{conchshare sftp-server} against OpenSSH's
C{sftp-server}, both run by the client itself (C{sftp -D}, and sshfs in
passive mode piped to the server).
"""

from __future__ import annotations

import shlex
from functools import partial

from common import (
    OPENSSH_SFTP_SERVER,
    Data,
    Endpoint,
    Row,
    conchshareCommand,
    measure,
)

from tests.support.workload import SshfsMount, mountSshfsPassive


def _passive(serverCommand: list[str], remotePath: str, mountPoint: str) -> SshfsMount:
    return mountSshfsPassive(serverCommand, remotePath, mountPoint)


def endpoints(data: Data) -> tuple[Endpoint, Endpoint]:
    """
    OpenSSH's sftp-server and conchshare's, serving C{data.folder}.
    """
    openssh = Endpoint(
        name="OpenSSH sftp-server",
        remoteRoot=data.folder,
        sftp=["sftp", "-D", OPENSSH_SFTP_SERVER],
        mount=partial(_passive, [OPENSSH_SFTP_SERVER], data.folder),
    )
    server = [*conchshareCommand(), "sftp-server", "--share", f"bench={data.folder}"]
    conchshare = Endpoint(
        name="conchshare sftp-server",
        remoteRoot="/bench",
        sftp=["sftp", "-D", shlex.join(server)],
        mount=partial(_passive, server, "/bench"),
    )
    return openssh, conchshare


def run(data: Data) -> tuple[Endpoint, Endpoint, list[Row]]:
    openssh, conchshare = endpoints(data)
    return openssh, conchshare, measure(openssh, conchshare, data)
