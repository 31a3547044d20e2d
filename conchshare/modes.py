"""
The endpoint modes of a forward and the transports of a mount: the values
of C{share --mode} and C{mount --via}, defined once for the command line
(L{conchshare.options}), the service (L{conchshare.shareoptions}) and the
mount (L{conchshare.mount}).  Imports nothing: C{conchshare sftp-server}
loads it with its command line.
"""

__all__ = ["MODES", "MOUNT_VIAS"]

#: Endpoint modes of a forward (C{share --mode}).
MODES = ("ssh", "raw")

#: Transports of C{conchshare mount --via}.
MOUNT_VIAS = ("passive", "ssh", "socket", "raw-tcp")
