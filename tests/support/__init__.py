"""
What the tests share: a throwaway sshd (L{tests.support.sshd}), connections
through it (L{tests.support.tunnelhelpers}), conchshare run as a command
(L{tests.support.command}), sshfs mounts and workloads
(L{tests.support.workload}), independent SFTP wire encoders
(L{tests.support.wire}), an in-memory SFTP avatar
(L{tests.support.sftpfake}), and the servers of the differential test
(L{tests.support.sftpdiff}, L{tests.support.channelserver}).  No test
module imports another: what two of them need lives here.
"""

import os

#: The checkout the tests come from (the folder holding C{conchshare/}).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
