"""Ports for what cannot listen on port 0 and say which one it got.

Whatever can is started on port 0 and tells its port back
(styxfs.llama.ready).  What cannot (dnsmasq; a deployment started again
on the ports it had) gets reserved_ports: ports below the range the OS
hands out for port 0 and for outgoing connections (ip_local_port_range),
so that nothing the OS assigns can take them, each held by a lock file
while the test runs, so that no other test, here or in another run of the
suite at the same time, takes them either.  A guessed free port (bind 0,
close, hand on) has neither guarantee: anything connecting out may take it
before it is listened on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile

LOCKS = os.path.join(tempfile.gettempdir(), "llamafs-test-ports")
LOWEST = 20000  # below it, the well-known services' usual ports


def ephemeral_start() -> int:
    """The first port the OS hands out by itself."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def bindable(port: int) -> bool:
    """Nothing holds port on 127.0.0.1, TCP or UDP, now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def reserved_ports(n: int = 1):
    """n consecutive ports, free and this test's own until the block ends."""
    os.makedirs(LOCKS, exist_ok=True)
    firsts = list(range(LOWEST, ephemeral_start() - n))
    random.shuffle(firsts)
    for first in firsts:
        with contextlib.ExitStack() as held:
            if all(_lock(held, port) for port in range(first, first + n)) and all(
                    bindable(port) for port in range(first, first + n)):
                yield list(range(first, first + n))
                return
    raise RuntimeError(f"no {n} consecutive ports free below {ephemeral_start()}")


def _lock(held: contextlib.ExitStack, port: int) -> bool:
    f = held.enter_context(open(os.path.join(LOCKS, str(port)), "w"))
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def refusing_port():
    """A port that refuses connections, and that nothing else can take while
    the block runs: bound (without SO_REUSEADDR), never listened on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
