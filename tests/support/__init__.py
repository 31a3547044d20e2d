"""
What the tests share; no test module imports another (ARCHITECTURE.rst,
"Tests").  A throwaway sshd (L{tests.support.sshd}) and connections through
it (L{tests.support.tunnelhelpers}, L{tests.support.sshclient},
L{tests.support.conchclient}); conchshare run as a command
(L{tests.support.command}) and its mounts (L{tests.support.mounting});
sshfs mounts and workloads (L{tests.support.workload}); SFTP packets
written by hand (L{tests.support.wire}), a core fed with them
(L{tests.support.harness}) and an in-memory avatar
(L{tests.support.sftpfake}); the engines set up for a test
(L{tests.support.engines}); the shared folders of the confinement tests
(L{tests.support.sharetree}); the servers of the differential test
(L{tests.support.sftpdiff}, L{tests.support.channelserver}).
"""

import os

#: The checkout the tests come from (the folder holding C{conchshare/}).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
