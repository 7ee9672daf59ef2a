"""Machines of a test's own: Linux network namespaces joined by veth pairs.

`Network` makes a hub namespace (where the test's coordinator runs: the
test's main thread enters it) and, for each machine, a namespace of its
own with a veth pair to the hub: 10.213.N.1 on the hub's side, 10.213.N.2
on the machine's.  These addresses exist only inside the namespaces the
test made, and every name carries a tag of the test's own, so runs at once
do not meet.  `link(N, up)` is a cable pulled or put back: packets are
dropped, no reset is sent.  Root only (`ip netns`); `unavailable()` says
why not here.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import subprocess
import threading

import trio

CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"llamafs-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def ip(*args: str, namespace: str | None = None) -> None:
    cmd = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Network:
    def __init__(self):
        self.tag = "lf" + secrets.token_hex(3)  # interface names: at most 15 characters
        self.hub = f"llamafs-{self.tag}-hub"
        self.machines: list[str] = []
        self.home: int | None = None  # our own namespace, while the main thread is in the hub's
        ip("netns", "add", self.hub)
        ip("link", "set", "lo", "up", namespace=self.hub)

    def add_machine(self) -> str:
        """A new machine; its address (as the hub sees it)."""
        n = len(self.machines)
        name = f"llamafs-{self.tag}-m{n}"
        ip("netns", "add", name)
        self.machines.append(name)
        hub_end, machine_end = f"{self.tag}h{n}", f"{self.tag}m{n}"
        ip("link", "add", hub_end, "netns", self.hub, "type", "veth", "peer", "name", machine_end, "netns", name)
        ip("addr", "add", f"10.213.{n}.1/24", "dev", hub_end, namespace=self.hub)
        ip("addr", "add", f"10.213.{n}.2/24", "dev", machine_end, namespace=name)
        for namespace, end in ((self.hub, hub_end), (name, machine_end), (name, "lo")):
            ip("link", "set", end, "up", namespace=namespace)
        return f"10.213.{n}.2"

    def link(self, n: int, up: bool) -> None:
        """Machine n's cable: its end of the link down (packets dropped) or up."""
        ip("link", "set", f"{self.tag}m{n}", "up" if up else "down", namespace=self.machines[n])

    def on(self, n: int, command: list[str]) -> list[str]:
        """command, to run on machine n."""
        return ["ip", "netns", "exec", self.machines[n], *command]

    def enter_hub(self) -> None:
        """This thread (trio's: the test's) into the hub: its sockets are the hub's."""
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.hub}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.home is not None:
            _setns(self.home)
            _bring_workers_home(self.home)
            os.close(self.home)
            self.home = None
        for name in [*self.machines, self.hub]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _bring_workers_home(home: int) -> None:
    """Trio's cached worker threads made while the main thread was in the hub
    are in the hub's namespace too, and later tests would meet it (a process
    started from one, a connection made in one: refused).  Give every cached
    thread a job at once (a barrier holds them all) that puts it back home."""
    count = threading.active_count() + 1  # more jobs than idle threads: each of them gets one
    barrier = threading.Barrier(count + 1)
    failed: list[OSError] = []

    def job():
        try:
            _setns(home)
        except OSError as e:
            failed.append(e)
        barrier.wait(timeout=10)

    for _ in range(count):
        trio.lowlevel.start_thread_soon(job, lambda outcome: None)  # outcome: the barrier's, nothing to do
    barrier.wait(timeout=10)
    if failed:
        raise failed[0]
