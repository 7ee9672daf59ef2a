"""What the benchmarks share: node processes, free ports, the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from styxfs import client, wire
from styxfs.dial import free_port, port_open  # noqa: F401 (for the benchmarks)

# Node processes are started as the tests start them (one definition, in tests/support.py).
from tests.support import LLAMAFS, NODE, ROOT, start_node_process, stop_process, wait_for_port  # noqa: E402,F401


def greedy(tokens: int, *more: str) -> str:
    """ctl settings for a greedy, penalty-free reply of at most tokens, and more lines."""
    return "\n".join(["temperature 0", "repeatpenalty 1", f"maxtokens {tokens}", *more])


@asynccontextmanager
async def new_session(c: client.Client, settings: str) -> AsyncIterator[tuple[client.File, str]]:
    """A session made through clone, its ctl written these settings:
    (its ctl, open while the block runs, and N)."""
    async with await c.open("clone", wire.ORDWR) as ctl:
        n = (await ctl.read()).decode().strip()
        await ctl.fid.write(settings.encode(), 0)
        yield ctl, n


def turned(items: list | tuple, by: int) -> list:
    """items in the order that starts `by` places on (wrapping round): who
    goes first turns from one request or round to the next."""
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def at_once(calls: list[Callable[[], None]]) -> float:
    """Run the calls in threads of their own, all at once; the seconds until the last ends."""
    threads = [threading.Thread(target=call) for call in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def start_coordinator_process(node_addresses: list[str], **network) -> tuple[subprocess.Popen, str]:
    """`llamafs deploy start` over running nodes (node-0, node-1, ...), in a
    process of its own as deployed, listening; (process, dial string).
    `network` adds to the config's network section."""
    port = free_port()
    config = {"name": "bench",
              "network": {"listen": f"tcp!127.0.0.1!{port}", "healthCheckInterval": 5000, **network},
              "nodes": [{"id": f"node-{i}", "address": "127.0.0.1", "port": int(address.rsplit("!", 1)[1])}
                        for i, address in enumerate(node_addresses)]}
    path = os.path.join(tempfile.mkdtemp(prefix="llamafs-bench-"), "deployment.json")
    with open(path, "w") as f:
        json.dump(config, f)
    process = subprocess.Popen(LLAMAFS + ["deploy", "start", "--config", path], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60, process=process)
    except BaseException:
        stop_process(process)
        raise
    return process, f"tcp!127.0.0.1!{port}"


def machine_line() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "amx_tile")
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(w for w in wanted if w in have)
                    break
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    return f"machine: {os.cpu_count()} cores, {cpu}, flags: {flags}, Python {platform.python_version()}"
