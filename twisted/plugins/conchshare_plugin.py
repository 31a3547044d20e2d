"""
C{twistd conchshare share|mount ...}: the conchshare service under twistd;
C{twistd --reactor=conchshare-epoll ...}: its reactor that polls before it
sleeps (L{conchshare.spinreactor}).
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

conchshare = ServiceMaker(  # type: ignore[no-untyped-call]
    "conchshare",
    "conchshare.command",
    "Share local folders with a remote host over an outbound SSH connection.",
    "conchshare",
)

#: C{twistd --reactor=conchshare-epoll}: Twisted's epoll reactor that polls
#: before it sleeps while conchshare serves (L{conchshare.spinreactor}).
conchshareEpoll = Reactor(
    "conchshare-epoll",
    "conchshare.spinreactor",
    "epoll(4) based reactor that polls before it sleeps (conchshare).",
)
