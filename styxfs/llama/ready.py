"""Readiness, told to whoever started us.

A process started with LLAMAFS_READY_FD=N in its environment (N a pipe's
write end it inherited) writes, once it serves, the address it serves on
— a dial string and a newline — to N, and closes it: s6's
notification-fd, with the address in it, so that a process told to listen
on port 0 reports the port the OS chose rather than its starter guessing
one free.  A process that ends first closes N with nothing written.
"""

from __future__ import annotations

import os

READY_FD = "LLAMAFS_READY_FD"


def announce(address: object) -> None:
    """Say we serve on address, if we were asked to (once; our children
    are not asked: the variable goes from our environment)."""
    fd = os.environ.pop(READY_FD, "")
    if not fd.isdigit():
        return
    try:
        os.write(int(fd), f"{address}\n".encode())
        os.close(int(fd))
    except OSError:  # the starter went, or it was no pipe: nobody to tell
        pass
