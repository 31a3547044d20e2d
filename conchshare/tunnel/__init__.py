"""
The outbound SSH client: transport, user auth, forwards, channels, the nested
SSH server and the channel group that pauses and resumes every channel.
"""
