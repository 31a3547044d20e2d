"""
The SFTP v3 subsystem: wire codec, sans-IO server core, Twisted protocol and
the share avatar.
"""
