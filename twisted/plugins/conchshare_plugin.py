"""
C{twistd conchshare share|mount ...}: the conchshare service under twistd.
"""

from twisted.application.service import ServiceMaker

conchshare = ServiceMaker(  # type: ignore[no-untyped-call]
    "conchshare",
    "conchshare.command",
    "Share local folders with a remote host over an outbound SSH connection.",
    "conchshare",
)
